"""`beit-deploy batch` measured: the local engine and Ray Data with 1 and 2 workers, on the same photos, in one run.

    python samples/batch_bench.py [EXPORT_FOLDER] [--photos 200] [--batch-size 8] [--rounds 1] [--markdown FILE]

Jobs: local (ONNX Runtime's default threads), local with one thread, Ray with 1 and 2 workers (one thread each).
Photos: the sample photos cut into N different JPEGs of phone-ish sizes (640x480 to 1280x960, crops, flips),
made once in a temporary folder. Each job runs in a fresh Python process (`run_batch`, as the command does; Ray
starts a local cluster inside it), while this process samples the memory of that process and every process it
starts (Ray's raylet, object store, workers): the sum of their PSS (shared pages counted once), every 0.2 s.
Columns: images/s over the whole job; steady images/s after the first rows; the fixed start cost (job time minus
N / steady rate: opening the model, and for Ray its cluster and actors); peak memory. Default export:
export/beit-base-patch16-224/224x224 (`make demo`).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (480, 640), (768, 1024)]
JOB = """
import json, sys, time
from beit_deploy.batch import BatchOptions, run_batch
o = json.loads(sys.argv[1])
marks = []
s = run_batch(BatchOptions(o["export"], (o["photos"],), o["out"], engine=o["engine"], workers=o["workers"],
                           batch_size=o["batch_size"], threads=o["threads"], quiet=True),
              lambda done, total: marks.append((done, time.perf_counter())))
print(json.dumps({"summary": s.to_dict(), "marks": marks, "clock": time.perf_counter()}))
"""
# (engine, workers, ONNX Runtime threads per model: None is the engine's default, ONNX Runtime's own one per core
# for local, one per actor on Ray here)
CONFIGS = [("local", 1, None), ("local", 1, 1), ("ray", 1, None), ("ray", 2, None)]


def make_photos(folder: Path, n: int) -> None:
    """n distinct JPEGs from the sample photos: a random crop, maybe a flip, resized to one of SIZES."""
    rng = np.random.default_rng(0)
    samples = [Image.open(p).convert("RGB") for p in sorted((ROOT / "samples" / "images").iterdir())
               if p.suffix in (".png", ".jpg")]
    for k in range(n):
        photo = samples[k % len(samples)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch))
        crop = ImageOps.mirror(crop) if k % 2 else crop
        crop.resize(SIZES[k % len(SIZES)], Image.BICUBIC).save(folder / f"photo-{k:04d}.jpg", quality=90)


def tree_pss_gib(root: int) -> float:
    """PSS of a process and all its descendants, in GiB (0 for processes gone meanwhile)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 2**20


def run_job(options: dict) -> dict:
    """One job in a fresh process, with its peak memory (process tree PSS) sampled meanwhile."""
    proc = subprocess.Popen([sys.executable, "-c", JOB, json.dumps(options)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_pss_gib(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"job failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_gib": peak[0], "process_s": wall}


def figures(result: dict, batch_size: int) -> dict:
    s, marks = result["summary"], result["marks"]
    first_done, first_t = marks[0]
    last_done, last_t = marks[-1]
    steady = (last_done - first_done) / (last_t - first_t) if last_t > first_t else float("nan")
    return {"images_per_s": s["images_per_s"], "steady": steady, "start": s["seconds"] - s["rows"] / steady,
            "first_row": s["start_seconds"], "seconds": s["seconds"], "peak_gib": result["peak_gib"],
            "process_s": result["process_s"], "rows": s["rows"], "errors": s["errors"]}


def machine(load: float) -> str:
    import onnxruntime
    import ray

    from beit_deploy.core.machine import cpu_model

    return (f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, 1-min load average {load:.1f} before the run (the "
            f"machine is shared), Python {platform.python_version()}; onnxruntime {onnxruntime.__version__}, ray "
            f"{ray.__version__}, numpy {np.__version__}")


def table(rows: list[tuple[str, dict]]) -> str:
    base = rows[0][1]["images_per_s"]
    lines = ["| engine | images/s | vs local | steady images/s | fixed start cost s | peak memory GiB | job s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in rows:
        lines.append(f"| {name} | {f['images_per_s']:.2f} | {f['images_per_s'] / base:.2f}x | {f['steady']:.2f} | "
                     f"{f['start']:.1f} | {f['peak_gib']:.2f} | {f['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=ROOT / "export" / "beit-base-patch16-224" / "224x224", type=Path)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the jobs, interleaved")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos, args.photos)
        results: list[tuple[str, dict]] = []
        for r in range(args.rounds):
            for engine, workers, threads in CONFIGS:
                name = "local" if engine == "local" else f"ray, {workers} worker{'s' * (workers > 1)}"
                name += f", {threads} thread" if threads else ""
                options = {"export": str(args.folder.absolute()), "photos": str(photos), "engine": engine,
                           "workers": workers, "batch_size": args.batch_size, "threads": threads,
                           "out": f"{tmp}/out-{r}-{engine}-{workers}-{threads}"}
                f = figures(run_job(options), args.batch_size)
                print(f"{name}: {json.dumps({k: round(v, 3) for k, v in f.items()})}", file=sys.stderr, flush=True)
                results.append((name + (f" (round {r + 1})" if args.rounds > 1 else ""), f))
    text = f"{machine(load)}\n\n{table(results)}\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()

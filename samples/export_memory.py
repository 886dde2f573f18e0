"""Peak memory of exporting models, ours and Optimum's, and of an ONNX Runtime session of each graph, in one run.

    python samples/export_memory.py [--model beit-base-patch16-384 --model beit-large-patch16-512 ...]
                                    [--optimum-cli /path/to/venv/bin/optimum-cli] [--work DIR] [--markdown FILE]

For each model: its registered architecture with seeded random weights (non-zero bias tables and layer scales) is
saved once with `save_pretrained`, and both exporters read that same folder:
- `beit-deploy export --model FOLDER --fp16` (its fp32 and fp16 graphs, each validated against eager);
- `optimum-cli export onnx --model FOLDER --task image-classification` (with its default validation), where
  --optimum-cli names one (Optimum lives in its own virtualenv: it pins an older transformers);
- `samples/session_memory.py` on each fp32 graph (and on our fp16 graph): a fresh process, default session options,
  one batch-1 inference; the session is counted after malloc_trim (see that script: without it, what glibc keeps
  of ONNX Runtime's loading garbage varies by up to 0.7 GiB from run to run).
Every figure is the peak resident set of that command's process (the kernel's maximum RSS from wait4, what
`/usr/bin/time -v` prints), in GiB (2^30 bytes), with the machine, its load and the versions beside the table.
Commands run one after another; memory does not depend on the load, but the run takes minutes (large@512: ~10).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from beit_deploy.core.machine import cpu_model, versions

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30

CHECKPOINT = """
import sys
from pathlib import Path
from transformers import BeitImageProcessor
from beit_deploy.exporter.loading import ModelSpec, load_model
loaded = load_model(ModelSpec(sys.argv[1], random_weights=True))
loaded.model.save_pretrained(sys.argv[2])
h, w = loaded.preprocessing.size
BeitImageProcessor(size={"height": h, "width": w}, do_center_crop=False).save_pretrained(sys.argv[2])
print(h, w)
"""


def peak_gib(command: list[str], log: Path) -> float:
    """Run `command` (output to `log`), fail loudly on a non-zero exit, return its peak RSS in GiB."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed (exit {process.returncode}); its output: {log}")
    return usage.ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


def session(graph: Path, log: Path, *extra: str) -> dict:
    """session_memory.py's figures for `graph` (its JSON line)."""
    peak_gib([sys.executable, str(ROOT / "samples" / "session_memory.py"), str(graph), *extra], log)
    return json.loads(log.read_text().strip().splitlines()[-1])


def measure(model: str, work: Path, optimum_cli: str | None) -> dict:
    """One table row: the checkpoint of `model` (a registered name, or a save_pretrained folder whose architecture
    is used), both exports of it and a session of each graph."""
    name = Path(model).name
    say(f"{name}: saving a random-weight checkpoint")
    checkpoint = work / name
    peak_gib([sys.executable, "-c", CHECKPOINT, model, str(checkpoint)], work / f"{name}.checkpoint.log")
    height, width = (int(x) for x in (work / f"{name}.checkpoint.log").read_text().split()[-2:])
    row = {"model": name, "resolution": [height, width]}
    say(f"{name}: beit-deploy export --fp16")
    ours = work / f"{name}.ours"
    row["ours_export"] = peak_gib([sys.executable, "-m", "beit_deploy", "export", "--model", str(checkpoint),
                                   "--fp16", "--out", str(ours), "--replace"], work / f"{name}.ours.log")
    folder = ours / name / f"{height}x{width}"
    say(f"{name}: sessions of our graphs")
    row["ours_session"] = session(folder, work / f"{name}.ours-session.log")
    row["ours_fp16_session"] = session(folder, work / f"{name}.ours-fp16-session.log", "--precision", "fp16")
    if optimum_cli:
        say(f"{name}: optimum-cli export onnx")
        theirs = work / f"{name}.optimum"
        row["optimum_export"] = peak_gib([optimum_cli, "export", "onnx", "--model", str(checkpoint), "--task",
                                          "image-classification", str(theirs)], work / f"{name}.optimum.log")
        row["optimum_session"] = session(theirs / "model.onnx", work / f"{name}.optimum-session.log",
                                         "--shape", f"1,3,{height},{width}")
    return row


def optimum_versions(optimum_cli: str) -> str:
    python = Path(optimum_cli).parent / "python"
    code = ("from importlib.metadata import version as v, PackageNotFoundError as E\n"
            "def f(p):\n try: return p + ' ' + v(p)\n except E: return p + ' not installed'\n"
            "print(', '.join(map(f, ('optimum', 'optimum-onnx', 'transformers', 'torch'))))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or f"versions unknown ({python} did not say)"


def to_markdown(rows: list[dict], info: dict) -> str:
    def s(figures: dict | None) -> str:
        return "-" if not figures else f"{figures['held_gib']:.2f} / {figures['run_peak_gib']:.2f}"

    lines = [f"Machine: {info['cpu']}, {info['cpus']} CPUs, 1-min load average {info['load_before']:.1f} before the "
             f"run, {info['load_after']:.1f} after; beit-deploy with {info['versions']}; Optimum: {info['optimum']}",
             "",
             "Peak resident memory in GiB. Sessions: held once created (after malloc_trim, as beit-deploy's backend "
             "holds it) / peak over one batch-1 inference; raw figures in export_memory.json.",
             "",
             "| model | beit-deploy export `--fp16` | Optimum's export | session, our fp32 graph | session, Optimum's "
             "graph | session, our fp16 graph |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        theirs = f"{r['optimum_export']:.2f}" if "optimum_export" in r else "-"
        lines.append(f"| {r['model']} | {r['ours_export']:.2f} | {theirs} | {s(r['ours_session'])} | "
                     f"{s(r.get('optimum_session'))} | {s(r['ours_fp16_session'])} |")
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append",
                        help="registered short name or save_pretrained folder (repeat); default base@384, large@512")
    parser.add_argument("--optimum-cli", help="an optimum-cli executable (its own virtualenv); without: ours only")
    parser.add_argument("--work", type=Path, help="where checkpoints, graphs and logs go (default: a temp folder)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="export-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = [measure(m, work, args.optimum_cli)
            for m in args.model or ["beit-base-patch16-384", "beit-large-patch16-512"]]
    v = versions(("torch", "transformers", "onnx", "onnxruntime"))
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0],
            "versions": ", ".join(f"{k} {x}" for k, x in v.items()),
            "optimum": optimum_versions(args.optimum_cli) if args.optimum_cli else "not measured"}
    table = to_markdown(rows, info)
    print(table)
    (work / "export_memory.json").write_text(json.dumps({"rows": rows, "machine": info}, indent=1))
    if args.markdown:
        args.markdown.write_text(table)
    say(f"logs, graphs and export_memory.json in {work}")


if __name__ == "__main__":
    main()

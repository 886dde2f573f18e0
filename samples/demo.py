"""`make demo`: export beit-base-patch16-224 (fp32 + fp16) and show what it does on the sample photos.

The Hugging Face Hub is out of reach on our build machines, so the demo uses seeded random weights
(`--random-weights`); with network access, drop that flag to export the real checkpoint.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "beit-base-patch16-224"


def beit_deploy(*args: str) -> None:
    print(f"\n$ beit-deploy {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "beit_deploy", *args], check=True, cwd=ROOT)


METRICS = {"rel": ("max rel err", "<=", "{:.0e}", "{:.1e}"), "cosine": ("min cosine", ">=", "{}", "{:.6f}"),
           "top1": ("top-1 agreement", ">=", "{:.0%}", "{:.0%}")}


def what_was_written(folder: Path) -> None:
    """Each file of the export with its size, and for each graph the thresholds its parity line passed."""
    manifest = json.loads((folder / "manifest.json").read_text())
    graphs = {file: precision for precision, file in manifest["artifacts"].items()}
    print(f"\nwritten to {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}/:")
    for path in sorted(folder.iterdir()):
        line = f"  {path.name:18} {path.stat().st_size / 2**20:8.1f} MB"
        if path.name in graphs:
            line += f"  {graphs[path.name]} graph, passed: " + _thresholds(manifest["parity"][graphs[path.name]])
        print(line)


def _thresholds(parity: dict) -> str:
    """'max rel err 4.7e-07 <= 1e-04' for every threshold of the graph's precision, on its worst output."""
    parts = []
    for metric, limit in parity["thresholds"].items():
        label, sign, limit_format, value_format = METRICS[metric]
        values = [o[metric] for o in parity["outputs"] if o.get(metric) is not None]
        if not values:
            continue
        worst = max(values) if sign == "<=" else min(values)
        parts.append(f"{label} {value_format.format(worst)} {sign} {limit_format.format(limit)}")
    return ", ".join(parts) + f" on {parity['samples']} samples"


if __name__ == "__main__":
    beit_deploy("export", "--model", MODEL, "--random-weights", "--fp16")
    what_was_written(ROOT / "export" / MODEL / "224x224")
    # Predict the sample photos with the fp32 graph just exported (fp16 is picked by default on a GPU).
    print("\n(random weights: the class names below are ImageNet's, known offline, but the scores mean nothing; the "
          "point is that the exported graph answers like the eager model, as the parity figures above show)")
    beit_deploy("predict", f"export/{MODEL}/224x224", "samples/images", "--top-k", "3")

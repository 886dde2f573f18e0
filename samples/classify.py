"""Classify the sample photos with an exported BEiT, through the library API.

    python samples/classify.py [EXPORT_FOLDER]

Default folder: export/beit-base-patch16-224/224x224. If it is missing it is exported first with seeded random
weights (the Hugging Face Hub is out of reach on our build machines), so the labels and scores mean nothing
until you export the real checkpoint: `beit-deploy export --model beit-base-patch16-224`.
"""

import subprocess
import sys
from pathlib import Path

from beit_deploy import BeitRunner

ROOT = Path(__file__).resolve().parent.parent
MODEL = "beit-base-patch16-224"


def ensure_export(folder: Path) -> Path:
    if not (folder / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "beit_deploy", "export", "--model", MODEL, "--random-weights",
                        "--out", str(ROOT / "export")], check=True)
    return folder


def main(folder: Path) -> None:
    photos = sorted(p for p in (ROOT / "samples" / "images").iterdir() if p.suffix in (".png", ".jpg"))
    with BeitRunner(ensure_export(folder)) as runner:
        print(f"{runner!r}")
        for photo, result in zip(photos, runner.predict(photos, top_k=3)):
            best = result.top_k[0]
            print(f"{photo.name:14} {best.label:30} {best.score:6.2%}  (then: "
                  f"{', '.join(c.label for c in result.top_k[1:])})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "export" / MODEL / "224x224")

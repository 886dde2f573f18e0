"""Segment the sample photos with an exported BEiT (ADE20K), write label maps and overlays, via the library API.

    python samples/segment.py [EXPORT_FOLDER]

Default folder: export/beit-base-finetuned-ade-640-640/256x256. If it is missing it is exported first at 256x256
with seeded random weights (the Hugging Face Hub is out of reach on our build machines, and 256 keeps the export
quick on a laptop), so the classes mean nothing until you export the real checkpoint. Pictures go to
out/segment/{masks,overlays}/ (git-ignored), never into export/, where a folder would look like a model.
"""

import subprocess
import sys
from pathlib import Path

from beit_deploy import BeitRunner
from beit_deploy.runtime.palette import save_mask, save_overlay
from beit_deploy.runtime.preprocess import load_image

ROOT = Path(__file__).resolve().parent.parent
MODEL = "beit-base-finetuned-ade-640-640"
OUT = ROOT / "out" / "segment"


def ensure_export(folder: Path) -> Path:
    if not (folder / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "beit_deploy", "export", "--model", MODEL, "--random-weights",
                        "--resolution", folder.name, "--out", str(ROOT / "export")], check=True)
    return folder


def main(folder: Path) -> None:
    photos = sorted(p for p in (ROOT / "samples" / "images").iterdir() if p.suffix in (".png", ".jpg"))
    with BeitRunner(ensure_export(folder), batch_size=2) as runner:
        print(f"{runner!r}")
        for photo, result in zip(photos, runner.predict(photos)):
            top = ", ".join(f"{c.label} {c.fraction:.0%}" for c in result.classes[:3])
            print(f"{photo.name:14} {result.label_map.shape[1]}x{result.label_map.shape[0]}: {top}")
            save_mask(result.label_map, OUT / "masks" / f"{photo.stem}.png")
            save_overlay(load_image(photo).rgb, result.label_map, runner.labels, OUT / "overlays" / f"{photo.stem}.png")
    print(f"label maps and overlays: {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "export" / MODEL / "256x256")

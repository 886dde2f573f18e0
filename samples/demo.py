"""`make demo`: export beit-base-patch16-224 (fp32 + fp16) and show what it does on the sample photos.

The Hugging Face Hub is out of reach on our build machines, so the demo uses seeded random weights
(`--random-weights`); with network access, drop that flag to export the real checkpoint.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "beit-base-patch16-224"


def beit_deploy(*args: str) -> None:
    print(f"\n$ beit-deploy {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "beit_deploy", *args], check=True, cwd=ROOT)


if __name__ == "__main__":
    beit_deploy("export", "--model", MODEL, "--random-weights", "--fp16")
    # Predict the sample photos with the fp32 graph just exported (fp16 is picked by default on a GPU).
    print("\n(random weights: the labels and scores below are placeholders; the point is that the exported graph "
          "answers like the eager model, as the parity figures above show)")
    beit_deploy("predict", f"export/{MODEL}/224x224", "samples/images", "--top-k", "3")

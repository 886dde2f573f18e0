"""Compare a plain `torch.onnx.export` of a BEiT with beit-deploy's baked export: nodes, parity, export time.

    python samples/plain_vs_baked.py [--model beit-base-patch16-224] [--resolution 224]

Prints a markdown table (the one in docs/export.md). Both graphs are checked against the eager model on the same
random batch, at the export resolution and, for the plain graph, at a second resolution, where it silently
answers with the bias of the traced size.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from beit_deploy.exporter import bake, onnx_graph
from beit_deploy.exporter.loading import ModelSpec, load_model


def plain_export(model, resolution, path: Path) -> None:
    """The generic route: trace the unmodified transformers model, dynamic batch, height and width."""
    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values).logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model), (torch.randn(2, 3, *resolution),), str(path), dynamo=False,
                          input_names=["pixel_values"], output_names=["logits"], opset_version=onnx_graph.OPSET,
                          dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})


def rel_error(model, path: Path, resolution) -> float:
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, *resolution)).astype(np.float32)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).logits.numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="beit-base-patch16-224")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    loaded = load_model(ModelSpec(args.model, random_weights=True))
    res, other = (args.resolution,) * 2, (args.resolution + 32,) * 2
    with tempfile.TemporaryDirectory() as tmp:
        plain, baked = Path(tmp) / "plain.onnx", Path(tmp) / "baked.onnx"
        start = time.perf_counter()
        plain_export(loaded.model, res, plain)
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        onnx_graph.onnx_from_model(bake.bake(loaded.model, res), loaded.task, res, baked)
        baked_s = time.perf_counter() - start
        rows = [("plain torch.onnx.export (TorchScript, opset 17)", plain, plain_s),
                ("beit-deploy export (baked bias)", baked, baked_s)]
        print(f"\n{args.model} at {res[0]}x{res[1]}, random weights, torch {torch.__version__}\n")
        print(f"| graph | nodes | runtime bias/shape ops | max rel err @{res[0]} | @{other[0]} | export time |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, path, seconds in rows:
            graph = onnx.load(str(path), load_external_data=False)
            at_other = f"{rel_error(loaded.model, path, other):.1e}" if path == plain else "fixed size"
            print(f"| {name} | {len(graph.graph.node)} | {len(onnx_graph.forbidden_nodes(graph))} | "
                  f"{rel_error(loaded.model, path, res):.1e} | {at_other} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()

"""Resident memory of an ONNX Runtime session of a graph: after creating it, and its peak over one inference.

    python samples/session_memory.py GRAPH_OR_EXPORT_FOLDER [--precision fp32] [--batch 1] [--no-arena]
                                     [--shape 1,3,512,512]

A fresh process per graph (this one), ONNX Runtime's CPU provider with its default session options (what a user,
Triton's onnxruntime backend or the runner gets; --no-arena: without the CPU memory arena, as export validation
runs), zeros of the graph's own input shapes at the given batch (--shape: the first input's whole shape, for
graphs whose height and width are symbolic too, such as Optimum's). Figures are the kernel's (VmRSS, VmHWM), in GiB,
beside the process's memory before ONNX Runtime was imported. Any ONNX graph works, not only beit-deploy's, so
other exporters' graphs are measured the same way.

session_gib is what the process holds right after ONNX Runtime created the session: the session plus whatever
freed loading memory glibc kept, which varies from run to run (beit-large@512: 1.27 or 1.99 GiB for the same
graph). held_gib is after glibc's malloc_trim, as beit-deploy's own backend does once a session is created: what
the session itself needs, the same every run. run_peak_gib and after_run_gib follow from there.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from beit_deploy.core.heap import trim_heap
from beit_deploy.core.machine import cpu_model
from beit_deploy.core.progress import reset_peak, status_gib

DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bool)": "bool", "tensor(int64)": "int64"}


def graph_of(path: Path, precision: str) -> Path:
    """The graph itself, or the `precision` artifact of an export folder (through its manifest)."""
    if path.is_dir():
        from beit_deploy.core.manifest import check_artifact, read_manifest

        return check_artifact(path, read_manifest(path), precision)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--precision", default="fp32", help="for an export folder: which graph")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-arena", action="store_true")
    parser.add_argument("--shape", help="the first input's shape, e.g. 1,3,512,512 (default: the graph's, with batch)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    path = graph_of(args.graph, args.precision)
    import numpy as np
    import onnxruntime as ort

    start = status_gib("VmRSS")
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = not args.no_arena
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    created, creation_peak = status_gib("VmRSS"), status_gib("VmHWM")
    trim_heap()
    held = status_gib("VmRSS")
    reset_peak()  # the run's own peak from here
    shapes = [[args.batch if not isinstance(d, int) else d for d in i.shape] for i in session.get_inputs()]
    if args.shape:
        shapes[0] = [int(d) for d in args.shape.split(",")]
    feeds = {i.name: np.zeros(shape, DTYPES[i.type]) for i, shape in zip(session.get_inputs(), shapes)}
    session.run(None, feeds)
    figures = {"graph": str(path), "batch": shapes[0][0], "arena": not args.no_arena,
               "rss_before_gib": round(start, 2), "session_gib": round(created, 2),
               "creation_peak_gib": round(creation_peak, 2), "held_gib": round(held, 2),
               "after_run_gib": round(status_gib("VmRSS"), 2), "run_peak_gib": round(status_gib("VmHWM"), 2),
               "peak_gib": round(max(creation_peak, status_gib("VmHWM")), 2), "cpu": cpu_model(),
               "cpus": os.cpu_count(), "load_1min_before": round(load, 1), "onnxruntime": ort.__version__}
    json.dump(figures, sys.stdout)
    print()


if __name__ == "__main__":
    main()

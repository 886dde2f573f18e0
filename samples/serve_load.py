"""Load a served export with N concurrent clients x M requests, beside in-process predict, in one run.

    python samples/serve_load.py [EXPORT_FOLDER] [--clients 8] [--requests 8] [--protocol http|grpc]
                                 [--precision fp32 [--precision int8cpu ...]]
                                 [--server HOST:PORT --model NAME] [--markdown FILE]

Without --server it writes a model repository for EXPORT_FOLDER (python model stage) into a temporary folder,
starts Triton on free local ports, runs the load, and stops it. Then it measures `BeitRunner.predict` on the
same number of images in this process (while no server runs). Images: the sample photos, one per request.
Each --precision (a graph the export has; default fp32) gets its own repository, server and in-process run, one
after another in this one run, as rows of one table.
Default folder: export/beit-base-patch16-224/224x224 (`make serve` or `beit-deploy export` makes it).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from beit_deploy.runtime.preprocess import IMAGE_SUFFIXES
from beit_deploy.serve.load import in_process, run_load, to_markdown
from beit_deploy.serve.repository import TritonOptions, write_repository
from beit_deploy.serve.server import ServerOptions, TritonServer

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=ROOT / "export" / "beit-base-patch16-224" / "224x224", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=8, help="per client")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--server", help="an already running server (HOST:PORT); default: start one")
    parser.add_argument("--model", help="with --server: the ensemble's name")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--precision", action="append", help="the model stage's graph (repeat); default fp32")
    args = parser.parse_args()
    args.precision = args.precision or ["fp32"]
    load = os.getloadavg()[0]  # other work on the machine shows in every number: say how busy it was
    photos = [p.read_bytes() for p in sorted((ROOT / "samples" / "images").iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES]
    if args.server:
        report = run_load(args.server, args.model, photos, args.clients, args.requests, args.protocol)
        count = report.answered or args.clients * args.requests
        runs = [(args.precision[0], report, in_process(args.folder, photos, count, precision=args.precision[0]))]
    else:
        runs = [served_run(args, photos, precision) for precision in args.precision]
    (precision, report, images_per_second), *more = runs
    table = to_markdown(report, images_per_second, f"{args.folder} served by Triton (python model stage, "
                                                   f"{args.protocol}) and in process", load, precision, tuple(more))
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


def served_run(args, photos: list[bytes], precision: str) -> tuple:
    """(precision, LoadReport, in-process images/s) for the export served with its `precision` graph."""
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        repo = Path(tmp) / "model_repository"
        model = write_repository([args.folder], TritonOptions(out=repo, name="beit", precision=precision,
                                                              max_queue_delay_us=args.max_queue_delay_us))[0]
        print(f"starting Triton on {repo} ({precision} graph) ...", file=sys.stderr)
        with TritonServer(repo, ServerOptions(0, 0, 0)) as server:
            url = server.http_url if args.protocol == "http" else server.grpc_url
            report = run_load(url, model.name, photos, args.clients, args.requests, args.protocol)
    count = report.answered or args.clients * args.requests
    return precision, report, in_process(args.folder, photos, count, precision=precision)


if __name__ == "__main__":
    main()

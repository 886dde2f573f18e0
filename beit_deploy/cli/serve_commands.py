"""`triton` and `serve`: a Triton model repository for exports or engines, and its server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..core import precisions
from ..core.jsontext import dumps as _json
from .common import backend_choice, friendly, json_option, library_choice, option, precision_choice


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default="model_repository", show_default=True, type=click.Path(file_okay=False),
              help="The model repository to add to (created if needed; its other models and files are kept).")
@option("--served-model", "name", aliases=("--name",), default=None,
        help="Name of the served ensemble. Default: the export's model name.")
@click.option("--backend", type=backend_choice(served=True), default=None,
              help="Model stage. Default: tensorrt for an engine folder, python (ONNX Runtime in beit-deploy) for "
                   "an export.")
@click.option("--precision", type=precision_choice(), default=precisions.REFERENCE, show_default=True,
              help="The ONNX graph of a python or onnxruntime stage, one the export has: int8cpu is ONNX Runtime's "
                   "dynamic int8 (the fastest CPU form), int8 and fp8 the Q/DQ graphs for TensorRT.")
@option("--max-batch-size", "max_batch", aliases=("--max-batch",), type=click.IntRange(min=1), default=None,
        help="Largest batch. Default: 8, or the engine profile's MAX.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per stage.")
@click.option("--instance-kind", type=library_choice("serve.repository", "INSTANCE_KINDS"), default=None,
              help="Model stage instances. Default: gpu for tensorrt and onnxruntime, cpu for python.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the dynamic batcher waits to fill a batch.")
@option("--preferred-batch-size", "preferred_batch", aliases=("--preferred-batch",), type=click.IntRange(min=1),
        multiple=True, help="Preferred batch size (repeat). Default: the engine profile's OPT and MAX.")
@click.option("--ort-tensorrt", is_flag=True, help="onnxruntime stage: TensorRT execution accelerator on GPUs.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classes per image when a request does not say.")
@json_option("Print what was written as JSON (the repository, each ensemble and its stages) instead of text.")
@friendly
def triton(paths, out_dir, name, backend, precision, max_batch, instances, instance_kind, max_queue_delay_us,
           preferred_batch, ort_tensorrt, top_k, as_json):
    """Write a Triton model repository for exports or engine folders (PATHS): an ensemble of preprocess, model
    and postprocess per resolution."""
    from ..serve.repository import TritonOptions, write_repository

    options = TritonOptions(out=Path(out_dir), name=name, backend=backend, precision=precision,
                            max_batch=max_batch, instances=instances, instance_kind=instance_kind,
                            max_queue_delay_us=max_queue_delay_us, preferred_batch=tuple(preferred_batch),
                            ort_tensorrt=ort_tensorrt, top_k=top_k)
    models = write_repository([Path(p) for p in paths], options)
    if as_json:
        click.echo(_json({"repository": str(out_dir), "models": [dataclasses.asdict(m) for m in models]}, indent=2))
        return
    for model in models:
        click.echo(f"{Path(out_dir) / model.name}: {model.task} ({model.backend} model stage)")
    click.echo(f"serve it: beit-deploy serve {out_dir}")


@click.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False))
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="0: a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--startup-timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the models to load.")
@friendly
def serve(repository, http_port, grpc_port, metrics_port, host, startup_timeout):
    """Start Triton on a model repository (`beit-deploy triton`), until Ctrl-C or SIGTERM."""
    from ..core.progress import say
    from ..serve.server import ServerOptions, TritonServer, ensembles, serve_until_stopped

    server = TritonServer(Path(repository), ServerOptions(http_port, grpc_port, metrics_port, host, startup_timeout))
    say(f"starting {server.installation.binary} on {repository} (takes a while to load the models)...")

    def ready(s):
        say(f"server log: {s.log_path}")
        click.echo(f"Triton is serving {', '.join(ensembles(s.repository))}: HTTP {s.http_url}, gRPC {s.grpc_url}, "
                   f"metrics http://{s.http_url.rsplit(':', 1)[0]}:{s.metrics_port}/metrics")
        for model in ensembles(s.repository):
            click.echo(f"  try: beit-deploy predict --server {s.http_url} --served-model {model} samples/images")
        click.echo("Ctrl-C stops it.")

    serve_until_stopped(server, ready)
    say("server stopped")

"""`beit-deploy`: a thin click layer over the library. Errors become one line on stderr and a non-zero exit
(cli.common.friendly for the commands' own, cli.common.Group for click's usage errors); each command module maps
its options to one library call.
"""

from __future__ import annotations

import functools

import click

from .batch_commands import batch
from .common import Group, verbosity_options
from .export_commands import bench, export, models
from .proof_commands import compare, verify
from .run_commands import predict
from .serve_commands import serve, triton
from .trt_commands import build, inspect


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="beit-deploy")
@functools.partial(verbosity_options, for_group=True)
def main():
    """Export BEiT models to ONNX and TensorRT, run them, and prove they answer like the original."""


for _command in (models, export, bench, build, inspect, predict, batch, verify, compare, triton, serve):
    main.add_command(_command)

"""The README.md written into every generated model repository: what is in it, how to start it, how to call it."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..runtime import wire

TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the server the serve extra ships


def repository_readme(served: list, out: Path) -> str:
    """Markdown for a repository serving `served` (repository.ServedModel); `out` as the user named it."""
    first, mount = served[0].name, out if out.is_absolute() else f"$PWD/{out}"
    rows = "\n".join(f"| `{m.name}` | {m.task} | {m.backend} | " + ", ".join(f"`{s}`" for s in m.stages.values())
                     + " |" for m in served)
    return f"""# Triton model repository (written by beit-deploy {__version__})

| ensemble (call this) | task | model stage | stages |
|---|---|---|---|
{rows}

Each ensemble takes encoded images (`{wire.IMAGE}`, TYPE_STRING, shape [N, 1]: any format Pillow reads) and an
optional `{wire.TOP_K_INPUT}` (TYPE_INT32, [N, 1]); it answers with the task's tensors and `{wire.IMAGE_SIZE}` (each
image's height and width). `*_preprocess` resizes and normalises exactly as the export's manifest says,
`*_model` runs the graph, `*_postprocess` turns its output into answers (top-k ids, scores and labels; a label
map at the image's own size; visual tokens; an embedding). A bad image fails its own request only.

The Python-backend models (`model.py`, the same file everywhere) hold no code of their own: they import
`beit_deploy.serve.stages` from the Python environment the server runs in, and read every setting from the
`manifest.json` beside them. So that environment needs `pip install beit-deploy` (which brings numpy, Pillow and
ONNX Runtime), with numpy < 2 for Triton 2.51's Python backend.

## Start it

On a machine with `pip install 'beit-deploy[serve]'` (the CPU server from nvidia-pytriton, Python backend only,
so `python` model stages only):

    beit-deploy serve {out}

On a GPU box, with the official container (all backends; bring a beit-deploy wheel, `pip wheel --no-deps .`):

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
        -v {mount}:/models -v $PWD/wheels:/wheels {TRITON_CONTAINER} \\
        bash -c "pip install /wheels/beit_deploy-*.whl 'numpy<2' && tritonserver --model-repository=/models"

A `tensorrt_plan` stage loads only with the TensorRT version and on the GPU model its engine was built for.

## Call it

    beit-deploy predict --server localhost:8000 --served-model {first} photo.jpg

```python
from beit_deploy import BeitTritonClient

with BeitTritonClient("localhost:8000", "{first}") as client:   # or protocol="grpc" on port 8001
    print(client.predict("photo.jpg").to_dict())   # the same result types as BeitRunner.predict
```
"""

"""The README.md written into every generated model repository: what is in it, how to start it, how to call it.

Its call examples (curl with JSON and with binary data, stock tritonclient over HTTP and gRPC, perf_analyzer)
use `localhost:8000`/`localhost:8001` and `photo.jpg`; tests/serve runs each against the real server."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..runtime import answers as answer_kinds, wire

TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the server the serve extra ships
README_TITLE = "# Triton model repository (written by beit-deploy"


def repository_readme(served: list, out: Path) -> str:
    """Markdown for a repository serving `served` (repository.ServedModel); `out` as the user named it."""
    mount = out if out.is_absolute() else f"$PWD/{out}"
    example = next((m for m in served if _classifier(m)), served[0] if served else None)
    first = example.name if example else "NAME"
    rows = "\n".join(f"| `{m.name}` | {m.task} | {m.backend} | " + ", ".join(f"`{s}`" for s in m.stages.values())
                     + " |" for m in served)
    return f"""{README_TITLE} {__version__})

| ensemble (call this) | task | model stage | stages |
|---|---|---|---|
{rows}

Each ensemble takes encoded images (`{wire.IMAGE}`, TYPE_STRING, shape [N, 1]: any format Pillow reads; as
base64 text in a JSON request) and, for classifiers, an optional `{wire.TOP_K_INPUT}` (TYPE_INT32, [N, 1]); it answers
with the task's tensors and `{wire.IMAGE_SIZE}` (each image's height and width): classifiers `{wire.CLASS_IDS}`,
`{wire.SCORES}` (FP32), `{wire.LABELS}` and `{wire.PROBABILITIES}` (FP32, every class, with `labels.txt` as its
`label_filename`, so Triton's classification extension answers `score:class_id:label`); segmentation a
`{wire.LABEL_MAP}` at the image's own size in the smallest integer type that holds its classes (UINT8 up to 255
classes), `{wire.CLASS_IDS}`, `{wire.FRACTIONS}` (FP32) and `{wire.LABELS}`. `*_preprocess` resizes and
normalises exactly as the export's manifest says,
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
{_examples(example)}
With beit-deploy's own client (the same result types as in process):

    beit-deploy predict --server localhost:8000 --served-model {first} photo.jpg

```python
from beit_deploy import BeitTritonClient

with BeitTritonClient("localhost:8000", "{first}") as client:   # or protocol="grpc" on port 8001
    print(client.predict("photo.jpg").to_dict())   # the same result types as BeitRunner.predict
```
"""


def _classifier(model) -> bool:
    return answer_kinds.of(model.task).top_k


def _examples(model) -> str:
    """curl, tritonclient and perf_analyzer examples for one ensemble (classification: the classification
    extension on PROBABILITIES; other tasks: every answer tensor)."""
    if model is None:
        return ""
    name, classify = model.name, _classifier(model)
    wanted = f'"outputs":[{{"name":"{wire.PROBABILITIES}","parameters":{{"classification":3}}}}]' if classify else ""
    json_outputs = f",{wanted}" if wanted else ""
    binary_outputs = (f',"outputs":[{{"name":"{wire.PROBABILITIES}","parameters":{{"classification":3,'
                      '"binary_data":false}}]') if classify else ""
    requested = (f'outputs=[tc.InferRequestedOutput("{wire.PROBABILITIES}", class_count=3)]' if classify
                 else "")
    show = f'result.as_numpy("{wire.PROBABILITIES}")' if classify else f'result.as_numpy("{wire.IMAGE_SIZE}")'
    comment = "   # [[b'0.41:281:tabby' ...]]: score, class id, label" if classify else ""
    return f"""
With curl, the image as base64 text in JSON (KServe v2), answers as JSON:

```bash
printf '{{"inputs":[{{"name":"{wire.IMAGE}","shape":[1,1],"datatype":"BYTES","data":["%s"]}}]{json_outputs}}}' \\
    "$(base64 -w0 photo.jpg)" > request.json
curl -s localhost:8000/v2/models/{name}/infer -H 'Content-Type: application/json' -d @request.json
```

With curl, the image as raw bytes (Triton's binary data extension: a JSON header, then each BYTES element as a
4-byte little-endian length and its bytes):

```bash
N=$(stat -c%s photo.jpg)
HEADER='{{"inputs":[{{"name":"{wire.IMAGE}","shape":[1,1],"datatype":"BYTES",'\\
'"parameters":{{"binary_data_size":'$((N + 4))'}}}}]{binary_outputs}}}'
{{ printf %s "$HEADER"; printf "$(printf '\\\\%03o' $((N & 255)) $((N >> 8 & 255)) $((N >> 16 & 255)) $((N >> 24)))"
  cat photo.jpg; }} > request.bin
curl -s localhost:8000/v2/models/{name}/infer -H "Inference-Header-Content-Length: ${{#HEADER}}" \\
    -H 'Content-Type: application/octet-stream' --data-binary @request.bin
```

With Triton's own Python client (`pip install 'tritonclient[http,grpc]'`), over HTTP:

```python
import numpy as np
import tritonclient.http as tc

client = tc.InferenceServerClient("localhost:8000")
image = tc.InferInput("{wire.IMAGE}", [1, 1], "BYTES")
image.set_data_from_numpy(np.array([[open("photo.jpg", "rb").read()]], dtype=object))
result = client.infer("{name}", [image], {requested})
print({show}){comment}
```

and over gRPC, the same with `import tritonclient.grpc as tc` and `tc.InferenceServerClient("localhost:8001")`:

```python
import numpy as np
import tritonclient.grpc as tc

client = tc.InferenceServerClient("localhost:8001")
image = tc.InferInput("{wire.IMAGE}", [1, 1], "BYTES")
image.set_data_from_numpy(np.array([[open("photo.jpg", "rb").read()]], dtype=object))
result = client.infer("{name}", [image], {requested})
print({show})
```

Load with Triton's `perf_analyzer` (in the `tritonserver:24.10-py3-sdk` container), the photo as its input data
(`request.json` above is also a valid request body):

```bash
printf '{{"data":[{{"{wire.IMAGE}":{{"b64":"%s"}}}}]}}' "$(base64 -w0 photo.jpg)" > perf_data.json
perf_analyzer -m {name} -u localhost:8000 --input-data perf_data.json --shape {wire.IMAGE}:1 \\
    --concurrency-range 1:8
```
"""

"""Proof on a real Triton server (CPU, python model stage): served answers are the in-process answers.

Over HTTP and gRPC, for a tiny classification and a tiny (non-square) segmentation export: the same top-k ids
and scores within 1e-5, identical label maps at each photo's own size; a corrupt image fails alone; 32
concurrent requests are all answered and the server's statistics show the dynamic batcher joined them.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from beit_deploy import BeitTritonClient, BeitTRTRunner
from beit_deploy.cli import main
from beit_deploy.core.errors import UsageError
from beit_deploy.runtime import wire
from beit_deploy.runtime.preprocess import ImageError
from beit_deploy.runtime.triton_client import TritonServerError
from beit_deploy.serve.configs import MODEL, stage_names

from serving import PHOTOS, needs_server, served  # noqa: F401 - served: the server fixture

pytestmark = needs_server
PROTOCOLS = ("http", "grpc")


def url(served, protocol: str) -> str:
    return served.server.http_url if protocol == "http" else served.server.grpc_url


def assert_same(task: str, local, remote):
    if task == "classification":
        assert [(c.id, c.label) for c in remote.top_k] == [(c.id, c.label) for c in local.top_k]
        np.testing.assert_allclose([c.score for c in remote.top_k], [c.score for c in local.top_k], atol=1e-5)
    else:
        assert remote.label_map.shape == local.label_map.shape
        np.testing.assert_array_equal(remote.label_map, local.label_map)
        assert [(c.id, c.label) for c in remote.classes] == [(c.id, c.label) for c in local.classes]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_answers_match_the_runner(served, task, protocol):
    images = [*PHOTOS, Image.open(PHOTOS[0]).convert("L")]  # files as they are, a PIL image as PNG
    with BeitTRTRunner(served.folders[task]) as runner:
        local = runner.predict(images, top_k=3)
    with BeitTritonClient(url(served, protocol), served.names[task], protocol=protocol) as client:
        assert client.task == task and client.resolution == runner.resolution
        remote = client.predict(images, top_k=3)
        single = client.predict(PHOTOS[1], top_k=3)
    assert len(remote) == len(images) and type(single) is type(local[1])
    for a, b in zip(local, remote):
        assert type(b) is type(a)
        assert_same(task, a, b)
    assert_same(task, local[1], single)
    if task == "segmentation":
        assert remote[0].label_map.shape == Image.open(PHOTOS[0]).size[::-1]


def test_a_corrupt_image_fails_alone(served, tmp_path):
    corrupt = PHOTOS[-1].read_bytes()[:400]
    (tmp_path / "bad.png").write_bytes(corrupt)
    with BeitTritonClient(served.server.http_url, served.names["classification"], concurrency=8) as client:
        answers = list(client.predict_each([PHOTOS[0], corrupt, PHOTOS[1], tmp_path / "missing.png", PHOTOS[2]]))
        with pytest.raises(ImageError, match="not a readable image"):
            client.predict([PHOTOS[0], corrupt])
    assert [a.error is None for a in answers] == [True, False, True, False, True]
    assert "not a readable image" in str(answers[1].error) and "does not exist" in str(answers[3].error)
    assert isinstance(answers[1].error, ImageError)  # the server refused it (400): the image's fault
    with BeitTritonClient(served.server.grpc_url, served.names["classification"], protocol="grpc") as client:
        assert isinstance(next(client.predict_each([corrupt])).error, ImageError)
    result = CliRunner().invoke(main, ["predict", "--server", served.server.http_url, "--model",
                                       served.names["classification"], str(PHOTOS[0]), str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "error: 1 of 2 images could not be read" in result.stderr
    assert all(a.result.top_k for a in answers if a.error is None)


def test_32_concurrent_requests_are_batched(served):
    name = served.names["classification"]
    with BeitTritonClient(served.server.grpc_url, name, protocol="grpc", concurrency=32) as client:
        before = client.statistics()[stage_names(name)[MODEL]]
        answers = client.predict([PHOTOS[k % len(PHOTOS)] for k in range(32)])
        after = client.statistics()[stage_names(name)[MODEL]]
    assert len(answers) == 32 and all(a.top_k for a in answers)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 32 and executions < 32, (inferences, executions)  # some executions ran batches > 1


def test_one_request_with_several_images(served):
    """A plain tritonclient request with a batch of photos of different sizes: label maps come padded, and each
    image's IMAGE_SIZE crops its own; without TOP_K the ensemble's default top-k (5) answers."""
    import tritonclient.http as httpclient

    photos = PHOTOS[:3]
    blobs = np.array([[p.read_bytes()] for p in photos], dtype=object)
    client = httpclient.InferenceServerClient(served.server.http_url)
    image = httpclient.InferInput(wire.IMAGE, list(blobs.shape), "BYTES")
    image.set_data_from_numpy(blobs)
    seg = client.infer(served.names["segmentation"], [image])
    cls = client.infer(served.names["classification"], [image])
    client.close()
    sizes = seg.as_numpy(wire.IMAGE_SIZE)
    assert seg.as_numpy(wire.LABEL_MAP).shape == (3, sizes[:, 0].max(), sizes[:, 1].max())
    assert seg.as_numpy(wire.LABEL_MAP).dtype == np.uint8 and cls.as_numpy(wire.SCORES).dtype == np.float32
    with BeitTRTRunner(served.folders["segmentation"]) as runner:
        for k, local in enumerate(runner.predict(photos)):
            row = {n: seg.as_numpy(n)[k] for n in (wire.LABEL_MAP, wire.CLASS_IDS, wire.FRACTIONS, wire.LABELS)}
            assert_same("segmentation", local, wire.decode("segmentation", row, tuple(sizes[k])))
    assert cls.as_numpy(wire.CLASS_IDS).shape == (3, 5) and cls.as_numpy(wire.LABELS)[0, 0] in (b"cat", b"dog",
                                                                                               b"rocket", b"coffee",
                                                                                               b"camera")


def test_bad_top_k_and_bad_names(served):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(served.server.http_url)
    inputs = [httpclient.InferInput(wire.IMAGE, [1, 1], "BYTES"), httpclient.InferInput(wire.TOP_K, [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([[PHOTOS[0].read_bytes()]], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[0]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="TOP_K must be at least 1"):
        client.infer(served.names["classification"], inputs)
    client.close()
    with BeitTritonClient(served.server.http_url, served.names["classification"]) as good:
        with pytest.raises(UsageError):
            good.predict(PHOTOS[0], top_k=0)
    with pytest.raises(TritonServerError, match=served.names["classification"]):
        BeitTritonClient(served.server.http_url, "no-such-model")
    with pytest.raises(TritonServerError, match="not an ensemble written by"):
        BeitTritonClient(served.server.http_url, stage_names(served.names["classification"])[MODEL])


def test_predict_cli_with_server(served, tmp_path):
    runner = CliRunner()
    local = runner.invoke(main, ["predict", str(served.folders["classification"]), *map(str, PHOTOS), "--json"])
    remote = runner.invoke(main, ["predict", "--server", served.server.grpc_url, "--protocol", "grpc", "--model",
                                  served.names["classification"], *map(str, PHOTOS), "--json"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.stderr
    for a, b in zip(local.stdout.splitlines(), remote.stdout.splitlines(), strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a["image"] == b["image"] and [c["id"] for c in a["top_k"]] == [c["id"] for c in b["top_k"]]
    masks = runner.invoke(main, ["predict", "--server", served.server.http_url, "--model",
                                 served.names["segmentation"], str(PHOTOS[0]), "--masks", str(tmp_path / "remote"),
                                 "--overlay", str(tmp_path / "overlay")])
    runner.invoke(main, ["predict", str(served.folders["segmentation"]), str(PHOTOS[0]), "--masks",
                         str(tmp_path / "local")])
    assert masks.exit_code == 0, masks.stderr
    (remote_mask,), (local_mask,) = (list((tmp_path / d).iterdir()) for d in ("remote", "local"))
    np.testing.assert_array_equal(np.asarray(Image.open(remote_mask)), np.asarray(Image.open(local_mask)))
    assert len(list((tmp_path / "overlay").iterdir())) == 1
    missing = runner.invoke(main, ["predict", "--server", served.server.http_url, str(PHOTOS[0])])
    assert missing.exit_code == 2 and "--served-model" in missing.stderr


def test_pil_and_array_inputs_travel_as_png(served):
    rgb = np.asarray(Image.open(PHOTOS[2]).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    with BeitTritonClient(served.server.http_url, served.names["classification"]) as client:
        from_array, from_bytes = client.predict([rgb, buffer.getvalue()])
    assert from_array == from_bytes


def test_load_generator(served):
    from beit_deploy.serve.load import in_process, run_load, to_markdown

    photos = [p.read_bytes() for p in PHOTOS]
    report = run_load(served.server.http_url, served.names["classification"], photos, clients=4, requests=3)
    assert (report.answered, report.failed) == (12, 0) and report.p50_ms <= report.p95_ms <= report.p99_ms
    assert report.mean_batch is not None and report.mean_batch >= 1 and report.executions >= 1
    table = to_markdown(report, in_process(served.folders["classification"], photos, 8), "tiny", load=1.0)
    assert "| Triton ensemble | fp32 | 4 x 3 |" in table and "in-process" in table and "load average 1.0" in table


def test_classification_extension_answers_class_ids_and_names(served):
    """Triton's own classification extension (`class_count`, as in its image_client.py) on PROBABILITIES, with
    labels.txt as its label_filename: score, class id and name of the runner's top 3."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    with BeitTRTRunner(served.folders["classification"]) as runner:
        local = runner.predict(PHOTOS[0], top_k=3)
    for module, address in ((httpclient, served.server.http_url), (grpcclient, served.server.grpc_url)):
        client = module.InferenceServerClient(address)
        image = module.InferInput(wire.IMAGE, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[PHOTOS[0].read_bytes()]], dtype=object))
        result = client.infer(served.names["classification"], [image],
                              outputs=[module.InferRequestedOutput(wire.PROBABILITIES, class_count=3)])
        client.close()
        rows = [v.decode().split(":") for v in result.as_numpy(wire.PROBABILITIES).reshape(-1)]
        assert [(int(i), label) for _, i, label in rows] == [(c.id, c.label) for c in local.top_k]
        np.testing.assert_allclose([float(s) for s, _, _ in rows], [c.score for c in local.top_k], atol=1e-5)


def post_json(served, model: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{served.server.http_url}/v2/models/{model}/infer",
                                     json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_json_requests_base64_images_and_400s(served):
    """A plain KServe v2 JSON request: the image as base64 text works (FP32 scores, UINT8 label maps); what
    is not an image gets HTTP 400 with one clear line, no Python repr."""
    import base64

    text = base64.b64encode(PHOTOS[0].read_bytes()).decode()
    image = {"name": wire.IMAGE, "shape": [1, 1], "datatype": "BYTES", "data": [text]}
    status, answer = post_json(served, served.names["classification"], {"inputs": [image]})
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert status == 200 and outputs[wire.SCORES]["datatype"] == "FP32", answer
    with BeitTRTRunner(served.folders["classification"]) as runner:
        assert outputs[wire.CLASS_IDS]["data"] == [c.id for c in runner.predict(PHOTOS[0]).top_k]
    status, answer = post_json(served, served.names["segmentation"], {"inputs": [image]})
    assert status == 200 and {o["name"]: o for o in answer["outputs"]}[wire.LABEL_MAP]["datatype"] == "UINT8"
    for data in ("not an image", base64.b64encode(b"not an image either").decode()):
        status, answer = post_json(served, served.names["classification"], {"inputs": [{**image, "data": [data]}]})
        assert status == 400 and "not a readable image" in answer["error"], answer
        assert "\n" not in answer["error"] and "object at 0x" not in answer["error"]


def test_stages_called_directly_refuse_bad_inputs(served):
    """The postprocess stage is a model of its own: an IMAGE_SIZE of [-1, 5] or [1e6, 1e6] is a 400 for that
    request, and the server answers the next one."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    name = stage_names(served.names["segmentation"])["postprocess"]
    client = httpclient.InferenceServerClient(served.server.http_url)
    for size in ([-1, 5], [1_000_000, 1_000_000]):
        logits = httpclient.InferInput("logits", [1, 5, 16, 24], "FP32")
        logits.set_data_from_numpy(np.zeros((1, 5, 16, 24), np.float32))
        sizes = httpclient.InferInput(wire.IMAGE_SIZE, [1, 2], "INT64")
        sizes.set_data_from_numpy(np.array([size], np.int64))
        with pytest.raises(InferenceServerException, match="IMAGE_SIZE must hold") as refused:
            client.infer(name, [logits, sizes])
        assert refused.value.status() in ("400", 400)
    client.close()
    with BeitTritonClient(served.server.http_url, served.names["segmentation"]) as good:
        assert good.predict(PHOTOS[0]).label_map.shape == Image.open(PHOTOS[0]).size[::-1]


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a README."""
    import re

    return re.findall(r"```(bash|python)\n(.*?)```", text, re.S)


def test_generated_readme_examples_run(served, tmp_path):
    """Every curl, stock-tritonclient and perf_analyzer example of the repository's README, run as written
    (ports and photo swapped for the fixture's) against the real server."""
    import shutil
    import subprocess
    import sys

    readme = (served.server.repository / "README.md").read_text()
    shutil.copyfile(PHOTOS[0], tmp_path / "photo.jpg")
    blocks = readme_blocks(readme.replace("localhost:8000", served.server.http_url).replace(
        "localhost:8001", served.server.grpc_url))
    assert [language for language, _ in blocks] == ["bash", "bash", "python", "python", "bash", "python"]
    with BeitTRTRunner(served.folders["classification"]) as runner:
        top = runner.predict(PHOTOS[0], top_k=3).top_k
    expected = [f":{c.id}:{c.label}" for c in top]
    for language, code in blocks[:4]:
        command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        for label in expected:
            assert label in done.stdout, (code, done.stdout)
    perf = blocks[4][1]
    if shutil.which("perf_analyzer") is None:  # not on PyPI: its input data must still be a request Triton takes
        subprocess.run(["bash", "-c", perf.split("\nperf_analyzer")[0]], cwd=tmp_path, check=True, timeout=30)
        data = json.loads((tmp_path / "perf_data.json").read_text())["data"][0][wire.IMAGE]["b64"]
        image = {"name": wire.IMAGE, "shape": [1, 1], "datatype": "BYTES", "data": [data]}
        assert post_json(served, served.names["classification"], {"inputs": [image]})[0] == 200
    else:
        subprocess.run(["bash", "-c", perf], cwd=tmp_path, check=True, timeout=120)

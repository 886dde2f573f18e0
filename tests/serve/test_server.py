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
    with BeitTritonClient(served.server.http_url, served.names["classification"], concurrency=8) as client:
        answers = list(client.predict_each([PHOTOS[0], corrupt, PHOTOS[1], tmp_path / "missing.png", PHOTOS[2]]))
        with pytest.raises(TritonServerError, match="not a readable image"):
            client.predict([PHOTOS[0], corrupt])
    assert [a.error is None for a in answers] == [True, False, True, False, True]
    assert "not a readable image" in str(answers[1].error) and "does not exist" in str(answers[3].error)
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
    assert "| Triton ensemble | 4 x 3 |" in table and "in-process" in table and "load average 1.0" in table

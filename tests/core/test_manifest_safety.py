"""A manifest is untrusted input: file names stay inside the folder, every artifact file is the one exported
(sha256), and numbers that would poison the output (std 0, an unknown filter) are refused when it is read."""

from __future__ import annotations

import json
import shutil

import pytest

from beit_deploy import BeitTRTRunner
from beit_deploy.core.engine_manifest import EngineManifest, read_engine_manifest
from beit_deploy.core.errors import ArtifactError
from beit_deploy.core.files import file_sha256
from beit_deploy.core.manifest import check_artifact, read_manifest
from beit_deploy.proof.verify import parity_report


@pytest.fixture
def copy(tiny_export, tmp_path):
    """A fresh copy of the tiny classification export (fp32 + fp16) to tamper with."""
    return shutil.copytree(tiny_export("classification", fp16=True), tmp_path / "export" / "64x64")


def edit(folder, change):
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_the_manifest_records_every_file(copy):
    manifest = read_manifest(copy)
    assert set(manifest.sha256) == {"model.onnx", "model.fp16.onnx"}
    assert all(manifest.sha256[f] == file_sha256(copy / f) for f in manifest.sha256)
    assert check_artifact(copy, manifest, "fp32") == copy / "model.onnx"


@pytest.mark.parametrize("name", ["../../outside/other.onnx", "/etc/passwd", "sub/model.onnx", ".."])
def test_artifact_paths_never_leave_the_folder(copy, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(copy / "model.onnx", outside / "other.onnx")  # a real graph: before, it was loaded and PASSED
    edit(copy, lambda d: d["artifacts"].update(fp32=name))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        BeitTRTRunner(copy, precision="fp32")
    with pytest.raises(ArtifactError, match="not a plain file name"):
        parity_report(copy, images=[], random=1)


def test_a_symlink_out_of_the_folder_is_refused(copy, tmp_path):
    shutil.move(copy / "model.onnx", tmp_path / "elsewhere.onnx")
    (copy / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(ArtifactError, match="leads outside its folder"):
        BeitTRTRunner(copy, precision="fp32")
    with pytest.raises(ArtifactError, match="leads outside its folder"):
        parity_report(copy, images=[], random=1)


def test_a_same_size_graph_of_another_export_is_caught(copy, tiny_dir, tmp_path):
    """Same architecture, other weights: same bytes, different answers. Only the hash tells."""
    from conftest import save_tiny

    from beit_deploy.exporter.loading import ModelSpec
    from beit_deploy.exporter.pipeline import ExportOptions, export

    other_model = save_tiny(tmp_path / "other" / "tiny-classification", "classification", seed=1)
    other = export(ModelSpec(str(other_model)), ExportOptions(out_dir=tmp_path / "other-export"))[0].folder
    assert (other / "model.onnx").stat().st_size == (copy / "model.onnx").stat().st_size
    shutil.copy(other / "model.onnx", copy / "model.onnx")
    with pytest.raises(ArtifactError, match=r"model.onnx' is not the file this export wrote.*export the model again"):
        BeitTRTRunner(copy, precision="fp32")
    with pytest.raises(ArtifactError, match="sha256 differs"):
        parity_report(copy, images=[], random=1)  # verify checks always
    BeitTRTRunner(copy, precision="fp32", check_hashes=False).close()  # the opt-out: sizes only


def test_manifest_without_hashes_is_checked_by_size(copy, capsys):
    edit(copy, lambda d: d.pop("sha256"))
    with BeitTRTRunner(copy, precision="fp32") as runner:
        assert runner.manifest.sha256 == {}
    assert "records no sha256" in capsys.readouterr().err
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        BeitTRTRunner(copy, precision="fp32")


def test_stray_files_beside_a_good_export(copy):
    (copy / "model.onnx.bak").write_bytes((copy / "model.onnx").read_bytes())
    (copy / "model.onnx.data").write_bytes(b"stale external data of an earlier export")
    with BeitTRTRunner(copy, precision="fp32") as runner:  # only the files the manifest records count
        assert runner.precision == "fp32"


@pytest.mark.parametrize("change, message", [
    (lambda d: d["preprocessing"].update(image_std=[0.5, 0, 0.5]), "image_std"),
    (lambda d: d["preprocessing"].update(resample=99), "resample 99"),
    (lambda d: d["preprocessing"].update(rescale_factor=float("nan")), "rescale_factor"),
    (lambda d: d["preprocessing"].update(size=[0, 64]), "size"),
    (lambda d: d.update(model="../../elsewhere"), "model name"),
    (lambda d: d.update(resolution=["64", 64]), "resolution"),
    (lambda d: d["sha256"].update({"../x": "0" * 64}), "sha256 entry"),
])
def test_impossible_values_are_refused_on_read(copy, change, message):
    edit(copy, change)
    with pytest.raises(ArtifactError, match=f"not a valid beit-deploy manifest.*{message}.*export the model again"):
        read_manifest(copy)


def test_engine_manifest_names_its_graph_by_file_name(tmp_path):
    info = dict(tensorrt="10.13", gpu={"name": "H100", "compute_capability": "9.0"}, precision="fp16",
                source={"folder": "export/m/64x64", "onnx": "model.fp16.onnx", "sha256": "0" * 64},
                profile={}, build_seconds=1.0, engine_bytes=10, options={}, created="now", format_version=1)
    (tmp_path / "engine.json").write_text(json.dumps(info))
    assert isinstance(read_engine_manifest(tmp_path), EngineManifest)
    info["source"]["onnx"] = "../../etc/passwd"
    (tmp_path / "engine.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match="not a valid engine manifest.*not a plain file name"):
        read_engine_manifest(tmp_path)

"""serve's checks of an untrusted repository (serve/marks.py), without a server: a model that may run Python code
is found however its config spells that, a config Triton would not read is refused, and every file read or
hashed must be a plain file (a FIFO, a folder, a link or a huge file is refused, never waited on or read
through)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
from serving import needs_tritonclient

from beit_deploy.core.errors import ArtifactError, UsageError
from beit_deploy.serve import marks

SERVER = Path("tritonserver")


def finishes(call, fifo: Path, seconds: float = 10.0):
    """The exception call() raises (None if none), run in a thread; the test fails if it is still blocked on
    `fifo` after `seconds` (the FIFO is then opened for writing, which frees the thread)."""
    outcome: list = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return outcome[0]


def foreign_model(repo: Path, config: str, code: str = "model.py") -> Path:
    """Someone else's model folder: `config` as its config.pbtxt and Python code in 1/`code`."""
    folder = repo / "theirs"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    (folder / "1" / code).write_text("import os\nclass TritonPythonModel: pass\n")
    return folder


def generated_model(repo: Path) -> Path:
    """A Python model folder as `triton` writes it: config, model.py, a data file, the mark."""
    folder = repo / "m_preprocess"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text('name: "m_preprocess"\nbackend: "python"\n')
    (folder / "1" / "model.py").write_text(marks.MODEL_PY)
    (folder / "1" / "manifest.json").write_text("{}\n")
    marks.write_mark(folder, {"ensemble": "m", "stage": "preprocess"})
    return folder


@needs_tritonclient
@pytest.mark.parametrize("config", [
    "backend: 'python'\n",  # single quotes: valid text format
    'name: "theirs" backend: "python"\n',  # not at the start of a line
    'backend: "pyth" "on"\n',  # adjacent strings are joined
    'backend: "\\160ython"\n',  # an escape
    '# backend: "onnxruntime"\nbackend:\n  "python"\n',  # a comment, the value on the next line
    'name: "theirs"\n',  # no backend: Triton guesses one
    'platform: "not_a_platform_we_know"\n',
    'backend: "onnxruntime"\nruntime: "model.py"\n',  # a runtime of its own
])
def test_python_models_are_found_however_the_config_spells_it(tmp_path, config):
    """Python code Triton may run (here under a name that does not end in .py) is held to the Python check."""
    foreign_model(tmp_path, config + 'default_model_filename: "model.txt"\n', code="model.txt")
    with pytest.raises(UsageError, match="is a Python model that beit-deploy did not write"):
        marks.check_repository(tmp_path, None, SERVER)


@needs_tritonclient
@pytest.mark.parametrize("name", ["theirs", ".hidden"])
def test_a_folder_without_a_config_is_refused(tmp_path, name):
    """Triton 2.51 loads every folder of a repository, hidden ones too, and runs the model.py of one without a
    config.pbtxt as a Python model (tried: its code ran)."""
    generated_model(tmp_path)
    (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / name / "1" / "model.py").write_text("import os\n")
    (tmp_path / "README.md").write_text("a file: not a model\n")
    with pytest.raises(UsageError, match=f"{name}' has no config.pbtxt, and Triton would load it anyway"):
        marks.check_repository(tmp_path, None, SERVER)


@needs_tritonclient
def test_known_other_backends_and_generated_python_models_pass(tmp_path):
    generated_model(tmp_path)
    for name, config in (("onnx", "platform: 'onnxruntime_onnx'\n"), ("engine", 'backend: "tensorrt"\n'),
                         ("ensemble", 'platform: "ensemble"\n')):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(config)
    marks.check_repository(tmp_path, None, SERVER)
    with pytest.raises(UsageError, match="needs Triton's tensorrt backend"):
        marks.check_repository(tmp_path, tmp_path / "no-backends", SERVER)


@needs_tritonclient
@pytest.mark.parametrize("config", ['backend: "onnxruntime"\nbackend: "python"\n', 'backend: "python\n',
                                    'backend: "onnxruntime"\nnot_a_field: 1\n', "\xff\xfe{{{"])
def test_a_config_triton_would_not_read_is_refused(tmp_path, config):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.pbtxt").write_text(config, errors="surrogateescape")
    with pytest.raises(UsageError, match=r"theirs/config.pbtxt' is not a model config Triton would read \("):
        marks.check_repository(tmp_path, None, SERVER)


def test_copy_checked_takes_only_plain_files(tmp_path):
    folder, link, fifo = tmp_path / "folder", tmp_path / "link", tmp_path / "fifo"
    folder.mkdir()
    link.symlink_to(tmp_path / "elsewhere.onnx")
    (tmp_path / "elsewhere.onnx").write_bytes(b"graph")
    os.mkfifo(fifo)
    for source, said in ((folder, r"is not a plain file \(it is a folder\)"), (link, r"\(a symbolic link\)"),
                         (fifo, r"is not a plain file \(it is a FIFO\)")):
        failure = finishes(lambda: marks.copy_checked(source, tmp_path / f"copy-{source.name}"), fifo)
        assert isinstance(failure, ArtifactError) and re.search(said, str(failure)), failure
    assert marks.copy_checked(tmp_path / "elsewhere.onnx", tmp_path / "copy") == marks.file_sha256(tmp_path / "copy")


@needs_tritonclient
@pytest.mark.parametrize("case", ["fifo entry", "fifo mark", "fifo config", "linked config", "huge config",
                                  "config folder"])
def test_repository_files_must_be_plain(tmp_path, case):
    """What serve reads or hashes in a repository: a FIFO is refused (not waited on), a linked config.pbtxt is
    not read through, a config over the size cap is not read whole."""
    folder = generated_model(tmp_path)
    fifo = tmp_path / "fifo"
    target = {"fifo entry": folder / "1" / "manifest.json", "fifo mark": folder / marks.MARK,
              "fifo config": folder / "config.pbtxt"}.get(case)
    if target is not None:
        target.unlink()
        os.mkfifo(target)
        fifo = target
    elif case == "linked config":
        (tmp_path / "outside.pbtxt").write_text('backend: "python"\n')
        (folder / "config.pbtxt").unlink()
        (folder / "config.pbtxt").symlink_to(tmp_path / "outside.pbtxt")
    elif case == "huge config":
        (folder / "config.pbtxt").write_text('backend: "python"\n' + "# padding\n" * 200_000)
    else:
        (folder / "config.pbtxt").unlink()
        (folder / "config.pbtxt").mkdir()
    expected = {"fifo entry": r"manifest.json' is not a plain file \(it is a FIFO\)",
                "fifo mark": "is a Python model that beit-deploy did not write",
                "fifo config": r"config.pbtxt' is not a plain file \(it is a FIFO\)",
                "linked config": r"config.pbtxt' cannot be read as a plain file \(a symbolic link\)",
                "huge config": "config.pbtxt' is larger than 1048576 bytes",
                "config folder": r"config.pbtxt' is not a plain file \(it is a folder\)"}[case]
    failure = finishes(lambda: marks.check_repository(tmp_path, None, SERVER), fifo)
    assert isinstance(failure, UsageError) and re.search(expected, str(failure)), failure

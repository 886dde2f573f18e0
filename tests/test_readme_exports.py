"""Following the README and docs/ in order keeps every earlier export: their `beit-deploy export` commands (after
the demo's), run one after the other on tiny models, leave every graph an earlier command wrote in place and hash-correct.
A command that says `--replace` is first run without it, which must refuse and touch nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from beit_deploy.cli import main
from beit_deploy.core.files import file_sha256
from beit_deploy.core.manifest import check_artifact, read_manifest
from test_readme import doc_commands

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo.py"


def demo_export() -> list[str]:
    """The demo's export command, as samples/demo.py runs it."""
    text = DEMO.read_text()
    model = re.search(r'^MODEL = "([^"]+)"', text, re.M).group(1)
    args = re.search(r'beit_deploy\("export", (.*)\)', text).group(1)
    return ["export", *(model if a.strip() == "MODEL" else a.strip().strip('"') for a in args.split(","))]


def readme_exports() -> list[list[str]]:
    """Every `beit-deploy export ...` line of the code blocks of README.md and docs/*.md, in reading order (the
    README's, then the docs in the order its "Where to go next" table lists them), without comments."""
    return [argv[1:] for _, argv in doc_commands() if argv[1] == "export"]


def on_tiny_models(argv: list[str], models: Path, out: Path) -> list[str]:
    """The same command on tiny models: each model name becomes a tiny save_pretrained folder of that name
    (other weights than `--random-weights` gives), sizes a quarter as large, calibration the sample photos,
    output folders under `out`."""
    mapped, args = [], iter(argv)
    for arg in args:
        if arg in ("--model", "-m"):
            mapped += [arg, str(models / Path(next(args)).name)]
        elif arg in ("-r", "--resolution"):
            h, _, w = next(args).partition("x")
            mapped += [arg, f"{int(h) // 64 * 16}x{int(w or h) // 64 * 16}"]
        elif arg == "--calibration":
            mapped += [arg, str(ROOT / "samples" / "images")]
            next(args)
        elif arg == "--out":
            mapped += [arg, str(out / next(args))]
        else:
            mapped.append(arg)
    return mapped + ([] if "--out" in argv else ["--out", str(out / "export")])


def snapshot(out: Path) -> dict[Path, dict[str, str]]:
    """{resolution folder: {precision: sha256 of its graph}} of every export under `out`, each checked."""
    found = {}
    for manifest_file in sorted(out.glob("*/*/*/manifest.json")):
        folder, manifest = manifest_file.parent, read_manifest(manifest_file.parent)
        for precision in manifest.artifacts:
            check_artifact(folder, manifest, precision, hashes=True)
        found[folder] = {p: file_sha256(folder / f) for p, f in manifest.artifacts.items()}
    return found


def test_the_readme_has_the_export_commands_this_test_follows():
    commands = readme_exports()
    assert len(commands) >= 6 and any("--replace" in c for c in commands) and any("--int8" in c for c in commands)
    assert demo_export() == ["export", "--model", "beit-base-patch16-224", "--random-weights", "--fp16"]


def test_following_the_readme_in_order_keeps_every_earlier_artifact(tmp_path):
    pytest.importorskip("modelopt", reason="the docs' --fp8 line needs ModelOpt (the quantize extra)")
    from conftest import save_tiny

    models, out = tmp_path / "models", tmp_path / "out"
    commands = [demo_export(), *readme_exports()]
    for argv in commands:
        name = Path(argv[argv.index("--model") + 1]).name
        if not (models / name).exists():
            save_tiny(models / name, "classification", seed=1)
    runner = CliRunner()
    for argv in commands:
        before, cmd = snapshot(out), on_tiny_models(argv, models, out)
        if "--replace" in argv:  # first without it: refused, nothing touched
            refused = runner.invoke(main, [a for a in cmd if a != "--replace"])
            assert refused.exit_code == 2 and "--replace" in refused.output, refused.output
            assert snapshot(out) == before
        result = runner.invoke(main, cmd)
        assert result.exit_code == 0, f"{' '.join(argv)}:\n{result.output}"
        after = snapshot(out)
        made = {Path(line.split(":")[0]) for line in result.output.splitlines() if line.startswith(str(out))}
        for folder, graphs in before.items():
            if "--replace" in argv and folder in made:
                continue  # replaced on purpose
            new = read_manifest(folder).runs[-1]["artifacts"] if folder in made else []
            for precision, digest in graphs.items():
                assert precision in after[folder], f"{' '.join(argv)} dropped {folder}'s {precision} graph"
                assert precision in new or after[folder][precision] == digest, f"{precision} changed in {folder}"
    base = out / "export" / "beit-base-patch16-224" / "64x64"  # the demo's model, at every step of the README
    assert set(read_manifest(base).artifacts) >= {"fp32", "fp16", "int8", "int8cpu"}

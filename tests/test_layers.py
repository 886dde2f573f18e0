"""The package's layers, read from its own import statements (module level and inside functions):

    core (contracts) < runtime < exporter, serve < trt < proof < bench < cli

Every import of a beit_deploy module goes to the same folder or one below it; the contracts import nothing of
ours above them and nothing outside the standard library at module level; the runtime imports only numpy,
Pillow, onnxruntime and the contracts (its TensorRT backend loads torch and tensorrt when an engine opens); no
two modules import each other in a circle. And no stage compares a task, precision, backend or answer-kind name
(read from the tables themselves) outside its table: it asks the table.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "beit_deploy"
RANK = {"core": 0, "runtime": 1, "exporter": 2, "serve": 2, "batch": 2, "trt": 3, "proof": 4, "bench": 5, "cli": 9,
        "__init__": 9, "__main__": 9}
ALLOWED_UP: set[tuple[str, str]] = set()  # none: BeitTRTRunner.parity() lives at the package's top now
RUNTIME_THIRD_PARTY = {"numpy", "PIL", "onnxruntime"}
RUNTIME_LAZY = {"beit_deploy.runtime.tensorrt_backend": {"torch", "tensorrt"}}


def modules() -> dict[str, Path]:
    return {"beit_deploy." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(absolute module imported, at module level?) for every import statement of a module."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            found += [(t, id(node) in top) for t in targets]
    return found


MODULES = modules()


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def ours(target: str) -> bool:
    return target == "beit_deploy" or target.startswith("beit_deploy.")


def test_every_module_has_a_floor():
    assert {floor(m) for m in MODULES} <= set(RANK), sorted({floor(m) for m in MODULES} - set(RANK))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways(module):
    up = [t for t, _ in imports(module, MODULES[module]) if ours(t) and t != "beit_deploy"
          and RANK[floor(t)] > RANK[floor(module)] and (module, t) not in ALLOWED_UP]
    assert not up, f"{module} imports a stage above it: {up}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor(m) == "core"))
def test_contracts_import_only_the_standard_library_at_module_level(module):
    third = [t for t, top in imports(module, MODULES[module]) if top and not ours(t) and t != "__future__"
             and t.split(".")[0] not in sys.stdlib_module_names]
    assert not third, f"{module} imports {third} at module level"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor(m) == "runtime"))
def test_runtime_stays_light(module):
    allowed = RUNTIME_THIRD_PARTY | RUNTIME_LAZY.get(module, set())
    third = {t.split(".")[0] for t, _ in imports(module, MODULES[module]) if not ours(t) and t != "__future__"
             and t.split(".")[0] not in sys.stdlib_module_names}
    assert third <= allowed, f"{module} imports {sorted(third - allowed)}"


def test_no_import_circle():
    graph = {m: {t for t, _ in imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def literal_comparisons(source: str, names: set[str]) -> list[int]:
    """Lines of `source` comparing anything with one of `names` as a literal (x == "fp16", x in ("a", "b"))."""
    def literals(node):
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}

    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and any(literals(c) & names for c in [node.left, *node.comparators])]


def named_comparisons(source: str, module: str, constants: set[str]) -> list[int]:
    """Lines of `source` comparing anything with `<module>.<constant>` (x == tasks.LABEL_MAP)."""
    def named(node):
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == module \
            and node.attr in constants

    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and any(named(c) for c in [node.left, *node.comparators])]


def vocabularies() -> dict[str, tuple[set[str], str]]:
    """Each table's names, read from the table itself -> (names, the module holding the table)."""
    from beit_deploy.core import backends, precisions, tasks
    from beit_deploy.runtime import answers

    return {
        "task": (set(tasks.TASKS), "beit_deploy.core.tasks"),
        "precision": ({p.name for p in precisions.PRECISIONS.values()} | {p.family for p in
                      precisions.PRECISIONS.values() if p.family}, "beit_deploy.core.precisions"),
        "backend": ({n for b in backends.BACKENDS.values() for n in (b.name, b.polygraphy) if n}
                    | set(backends.compare_runners()), "beit_deploy.core.backends"),
        "answer kind": (set(answers.ANSWER_KINDS), "beit_deploy.runtime.answers"),
    }


def answer_kind_constants() -> set[str]:
    """The names under which core.tasks spells the answer kinds (TOP_K, LABEL_MAP, ...)."""
    from beit_deploy.core import tasks
    from beit_deploy.runtime import answers

    return {k for k, v in vars(tasks).items() if isinstance(v, str) and v in answers.ANSWER_KINDS}


@pytest.mark.parametrize("vocabulary", ["task", "precision", "backend", "answer kind"])
def test_no_comparisons_with_a_table_name_outside_its_table(vocabulary):
    """No if/elif over task, precision, backend or answer-kind names outside their tables: ask the table."""
    names, table = vocabularies()[vocabulary]
    offenders = [f"{module}:{line}" for module, path in MODULES.items() if module != table
                 for line in literal_comparisons(path.read_text(), names)]
    if vocabulary == "answer kind":
        offenders += [f"{module}:{line}" for module, path in MODULES.items() if module != table
                      for line in named_comparisons(path.read_text(), "tasks", answer_kind_constants())]
    assert not offenders, offenders


@pytest.mark.parametrize("planted, vocabulary", [
    ("if precision == 'fp16':\n    pass", "precision"), ("ok = backend == 'onnxruntime'", "backend"),
    ("ok = name in ('trt', 'x')", "backend"), ("ok = 'int8cpu' != chosen", "precision"),
    ("ok = task == 'segmentation'", "task")])
def test_the_checks_catch_a_planted_comparison(planted, vocabulary):
    names, _ = vocabularies()[vocabulary]
    assert literal_comparisons(planted, names) == [1]
    assert named_comparisons("ok = kind == tasks.LABEL_MAP", "tasks", answer_kind_constants()) == [1]

"""The house's shape: imports run one way, and a registered version ships only the model package.

Layers (README, "Layout"): ``tasks`` -> ``neuralstyle.run`` -> ``neuralstyle.containers`` ->
``neuralstyle.model``; ``neuralstyle.builder`` -> ``neuralstyle.ui`` -> ``neuralstyle.model``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASE = {"neuralstyle", "neuralstyle.config", "neuralstyle.atomic", "neuralstyle.codebase"}
# What each part may import from the project (besides itself). Entry points (stylize.py,
# package_models.py, neuralstyle.demo, neuralstyle.stack) sit on top and may import anything
# but the pipeline.
ALLOWED = {
    "neuralstyle.model": set(),  # shipped alone: not even config
    "neuralstyle.config": set(),
    "neuralstyle.atomic": set(),
    "neuralstyle.codebase": set(),
    "neuralstyle.registry": BASE,
    "neuralstyle.ui": BASE | {"neuralstyle.model"},
    "neuralstyle.builder": BASE | {"neuralstyle.model", "neuralstyle.ui"},
    "neuralstyle.containers": BASE | {"neuralstyle.model", "neuralstyle.ui",
                                      "neuralstyle.registry"},
    "neuralstyle.run": BASE | {"neuralstyle.model", "neuralstyle.registry",
                               "neuralstyle.containers"},
    # Video I/O and flow: client side, never in the model (neuralstyle/video/__init__.py).
    "neuralstyle.video": BASE | {"neuralstyle.model", "neuralstyle.run", "neuralstyle.registry"},
    "tasks": BASE | {"neuralstyle.model", "neuralstyle.run", "neuralstyle.registry",
                     "neuralstyle.ui", "neuralstyle.video"},
    "neuralstyle.demo": BASE | {"neuralstyle.model", "neuralstyle.builder", "neuralstyle.run",
                                "neuralstyle.ui", "neuralstyle.registry"},
    "neuralstyle.stack": BASE | {"neuralstyle.model", "neuralstyle.run", "neuralstyle.registry"},
}
FORBIDDEN_IN_MODEL = ("torch", "luigi", "docker", "onnxruntime", "boto3", "pyspark", "av", "cv2")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The longest ALLOWED key the module falls under."""
    keys = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else module


def imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def project_files() -> list[Path]:
    return sorted([*(REPO / "neuralstyle").rglob("*.py"), *(REPO / "tasks").rglob("*.py")])


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in project_files()}
    graph = {}
    for path in project_files():
        # an import of a package's member names a module when one exists, else the package
        targets = {t for t in imports(path) if t in modules}
        graph[module_name(path)] = {t for t in targets if t != module_name(path)}
    return graph


def test_imports_run_one_way() -> None:
    backward = []
    for module, targets in project_graph().items():
        mine = part_of(module)
        for target in targets:
            theirs = part_of(target)
            if theirs != mine and theirs not in ALLOWED.get(mine, set()) | {"neuralstyle"}:
                backward.append(f"{module} -> {target} ({mine} may not import {theirs})")
    assert not backward, "\n".join(sorted(backward))


def test_no_import_cycle_between_modules() -> None:
    graph = project_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_the_model_package_needs_nothing_it_does_not_ship() -> None:
    for path in sorted((REPO / "neuralstyle" / "model").glob("*.py")):
        for target in imports(path):
            top = target.split(".")[0]
            assert top not in FORBIDDEN_IN_MODEL, f"{path.name} imports {target}"
            if top == "neuralstyle":
                assert target.startswith("neuralstyle.model") or target == "neuralstyle", (
                    f"{path.name} imports {target}, which a registered version does not ship")


def test_the_staged_code_is_only_the_model_package(tmp_path: Path) -> None:
    from neuralstyle.codebase import stage_shipped_code

    staged = stage_shipped_code(tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in staged.rglob("*.py"))
    assert files == sorted(["neuralstyle/__init__.py", *(
        f"neuralstyle/model/{p.name}" for p in (REPO / "neuralstyle" / "model").glob("*.py"))])


@pytest.mark.slow
def test_a_registered_version_ships_only_the_model_package(registry, tmp_path: Path) -> None:
    """The files in a registered version's ``code/`` folder: the model package, nothing else."""
    from mlflow.artifacts import download_artifacts

    from neuralstyle.config import mlflow_scope

    with mlflow_scope(registry.tracking_uri):
        root = Path(download_artifacts(registry.model_uri, dst_path=str(tmp_path)))
    code = root / "code"
    files = sorted(p.relative_to(code).as_posix() for p in code.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    size = sum((code / f).stat().st_size for f in files)
    print(f"registered version's code/ folder: {len(files)} files, {size / 1024:.0f} KiB")
    assert files and all(f == "neuralstyle/__init__.py" or f.startswith("neuralstyle/model/")
                         for f in files), files


def every_python_file() -> list[Path]:
    """The project's own Python: the packages, entry points, benchmarks, docs scripts and tests."""
    skip = {".venv", "build", ".bench", "mlruns", ".git"}
    return sorted(p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


def test_every_project_import_names_something_that_exists() -> None:
    """``from neuralstyle.x import y`` anywhere (bench/ and docs/ have no tests of their own) must
    name a module or a top-level definition that exists: a moved module fails here, not in
    ``make bench`` minutes in."""
    modules = {module_name(p): p for p in project_files()}
    missing = []
    for path in every_python_file():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                wanted = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in wanted:
                if module.split(".")[0] not in ("neuralstyle", "tasks"):
                    continue
                if module not in modules:
                    missing.append(f"{path.relative_to(REPO)}: no module {module}")
                elif name and f"{module}.{name}" not in modules and name not in defined(modules[module]):
                    missing.append(f"{path.relative_to(REPO)}: {module} has no {name}")
    assert not missing, "\n".join(missing)


def defined(path: Path) -> set[str]:
    """Names a module defines or imports at top level (what ``from module import name`` finds)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING blocks and guarded imports
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return names


def test_each_test_file_runs_alone() -> None:
    """A test module may import helpers from tests/ (on pytest's pythonpath) or a test module in
    its own folder, never one in another folder: that import only worked when pytest happened to
    have collected the other folder first, so ``pytest tests/test_readme.py`` alone failed."""
    tests = REPO / "tests"
    wrong = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("test_"):
                if not (path.parent / f"{node.module}.py").is_file():
                    wrong.append(f"{path.relative_to(REPO)} imports {node.module} from another folder")
    assert not wrong, "\n".join(wrong)

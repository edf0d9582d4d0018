"""Declared-once defaults and pins: MLproject, conda.yaml and the scripts cannot drift apart."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def entry_script(command: str) -> Path:
    """The file an entry point's command runs: ``python x.py ...`` or ``python -m pkg.mod ...``."""
    words = command.split()
    assert words[0] == "python", command
    if words[1] == "-m":
        return REPO / (words[2].replace(".", "/") + ".py")
    return REPO / words[1]


def script_defaults(path: Path) -> dict[str, object]:
    if (path.parent / "__init__.py").exists():  # a module of a package (python -m pkg.mod)
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    else:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    parser = module.build_parser()
    return {action.dest: action.default for action in parser._actions if action.dest != "help"}


def same_default(mlproject_default: object, script_default: object) -> bool:
    """MLproject values reach the script as text: '' means None, 'false' means False."""
    if mlproject_default == "" and script_default is None:
        return True
    if isinstance(script_default, bool):
        return str(mlproject_default).lower() == str(script_default).lower()
    return str(mlproject_default) == str(script_default)


@pytest.mark.parametrize("entry", ["package_models", "stylize", "stylize_spark"])
def test_mlproject_defaults_equal_script_defaults(entry: str) -> None:
    project = yaml.safe_load((REPO / "MLproject").read_text())
    spec_of_entry = project["entry_points"][entry]
    params = spec_of_entry["parameters"]
    defaults = script_defaults(entry_script(spec_of_entry["command"]))
    checked = 0
    for name, spec in params.items():
        if "default" not in spec:
            continue
        assert name in defaults, f"MLproject {entry}.{name} is not a flag of the script it runs"
        assert same_default(spec["default"], defaults[name]), (
            f"MLproject {entry}.{name} default {spec['default']!r} != script {defaults[name]!r}"
        )
        checked += 1
    assert checked >= 3
    for name in params:
        assert f"{{{name}}}" in spec_of_entry["command"], name


def test_stylize_entry_runs_the_pipeline() -> None:
    command = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["stylize"]["command"]
    assert entry_script(command) == REPO / "tasks" / "run.py"


def test_conda_env_pins_equal_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(pyproject["dependencies"])
    for extra in ("package", "pipeline", "spark"):
        wanted |= set(pyproject["optional-dependencies"][extra])
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert set(pip) == wanted
    assert all(re.fullmatch(r"[a-z0-9_.\[\],-]+==[0-9][0-9a-z.]*", p) for p in wanted), wanted
    assert "torch==2.13.0" in wanted
    assert not any(p.startswith("torch") for p in pyproject["dependencies"])

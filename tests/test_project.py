"""Declared-once defaults and pins: MLproject, conda.yaml and the scripts cannot drift apart."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def script_defaults(script: str) -> dict[str, object]:
    spec = importlib.util.spec_from_file_location(script, REPO / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.build_parser()
    return {action.dest: action.default for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("entry", ["package_models", "stylize"])
def test_mlproject_defaults_equal_script_defaults(entry: str) -> None:
    project = yaml.safe_load((REPO / "MLproject").read_text())
    params = project["entry_points"][entry]["parameters"]
    defaults = script_defaults(f"{entry}")
    checked = 0
    for name, spec in params.items():
        if "default" not in spec or name not in defaults:
            continue
        script_default = defaults[name]
        mlproject_default = spec["default"]
        if mlproject_default == "" and script_default is None:
            checked += 1
            continue
        assert str(mlproject_default) == str(script_default), (
            f"MLproject {entry}.{name} default {mlproject_default!r} != script {script_default!r}"
        )
        checked += 1
    assert checked >= 3
    for name in params:
        assert f"{{{name}}}" in project["entry_points"][entry]["command"], name


def test_conda_env_pins_equal_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(pyproject["dependencies"])
    for extra in ("package", "pipeline"):
        wanted |= set(pyproject["optional-dependencies"][extra])
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert set(pip) == wanted
    assert all(re.fullmatch(r"[a-z0-9_.\[\],-]+==[0-9][0-9a-z.]*", p) for p in wanted), wanted
    assert "torch==2.13.0" in wanted
    assert not any(p.startswith("torch") for p in pyproject["dependencies"])

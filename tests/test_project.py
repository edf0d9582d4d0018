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


@pytest.mark.parametrize("entry", ["package_models", "stylize", "stylize_spark", "stylize_video"])
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
    for extra in ("package", "pipeline", "spark", "video"):
        wanted |= set(pyproject["optional-dependencies"][extra])
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert set(pip) == wanted
    assert all(re.fullmatch(r"[a-z0-9_.\[\],-]+==[0-9][0-9a-z.]*", p) for p in wanted), wanted
    assert "torch==2.13.0" in wanted
    assert not any(p.startswith("torch") for p in pyproject["dependencies"])


@pytest.mark.parametrize("entry", ["stylize", "stylize_spark", "stylize_video"])
def test_mlproject_offers_every_request_param_of_the_contract(entry: str) -> None:
    """A param added to the contract must reach ``mlflow run`` users too."""
    from neuralstyle.model.contract import FLAG_PARAMS

    params = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry]["parameters"]
    for param in FLAG_PARAMS:
        assert param.name in params, f"MLproject {entry} lacks {param.name}"
        assert same_default(params[param.name]["default"], param.default), param.name


def test_every_task_and_cli_takes_the_contract_params_with_its_defaults() -> None:
    """Built from the contract: the Luigi parameters (instantiated, as Luigi does) and the flags."""
    import luigi

    from neuralstyle.model.contract import FLAG_PARAMS
    from tasks.batch import StylizeBatch
    from tasks.spark import StylizeSpark
    from tasks.stylize import Stylize

    luigi.task_register.Register.clear_instance_cache()
    tasks = [Stylize(image="photo.jpg"), StylizeBatch(images="in/", results="out/"),
             StylizeSpark(images="in/", results="out/")]
    for task in tasks:
        given = task.request_params()
        assert given == {p.name: p.default for p in FLAG_PARAMS}, type(task).__name__
        names = {name for name, _ in type(task).get_params()}
        assert {p.name for p in FLAG_PARAMS} <= names, type(task).__name__
    custom = Stylize(image="photo.jpg", max_size=512, precision="exact", preserve_color=True)
    assert custom.request_params()["max_size"] == 512 and custom.model_params()["precision"] == "exact"
    for script in (REPO / "stylize.py", REPO / "tasks" / "run.py", REPO / "tasks" / "run_spark.py",
                   REPO / "tasks" / "run_video.py"):
        defaults = script_defaults(script)
        for param in FLAG_PARAMS:
            assert defaults[param.name] == param.default, (script.name, param.name)


def test_the_flags_check_values_as_the_model_does() -> None:
    """A bad value is a usage error naming the flag's contract name and its limits (exit 2)."""
    from tasks.run import build_parser

    parser = build_parser()
    assert parser.parse_args(["--image", "x", "--max-size", "1024.0"]).max_size == 1024
    assert parser.parse_args(["--image", "x", "--preserve-color", "yes"]).preserve_color is True
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--image", "x", "--strength", "2"])
    assert exit_info.value.code == 2


def test_the_video_settings_reach_every_video_entry_with_one_default() -> None:
    """temporal and flow_preset: declared once (neuralstyle.video.options), the same everywhere."""
    import luigi

    from neuralstyle.video.options import VIDEO_DEFAULTS
    from tasks.video import StylizeVideo, StylizeVideoBatch

    luigi.task_register.Register.clear_instance_cache()
    for task in (StylizeVideo(image="clip.mp4"), StylizeVideoBatch(images="in/", results="out/")):
        assert task.video_params() == VIDEO_DEFAULTS, type(task).__name__
    params = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["stylize_video"]
    for script in (REPO / "stylize.py", REPO / "tasks" / "run_video.py"):
        defaults = script_defaults(script)
        for name, default in VIDEO_DEFAULTS.items():
            assert defaults[name] == default, (script.name, name)
            assert same_default(params["parameters"][name]["default"], default), name

"""``paint_size`` from every entry point: stylize.py (flags generated from the contract, exit 2 on a
bad value, nothing written), the Luigi task (its parameter, the result's size) and the Spark job's
settings (checked on the driver before Spark starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import luigi
import pytest
from oracle import decode_rgb
from s3_fixtures import run

from tasks import Stylize

REPO = Path(__file__).resolve().parents[2]


def stylize_cli(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, str(REPO / "stylize.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # the registry fixture packages the real model
def test_cli_paints_at_paint_size_and_refuses_bad_values(registry, photos, tmp_path) -> None:
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"])  # 451x300
    ok = stylize_cli("--image", "cat.jpg", "--style", "7", "--max-size", "0", "--paint-size", "200",
                     "--output", "out/cat.png", cwd=tmp_path, uri=registry.tracking_uri)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert decode_rgb((tmp_path / "out" / "cat.png").read_bytes()).shape == (300, 451, 3)
    record = json.loads((tmp_path / "out" / "cat.png.lineage.json").read_text())
    assert record["params"]["paint_size"] == 200
    for flags, message in (
        (["--paint-size", "20000"], "param paint_size=20000 must be in 0..16384"),
        (["--max-size", "256", "--paint-size", "512"],
         "param paint_size=512 is larger than the output (max_size=256)"),
    ):
        proc = stylize_cli("--image", "cat.jpg", "--output", "bad/r.png", *flags, cwd=tmp_path,
                           uri=registry.tracking_uri)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    assert "--paint-size" in stylize_cli("--help", cwd=tmp_path, uri=registry.tracking_uri).stdout


@pytest.mark.slow
def test_luigi_task_takes_paint_size(registry, photos, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"])
    luigi.task_register.Register.clear_instance_cache()
    task = Stylize(image="cat.jpg", style="7", output_path="out/cat.png", executor="local",
                   max_size=400, paint_size=160, tracking_uri=registry.tracking_uri,
                   model_uri=registry.model_uri)
    assert task.request_params()["paint_size"] == 160
    result = run(task)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    assert decode_rgb((tmp_path / "out" / "cat.png").read_bytes()).shape == (266, 400, 3)


def test_spark_job_passes_paint_size_and_refuses_it_above_max_size() -> None:
    from neuralstyle.model.errors import StyleInputError
    from tasks.run_spark import build_parser
    from tasks.spark import JobSettings, validate

    def settings(*flags: str) -> JobSettings:
        return JobSettings(**vars(build_parser().parse_args(
            ["--images", "in/", "--output", "out/", *flags])))

    good = settings("--max-size", "0", "--paint-size", "1024")
    validate(good)
    assert good.params()["paint_size"] == 1024 and good.params()["max_size"] == 0
    with pytest.raises(StyleInputError, match="paint_size=2048 is larger than the output"):
        validate(settings("--paint-size", "2048"))

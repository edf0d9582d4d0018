"""stylize.py as a user runs it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from oracle import decode_rgb, faithful, max_level_diff, oracle_uint8
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def stylize(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, str(REPO / "stylize.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stylize_a_local_file(registry, photos, tmp_path) -> None:
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"])
    proc = stylize("--image", "cat.jpg", "--style", "7", "--output", "out/cat-7.png",
                   cwd=tmp_path, uri=registry.tracking_uri)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote out/cat-7.png (451x300, style style-07" in proc.stdout
    got = decode_rgb((tmp_path / "out" / "cat-7.png").read_bytes())
    assert faithful(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7"))
    # The result and its lineage, nothing half-written beside them.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cat-7.png", "cat-7.png.lineage.json"]
    record = json.loads((tmp_path / "out" / "cat-7.png.lineage.json").read_text())
    assert record["params"]["precision"] == "fast" and record["precision"] in ("fp32", "bf16")
    exact = stylize("--image", "cat.jpg", "--style", "7", "--output", "out/cat-7-exact.png",
                    "--precision", "exact", cwd=tmp_path, uri=registry.tracking_uri)
    assert exact.returncode == 0, exact.stderr[-2000:]
    got = decode_rgb((tmp_path / "out" / "cat-7-exact.png").read_bytes())
    assert max_level_diff(got, oracle_uint8(decode_rgb(photos["chelsea"]), "7")) <= 1
    assert json.loads((tmp_path / "out" / "cat-7-exact.png.lineage.json").read_text())[
        "precision"] == "fp32"


def _bad_inputs(photos: dict[str, bytes], tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (file to pass, expected message); files written into ``tmp``."""
    def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
        out = io.BytesIO()
        Image.new(mode, size).save(out, "PNG")
        return out.getvalue()

    files = {
        "text.jpg": (b"hello, I am text\n", "is not a JPEG/PNG/WebP image (got 17 bytes of text"),
        "cut.jpg": (photos["chelsea"][:5000], "is truncated or corrupt"),
        "zero.jpg": (b"", "is empty (0 bytes)"),
        "tiny.png": (png((20, 20)), "is too small: 20x20"),
        "bomb.png": (png((10_000, 10_000), "1"), "is too large"),
    }
    for name, (data, _) in files.items():
        (tmp / name).write_bytes(data)
    return {name: (name, message) for name, (_, message) in files.items()} | {
        "missing": ("nowhere.jpg", "image nowhere.jpg does not exist"),
    }


@pytest.mark.slow
def test_bad_input_exit_2_and_no_output(registry, photos, tmp_path) -> None:
    cases = _bad_inputs(photos, tmp_path)
    for name, (image, message) in cases.items():
        proc = stylize("--image", image, "--output", "out/result.jpg", cwd=tmp_path,
                       uri=registry.tracking_uri)
        assert proc.returncode == 2, (name, proc.stderr[-1500:])
        lines = [line for line in proc.stderr.splitlines() if line.startswith("stylize: error:")]
        assert len(lines) == 1 and message in lines[0], (name, proc.stderr[-1500:])
        assert image in lines[0]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (tmp_path / "ok.jpg").write_bytes(photos["chelsea"])
    for style, message in (("42", "out of range"), ("3:x", "is not a number"),
                           ("bogus", "style 'bogus' is unknown")):
        proc = stylize("--image", "ok.jpg", "--style", style, "--output", "out/r.jpg",
                       cwd=tmp_path, uri=registry.tracking_uri)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]
        assert not (tmp_path / "out" / "r.jpg").exists()


def test_help_states_every_default() -> None:
    for script in ("stylize.py", "package_models.py"):
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0
        import re

        options = re.findall(r"^\s+(--[a-z-]+)", proc.stdout, flags=re.M)
        helps = re.split(r"\n\s+--", proc.stdout.split("options:")[1])[1:]
        assert len(helps) >= len(options) - 1
        for block in helps:
            if block.startswith("help") or block.startswith("image IMAGE"):
                continue
            assert "default" in block, f"{script}: --{block.splitlines()[0]} states no default"

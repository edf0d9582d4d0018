"""stylize.py --style-image: any painting as the style, exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest
from test_cli import stylize

from neuralstyle.builder.samples import encode, sample_painting

pytestmark = pytest.mark.slow


def test_painting_from_a_file(registry, photos, tmp_path) -> None:
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"])
    (tmp_path / "stain.png").write_bytes(encode(sample_painting("immunohistochemistry")))
    proc = stylize("--image", "cat.jpg", "--style-image", "stain.png", "--strength", "0.7",
                   cwd=tmp_path, uri=registry.tracking_uri)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote out/cat-stain.jpg (451x300, style painting:" in proc.stdout
    record = json.loads((tmp_path / "out" / "cat-stain.jpg.lineage.json").read_text())
    assert record["style"]["requested"] == "style_image stain.png"
    named = stylize("--image", "cat.jpg", "--style", "stain", "--output", "out/named.jpg",
                    cwd=tmp_path, uri=registry.tracking_uri)
    assert named.returncode == 0, named.stderr[-2000:]
    assert "style stain" in named.stdout


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--style-image", "missing.png"], "style_image missing.png does not exist"),
        ("text", ["--style-image", "bad.png"],
         "style_image bad.png is not a JPEG/PNG/WebP image"),
        ("ok", ["--style-image", "ok.png", "--style", "7"],
         "gives both style '7' and style_image: send one"),
    ],
    ids=["missing", "not-an-image", "both"],
)
def test_bad_painting_exit_2(registry, photos, tmp_path, setup, args, message) -> None:
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"])
    (tmp_path / "bad.png").write_text("not a painting")
    (tmp_path / "ok.png").write_bytes(encode(sample_painting("brick")))
    proc = stylize("--image", "cat.jpg", *args, cwd=tmp_path, uri=registry.tracking_uri)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()

"""The pipeline with a painting as the style: ``--style-image s3://bucket/painting.jpg``.

The painting comes through the same atomic, size-checked S3 download as the photo.
"""

# Fixtures imported from s3_fixtures come back as test parameters of the same name:
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from luigi.execution_summary import LuigiStatusCode
from oracle import b64, decode_b64, decode_rgb
from s3_fixtures import (  # noqa: F401  (fixtures are found by name)
    aws_env,
    bucket,
    fresh_luigi,
    run,
    s3,
)
from test_pipeline import leftovers, stylize, workdir  # noqa: F401

from neuralstyle.builder.samples import encode, sample_painting
from tasks.report import outcomes

pytestmark = pytest.mark.slow


def test_s3_photo_and_s3_painting(
    registry: Any, model: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    painting = encode(sample_painting("immunohistochemistry"))
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    s3.put_object(Bucket=bucket, Key="paintings/stain.png", Body=painting)
    task = stylize(registry, image="s3://photos/in/cat.jpg",
                   style_image="s3://photos/paintings/stain.png", executor="local")
    assert task.output_file() == "out/cat-stain.jpg"
    result = run(task)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert (workdir / "data" / "photos" / "paintings" / "stain.png").read_bytes() == painting
    got = decode_rgb((workdir / "out" / "cat-stain.jpg").read_bytes())
    frame = pd.DataFrame({"image": [b64(photos["chelsea"])], "style_image": [b64(painting)]})
    want = decode_b64(model.predict(frame).loc[0, "image"])  # the same request in-process
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert leftovers(workdir) == []


def test_a_bad_s3_painting_fails_with_its_name_and_writes_nothing(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    s3.put_object(Bucket=bucket, Key="paintings/notes.jpg", Body=b"hello, I am text\n")
    task = stylize(registry, image="s3://photos/in/cat.jpg",
                   style_image="s3://photos/paintings/notes.jpg", executor="local")
    result = run(task)
    assert result.status == LuigiStatusCode.FAILED
    [outcome] = outcomes(result, [task])
    assert "style_image " in outcome.reason and "notes.jpg is not a JPEG/PNG/WebP image" in outcome.reason
    assert not (workdir / "out").exists() and leftovers(workdir) == []
    # The useless local copy is dropped, so a fixed painting is downloaded again on a rerun.
    assert not (workdir / "data" / "photos" / "paintings" / "notes.jpg").exists()


def test_missing_s3_painting_names_itself(
    registry: Any, photos: dict[str, bytes], s3: Any, bucket: str, workdir: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=photos["chelsea"])
    task = stylize(registry, image="s3://photos/in/cat.jpg",
                   style_image="s3://photos/paintings/nope.jpg", executor="local")
    result = run(task)
    assert result.status != LuigiStatusCode.SUCCESS
    assert "s3://photos/paintings/nope.jpg" in result.summary_text
    assert not (workdir / "out").exists()

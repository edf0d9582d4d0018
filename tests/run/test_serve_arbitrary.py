"""``mlflow models serve`` with a painting as the style: the ``style_image`` column, named paintings.

Served pixels must equal the in-process model's; bad paintings are 400s naming ``style_image``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from oracle import decode_b64
from PIL import Image
from test_serve import b64, post

from neuralstyle.builder.samples import encode, sample_painting
from neuralstyle.run.serving import Server, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri) as srv:
        yield srv


def test_painting_as_style_image_matches_in_process(server, model, photos) -> None:
    painting = encode(sample_painting("immunohistochemistry"))
    body = {"dataframe_split": {"columns": ["image", "style_image"],
                                "data": [[b64(photos["chelsea"]), b64(painting)]]},
            "params": {"format": "png", "strength": 0.8}}
    response = post(server.url, body)
    assert response.status_code == 200, response.text[:500]
    [row] = response.json()["predictions"]
    assert row["style"].startswith("painting:") and (row["width"], row["height"]) == (451, 300)
    frame = pd.DataFrame({"image": [b64(photos["chelsea"])], "style_image": [b64(painting)]})
    local = model.predict(frame, params={"format": "png", "strength": 0.8})
    diff = np.abs(decode_b64(row["image"]).astype(int) - decode_b64(local.loc[0, "image"]).astype(int))
    print(f"served vs in-process, painting: max {diff.max()}/255")
    assert diff.max() <= 1


def test_named_painting_by_records(server, photos) -> None:
    body = {"dataframe_records": [{"image": b64(photos["chelsea"]), "style": "stain"}]}
    response = post(server.url, body)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["predictions"][0]["style"] == "stain"


def _png(size: tuple[int, int], mode: str) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("painting", "style", "message"),
    [
        (b"hello, I am text\n", None, "style_image (row 0) is not a JPEG/PNG/WebP image"),
        (b"", None, "style_image (row 0) is empty"),
        (_png((10_000, 10_000), "1"), None, "style_image (row 0) is too large"),
        (_png((20, 20), "RGB"), None, "style_image (row 0) is too small: 20x20"),
        (_png((64, 64), "RGB"), "7", "gives both style '7' and style_image: send one"),
    ],
    ids=["not-an-image", "empty", "bomb", "too-small", "both"],
)
def test_bad_painting_is_a_400_and_the_next_request_works(
        server, photos, painting: bytes, style: str | None, message: str) -> None:
    columns, row = ["image", "style_image"], [b64(photos["chelsea"]), b64(painting)]
    if style is not None:
        columns.append("style")
        row.append(style)
    response = post(server.url, {"dataframe_split": {"columns": columns, "data": [row]}})
    assert response.status_code == 400, response.text[:500]
    assert message in response.json()["message"]
    ok = post(server.url, {"dataframe_records": [{"image": b64(photos["chelsea"]), "style": "7"}],
                           "params": {"max_size": 64}})
    assert ok.status_code == 200

"""A clip through a real ``mlflow models serve``: the same frames as in-process, and the server
answers a bad painting with a clear 400 that names the file, then keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from video_clips import Motion, audio_info, read_frames, synthetic_frames, write_clip

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.model.errors import StyleInputError
from neuralstyle.run.client import StyleServerClient
from neuralstyle.run.inference import LocalPredictor
from neuralstyle.run.serving import Server, running_server
from neuralstyle.video.clips import stylize_video

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def server(registry) -> Iterator[Server]:
    with running_server(registry.model_uri, tracking_uri=registry.tracking_uri) as srv:
        yield srv


def test_the_server_gives_the_same_clip_as_in_process(server, registry, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "pan.mp4", synthetic_frames(
        sample_rgb("rocket"), Motion(dx=-2, dy=1), 8, (160, 112)), audio=True)
    client = StyleServerClient(server.url)
    seen: dict[str, list[np.ndarray]] = {"served": [], "as_jpeg": []}

    def keep(name: str):
        return lambda index, frame, alone, blended: seen[name].append(blended.copy())

    served = stylize_video(clip, tmp_path / "served.mp4", "7", client, {"max_size": 160},
                           on_frame=keep("served"))
    local = LocalPredictor(registry.model_uri, registry.tracking_uri)
    # Frames travel to a server as JPEG q95 both ways; in-process they go as pixels
    # (test_video_speed_paths.py): the same model through the JPEG path must give the same clip.
    as_jpeg = stylize_video(clip, tmp_path / "local.mp4", "7", _PredictOnly(local),
                            {"max_size": 160}, tracking_uri=registry.tracking_uri,
                            on_frame=keep("as_jpeg"))
    raw = stylize_video(clip, tmp_path / "raw.mp4", "7", local, {"max_size": 160},
                        tracking_uri=registry.tracking_uri)
    a, _ = read_frames(served.output)
    b, _ = read_frames(as_jpeg.output)
    c, _ = read_frames(raw.output)
    # The frames handed to the encoder are the same bytes; the encoded files may not be: libx264
    # gave the same frames different bits now and then (up to 3 levels; media.OUTPUT_FORMATS).
    assert len(seen["served"]) == len(seen["as_jpeg"]) == 8
    assert all(np.array_equal(x, y) for x, y in zip(seen["served"], seen["as_jpeg"], strict=True))
    diffs = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)]
    codec = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, c, strict=True)]
    print(f"served vs in-process through JPEG: encoder input identical; decoded files, mean "
          f"|diff| per frame: worst {max(diffs):.3f} (of 255); served vs in-process as pixels (the "
          f"JPEG round trips' noise): median {np.median(codec):.2f}, worst {max(codec):.2f}")
    assert len(a) == len(b) == len(c) == 8 and max(diffs) < 3.0
    assert audio_info(served.output)[:2] == ("aac", 2)

    bad = tmp_path / "painting.jpg"
    bad.write_bytes(b"not a picture")
    with pytest.raises(StyleInputError, match="painting.jpg"):
        stylize_video(clip, tmp_path / "bad.mp4", "", client, {"max_size": 160}, style_image=bad)
    assert not (tmp_path / "bad.mp4").exists()
    assert client.ping()


class _PredictOnly:
    """The in-process model behind ``predict`` alone, so frames take the JPEG path."""

    def __init__(self, predictor: LocalPredictor) -> None:
        self.predictor = predictor
        self.model_uri = predictor.model_uri

    def predict(self, frame, params=None):
        return self.predictor.predict(frame, params=params)

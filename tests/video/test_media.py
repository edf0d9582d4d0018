"""Clips in and out without the model: frames, timestamps, rotation, sound, bad input, the metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from video_clips import (
    Motion,
    audio_info,
    pan_flows,
    read_frames,
    synthetic_frames,
    write_clip,
)

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.model.errors import StyleInputError
from neuralstyle.video import media, metrics

SIZE = (192, 128)


def copy_through(source: Path, output: Path) -> list[media.Frame]:
    """Our reader into our writer, frames unchanged: what the pipeline does around the model."""
    import av

    info = media.probe(source)
    frames = []
    with av.open(str(source)) as src:
        template = src.streams.audio[0] if src.streams.audio else None
        writer = media.ClipWriter(output, info.width, info.height, src.streams.video[0].time_base,
                                  info.fps, template)
        for item in media.read_clip(source):
            if isinstance(item, media.Frame):
                frames.append(item)
                writer.write_frame(item.rgb, item.pts)
            else:
                writer.write_audio(item)
        writer.close()
    return frames


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_frames_timestamps_and_sound_survive_the_round_trip(tmp_path: Path, suffix: str) -> None:
    frames = synthetic_frames(sample_rgb("coffee"), Motion(dx=2, dy=1), 12, SIZE)
    # Variable frame rate: gaps of 1, 2 and 3 frame periods.
    pts = list(np.cumsum([0] + [100 * (1 + i % 3) for i in range(11)]))
    source = write_clip(tmp_path / "vfr.mp4", frames, audio=True, pts=[int(p) for p in pts])
    out = tmp_path / f"out{suffix}"
    copy_through(source, out)
    got, times = read_frames(out)
    _, want_times = read_frames(source)
    assert len(got) == len(frames)
    assert np.allclose(times, want_times, atol=1e-3), (times, want_times)
    diffs = [np.abs(g.astype(int) - f.astype(int)).mean() for g, f in zip(got, frames, strict=True)]
    print(f"{suffix}: mean |diff| per frame min {min(diffs):.2f} median {np.median(diffs):.2f} "
          f"worst {max(diffs):.2f} (of 255)")
    assert max(diffs) < 6
    codec, channels, seconds = audio_info(out)
    src_codec, src_channels, src_seconds = audio_info(source)
    assert (codec, channels) == (("aac", 2) if suffix == ".mp4" else ("opus", 2))
    assert abs(seconds - src_seconds) <= 1 / 24 + 0.03, (seconds, src_seconds)  # Opus pre-skip
    if suffix == ".mp4":
        head = out.read_bytes()[:4096]
        assert head.find(b"moov") != -1 and head.find(b"moov") < out.read_bytes().find(b"mdat"), (
            "fast start: the index (moov) comes before the media data")


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied_so_frames_are_upright(tmp_path: Path, rotation: int) -> None:
    """Oracle: OpenCV's own reader, which applies the display matrix itself."""
    import cv2

    frames = synthetic_frames(sample_rgb("astronaut"), Motion(dx=1), 3, SIZE)
    source = write_clip(tmp_path / "phone.mp4", frames, rotation=rotation)
    info = media.probe(source)
    ours = [f.rgb for f in media.read_clip(source) if isinstance(f, media.Frame)]
    capture = cv2.VideoCapture(str(source))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    assert ours[0].shape == bgr.shape
    assert (info.width, info.height) == (bgr.shape[1], bgr.shape[0])
    assert np.abs(ours[0].astype(int) - bgr[..., ::-1].astype(int)).mean() < 2
    if rotation % 180:
        assert ours[0].shape[:2] == (SIZE[0], SIZE[1])


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each bad clip and the words its error must contain."""
    good = write_clip(tmp_path / "good.mp4", synthetic_frames(
        sample_rgb("chelsea"), Motion(dx=1), 8, SIZE), audio=True)
    data = good.read_bytes()
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    sound_only = tmp_path / "sound.m4a"
    import av

    with av.open(str(good)) as src, av.open(str(sound_only), "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    faststart = tmp_path / "faststart.mp4"
    copy_through(good, faststart)  # our own output: the index before the media data
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 2 // 3])
    huge = write_clip(tmp_path / "huge.mp4", [np.zeros((2400, 4100, 3), np.uint8)], crf=40)
    return {"text": (text, "not a video"), "truncated": (truncated, "not a video"),
            "cut after its index": (cut, "truncated"),
            "empty": (empty, "empty"), "sound only": (sound_only, "no video stream"),
            "huge": (huge, "4100x2400"), "missing": (tmp_path / "nope.mp4", "does not exist"),
            "folder": (tmp_path, "folder")}


def test_bad_clips_get_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    for name, (path, words) in bad_inputs(tmp_path).items():
        with pytest.raises(StyleInputError) as caught:
            list(media.read_clip(path))
        assert str(path) in caught.value.message and words in caught.value.message, (name, caught)


def test_the_warping_error_sees_flicker_and_not_motion() -> None:
    """A steady pan scores ~0 with its exact flow and with Farneback; noise flicker does not."""
    frames = synthetic_frames(sample_rgb("coffee"), Motion(dx=3, dy=1), 8, (256, 160))
    exact = pan_flows(Motion(dx=3, dy=1), 8, (256, 160))
    steady = metrics.warping_error(frames, frames, flows=exact)
    estimated = metrics.warping_error(frames, frames)
    rng = np.random.default_rng(0)
    noisy = [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in frames]
    flicker = metrics.warping_error(frames, noisy, flows=exact)
    print(f"warping error: steady pan {steady:.5f} (exact flow), {estimated:.5f} (Farneback); "
          f"with noise {flicker:.5f}")
    assert steady < 1e-4 and estimated < 2e-3
    assert flicker > 20 * max(steady, estimated)
    forward = metrics.farneback(frames[0], frames[1])
    error = np.linalg.norm(forward[16:-16, 16:-16] - exact[0][0][16:-16, 16:-16], axis=-1)
    print(f"Farneback endpoint error vs exact: median {np.median(error):.3f} px")
    assert np.median(error) < 0.5


@pytest.mark.parametrize("motion", [Motion(dx=3, dy=1), Motion(dx=-5, dy=2), Motion(dx=0, dy=-4)])
def test_scene_cuts_are_found_on_the_inputs_and_left_out_of_the_per_shot_error(
        motion: Motion) -> None:
    """Every ordered pair of photos, panned 4 frames each: exactly the pair across the cut is
    flagged, from the inputs alone; per shot, the steady clip scores ~0 again."""
    names = ("coffee", "chelsea", "astronaut", "rocket")
    worst_steady, weakest_cut = 0.0, np.inf
    for first in names:
        for second in names:
            if first == second:
                continue
            frames = (synthetic_frames(sample_rgb(first), motion, 4, (256, 160))
                      + synthetic_frames(sample_rgb(second), motion, 4, (256, 160)))
            flows = [(metrics.farneback(a, b), metrics.farneback(b, a))
                     for a, b in zip(frames[:-1], frames[1:], strict=True)]
            errors = metrics.pair_errors(frames, frames, flows)
            assert metrics.scene_cuts(frames, flows) == [t == 3 for t in range(7)], (first, second)
            per_shot = metrics.warping_error(frames, frames, flows=flows, within_shots=True)
            assert per_shot == pytest.approx(np.mean([e for t, e in enumerate(errors) if t != 3]))
            worst_steady = max(worst_steady, per_shot)
            weakest_cut = min(weakest_cut, errors[3])
    print(f"{motion}: worst steady per-shot error {worst_steady:.5f}, weakest cut {weakest_cut:.4f} "
          f"(threshold {metrics.CUT_INPUT_ERROR})")
    assert worst_steady < 2e-3 < metrics.CUT_INPUT_ERROR < weakest_cut


# A seeded family spanning what users bring: containers, video codecs and pixel formats (8- and
# 10-bit, 4:2:0 to 4:4:4, RGBA), odd, portrait and 1080p sizes, frame rates from 12.5 to 60 fps
# (NTSC's fractions, variable), and sound from none to 5.1 in codecs MP4 and WebM take and don't.
# name: "container, video codec, pixel format, WxH, rate (vfr: variable), audio codec (-: none),
# layout, sample rate, frames, output suffix".
FAMILY = {
    "h264-ntsc-aac": "mp4 libx264 yuv420p 320x240 30000/1001 aac stereo 44100 20 .mp4",
    "mjpeg-odd-pcm-mono": "mov mjpeg yuvj444p 321x241 24000/1001 pcm_s16le mono 22050 15 .mp4",
    "mpeg4-avi-mp3": "avi mpeg4 yuv420p 352x288 25/1 libmp3lame stereo 44100 20 .webm",
    "hevc-60-flac-5.1": "mkv libx265 yuv420p 426x240 60/1 flac 5.1 48000 30 .mp4",
    "vp9-12.5-opus": "webm libvpx-vp9 yuv420p 640x360 25/2 libopus stereo 48000 12 .mp4",
    "ffv1-portrait-ac3-5.1": "mkv ffv1 yuv444p 200x600 15/1 ac3 5.1 48000 10 .webm",
    "prores-10bit-pcm": "mov prores yuv422p10le 480x270 24/1 pcm_s16le stereo 48000 12 .mp4",
    "mpeg2-ntsc-silent": "mkv mpeg2video yuv420p 720x480 30000/1001 - - 0 15 .webm",
    "h264-1080p-aac-mono-8k": "mp4 libx264 yuv420p 1920x1080 25/1 aac mono 8000 6 .mp4",
    "png-rgba-odd-aac": "mov png rgba 255x255 10/1 aac stereo 44100 8 .webm",
    "h264-vfr-aac": "mp4 libx264 yuv420p 240x320 vfr aac stereo 48000 12 .mp4",
    "h264-one-frame": "mp4 libx264 yuv420p 320x180 30/1 aac stereo 48000 1 .mp4",
    "mjpeg-avi-pcm-5.1": "avi mjpeg yuvj420p 400x300 50/1 pcm_s16le 5.1 48000 25 .webm",
}


def family_spec(name: str) -> tuple:
    """``FAMILY[name]`` as values: ((w, h), rate as (num, den) or None, ...)."""
    cont, vcodec, pix_fmt, size, rate, acodec, layout, arate, count, suffix = FAMILY[name].split()
    w, h = (int(n) for n in size.split("x"))
    return (cont, vcodec, pix_fmt, (w, h),
            None if rate == "vfr" else tuple(int(n) for n in rate.split("/")),
            None if acodec == "-" else acodec, None if layout == "-" else layout, int(arate),
            int(count), suffix)


def write_family_clip(path: Path, spec: tuple, seed: int) -> Path:
    """One clip of ``FAMILY``: a seeded pan over a bundled photo, and a tone per channel."""
    from fractions import Fraction

    import av

    container, vcodec, pix_fmt, (w, h), rate, acodec, layout, arate, count, _ = spec
    rng = np.random.default_rng(seed)
    frames = synthetic_frames(sample_rgb("coffee"), Motion(dx=int(rng.integers(1, 4)), dy=1),
                              count, (w, h))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(vcodec, rate=Fraction(*rate) if rate else 30)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if rate is None:  # variable: gaps of 33 to 100 ms on a millisecond time base
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        sound = out.add_stream(acodec, rate=arate, layout=layout) if acodec else None
        t_ms = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), "rgb24").reformat(format=pix_fmt)
            frame.pts = t_ms if rate is None else i
            t_ms += int(rng.choice([33, 40, 67, 100]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if sound is not None:
            ctx = sound.codec_context
            seconds = (t_ms / 1000 if rate is None else count * rate[1] / rate[0]) + 0.1
            t = np.arange(int(seconds * arate)) / arate
            channels = ctx.layout.nb_channels
            tones = np.stack([0.1 * np.sin(2 * np.pi * (220 + 110 * k) * t) for k in range(channels)])
            step = ctx.frame_size or 1024
            for start in range(0, tones.shape[1], step):
                chunk = tones[:, start:start + step]
                data = (chunk * 32767).astype(np.int16) if ctx.format.name.startswith("s16") else (
                    (chunk * 2**31 * 0.99).astype(np.int32) if ctx.format.name.startswith("s32")
                    else chunk.astype(np.float32))
                if not ctx.format.is_planar:
                    data = data.T.reshape(1, -1)
                audio = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=ctx.format.name,
                                                   layout=layout)
                audio.sample_rate, audio.pts = arate, start
                out.mux(sound.encode(audio))
            out.mux(sound.encode())
    return path


@pytest.mark.parametrize("name", list(FAMILY))
def test_a_family_of_codecs_rates_sizes_and_sound_layouts_round_trips(tmp_path: Path, name: str) -> None:
    """Our reader into our writer: every frame at its time, sides made even, the picture kept,
    and the sound with all its channels (copied or transcoded, as the output container takes)."""
    spec = family_spec(name)
    source = write_family_clip(tmp_path / f"in.{spec[0]}", spec, seed=list(FAMILY).index(name))
    out = tmp_path / f"out{spec[-1]}"
    copy_through(source, out)
    want, want_times = read_frames(source)
    got, times = read_frames(out)
    assert len(got) == len(want) == spec[8]
    assert np.allclose(times, want_times, atol=2e-3), (times, want_times)
    h, w = want[0].shape[:2]
    assert got[0].shape[:2] == (h - h % 2, w - w % 2)
    diffs = [np.abs(g.astype(int) - f[:g.shape[0], :g.shape[1]].astype(int)).mean()
             for g, f in zip(got, want, strict=True)]
    src, res = audio_info(source), audio_info(out)
    print(f"{name}: {w}x{h} -> {got[0].shape[1]}x{got[0].shape[0]}, {len(got)} frames, mean |diff| "
          f"min {min(diffs):.2f} median {np.median(diffs):.2f} worst {max(diffs):.2f}; sound {src} -> {res}")
    assert max(diffs) < 6, f"{name}: mean |diff| per frame worst {max(diffs):.2f}"
    if src is None:
        assert res is None
        return
    assert res is not None and res[1] == src[1], (src, res)
    assert abs(res[2] - src[2]) <= 2 / 24 + 0.03, (src, res)  # Opus pre-skip, AAC priming

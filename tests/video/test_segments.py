"""Long clips in segments: the joined result is the one-piece result's frames, timestamps and
sound; the seam between segments is no worse than a pair within one (warping error along the
exact flow of a synthetic pan, which the method never sees); an interrupted job resumes without
redoing finished segments, in-process and as Luigi tasks; segments run on two Luigi workers."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from video_clips import Motion, audio_info, pan_flows, read_frames, synthetic_frames, write_clip

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.run.inference import LocalPredictor
from neuralstyle.run.lineage import read_sidecar
from neuralstyle.video import metrics, segments
from neuralstyle.video.clips import stylize_video

pytestmark = pytest.mark.slow  # the registry fixture packages the real networks

SIZE = (160, 96)
FRAMES = 40
SEGMENT = 16  # 40 frames -> segments 0-15, 16-31, 32-39: two seams
# A family of seeded pans over different photos (exact flow known).
FAMILY = [("chelsea", Motion(dx=2, dy=1)), ("coffee", Motion(dx=-3, dy=0)),
          ("astronaut", Motion(dx=1, dy=-2))]


@pytest.fixture(scope="module")
def predictor(registry) -> LocalPredictor:
    return LocalPredictor(registry.model_uri, registry.tracking_uri)


def make_clip(folder: Path, photo: str, motion: Motion, frames: int = FRAMES) -> Path:
    return write_clip(folder / f"{photo}.mp4", synthetic_frames(sample_rgb(photo), motion,
                                                                frames, SIZE), audio=True)


class Counting:
    """A predictor that counts its calls and raises at call ``fail_at`` (an interruption)."""

    def __init__(self, inner: LocalPredictor, fail_at: int | None = None) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.model_uri = inner.model_uri
        self.lock = threading.Lock()

    def predict(self, frame: Any, params: dict[str, Any] | None = None) -> Any:
        with self.lock:
            self.calls += 1
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise RuntimeError("interrupted")
        return self.inner.predict(frame, params)


def test_plan_cuts_fixed_lengths_and_folds_a_short_tail() -> None:
    stamps = list(range(0, 4000, 100))
    pieces = segments.plan(stamps, SEGMENT)
    assert [(p.start, p.stop, p.warm) for p in pieces] == [(0, 16, 0), (16, 32, 8), (32, 40, 24)]
    assert pieces[1].start_pts == 1600 and pieces[1].warm_pts == 800
    assert pieces[-1].stop_pts is None and pieces[0].stop_pts == 1600
    assert [(p.start, p.stop) for p in segments.plan(stamps, 18)] == [(0, 18), (18, 40)]
    assert [(p.start, p.stop) for p in segments.plan(stamps, 10)] == [
        (0, 10), (10, 20), (20, 30), (30, 40)]
    assert len(segments.plan(stamps, 0)) == len(segments.plan(stamps, 40)) == 1
    assert len(segments.plan(None, 10)) == 1


def test_segmented_equals_one_piece_and_the_seam_does_not_show(predictor, registry,
                                                               tmp_path: Path) -> None:
    seams, within, agreement = [], [], []
    for photo, motion in FAMILY:
        clip = make_clip(tmp_path, photo, motion)
        whole = stylize_video(clip, tmp_path / f"{photo}-whole.mp4", "7", predictor,
                              {"max_size": max(SIZE)}, segment_frames=0)
        seen: dict[int, np.ndarray] = {}
        cut = stylize_video(clip, tmp_path / f"{photo}-cut.mp4", "7", predictor,
                            {"max_size": max(SIZE)}, segment_frames=SEGMENT,
                            on_frame=lambda i, x, s, o: seen.__setitem__(i, o),
                            tracking_uri=registry.tracking_uri)
        assert cut.frames == whole.frames == FRAMES and sorted(seen) == list(range(FRAMES))
        whole_frames, whole_times = read_frames(whole.output)
        cut_frames, cut_times = read_frames(cut.output)
        src_frames, src_times = read_frames(clip)
        assert len(cut_frames) == len(whole_frames) == len(src_frames) == FRAMES
        assert np.allclose(cut_times, whole_times) and np.allclose(cut_times, src_times)
        assert audio_info(cut.output) == audio_info(whole.output)
        assert audio_info(cut.output)[0] == "aac"
        assert read_sidecar(cut.output)["video"]["segments"] == 3
        assert not list(tmp_path.glob(f".{photo}-cut.mp4.segments-*"))  # joined, then removed

        # Warping error per pair along the exact flow, on the frames as stylized (before the
        # lossy encode); pair t is (t, t+1): the seams are pairs 15 and 31.
        inputs = synthetic_frames(sample_rgb(photo), motion, FRAMES, SIZE)
        outputs = [seen[i] for i in range(FRAMES)]
        errors = metrics.pair_errors(inputs, outputs, pan_flows(motion, FRAMES, SIZE))
        at = (SEGMENT - 1, 2 * SEGMENT - 1)
        inside = [e for t, e in enumerate(errors) if t not in at and e is not None
                  and t >= 2]  # the first pairs of the clip are the blend's own warm-up
        for t in at:
            seam = errors[t]
            assert seam is not None and seam <= max(inside), (photo, t, seam, max(inside))
            seams.append(seam / float(np.median(inside)))
            agreement.append(metrics.psnr(whole_frames[t + 1], cut_frames[t + 1]))
        within.append(round(float(np.median(inside)), 5))
    print(f"\nseam / median within-segment warping error: min {min(seams):.2f} "
          f"median {np.median(seams):.2f} worst {max(seams):.2f}; within: {within}; "
          f"first frame of segment 1 against the one-piece result: {agreement} dB")
    assert float(np.median(seams)) <= 1.5


def test_an_interrupted_job_resumes_without_redoing_finished_segments(predictor,
                                                                      tmp_path: Path) -> None:
    clip = make_clip(tmp_path, "chelsea", Motion(dx=2, dy=1))
    out = tmp_path / "resumed.mp4"
    stamps = list(range(FRAMES))
    pieces = segments.plan(stamps, 10)  # 0-9, 10-19, 20-29, 30-39
    broken = Counting(predictor, fail_at=25)  # segment 0 (10 calls) and 1 (10 + 8 warm) start
    with pytest.raises(RuntimeError, match="interrupted"):
        stylize_video(clip, out, "7", broken, {"max_size": max(SIZE)}, segment_frames=10)
    assert not out.exists()
    folders = list(tmp_path.glob(".resumed.mp4.segments-*"))
    assert len(folders) == 1
    done = sorted(p.name for p in folders[0].glob("*.mp4"))
    assert done == [f"{pieces[0].name}.mp4"], done  # only whole segments are committed
    assert not [p for p in folders[0].iterdir() if "luigi-tmp" in p.name]

    again = Counting(predictor)
    result = stylize_video(clip, out, "7", again, {"max_size": max(SIZE)}, segment_frames=10)
    redone = sum(p.stop - p.warm for p in pieces[1:])
    assert again.calls == redone == 3 * 18  # segment 0 is not stylized again
    assert result.frames == FRAMES and len(read_frames(out)[0]) == FRAMES
    assert audio_info(out)[0] == "aac" and not folders[0].exists()


def test_luigi_segments_resume_and_run_on_two_workers(registry, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import luigi

    from neuralstyle.video import clips
    from tasks.video import StylizeVideo, StylizeVideoSegment

    clip = make_clip(tmp_path, "coffee", Motion(dx=-3, dy=0))
    settings = {"image": str(clip), "tracking_uri": registry.tracking_uri,
                "model_uri": registry.model_uri, "max_size": max(SIZE), "segment_frames": 10}
    calls = {"n": 0}
    real_run = clips._Job.run

    def flaky(self: Any, index: int, small: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("interrupted")
        return real_run(self, index, small)

    monkeypatch.setattr(clips._Job, "run", flaky)
    out = tmp_path / "luigi.mp4"
    luigi.task_register.Register.clear_instance_cache()
    first = luigi.build([StylizeVideo(output_path=str(out), **settings)], local_scheduler=True,
                        workers=1, detailed_summary=True)
    assert first.status.name == "FAILED" and not out.exists()
    segment_tasks = [StylizeVideoSegment(output_path=str(out), segment=i, **settings)
                     for i in range(4)]
    assert [t.complete() for t in segment_tasks] == [True, False, False, False]

    calls["n"] = -10**6  # no more failures; count what the rerun stylizes
    luigi.task_register.Register.clear_instance_cache()
    second = luigi.build([StylizeVideo(output_path=str(out), **settings)], local_scheduler=True,
                         workers=1, detailed_summary=True)
    assert second.status.name == "SUCCESS"
    assert calls["n"] + 10**6 == 3 * 18  # segments 1-3 with their overlap, never segment 0
    assert len(read_frames(out)[0]) == FRAMES and audio_info(out)[0] == "aac"

    monkeypatch.setattr(clips._Job, "run", real_run)
    two = tmp_path / "two-workers.mp4"
    luigi.task_register.Register.clear_instance_cache()
    parallel = luigi.build([StylizeVideo(output_path=str(two), **settings)],
                           local_scheduler=True, workers=2, detailed_summary=True)
    assert parallel.status.name == "SUCCESS", parallel.summary_text
    frames, times = read_frames(two)
    assert len(frames) == FRAMES and np.allclose(times, read_frames(clip)[1])
    assert read_sidecar(two)["video"]["segments"] == 4

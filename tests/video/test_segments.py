"""Long clips in segments: the joined result is the one-piece result's frames, timestamps and
sound; the seam between segments is no worse than a pair within one (warping error along the
exact flow of a synthetic pan, which the method never sees); an interrupted job resumes without
redoing finished segments, in-process and as Luigi tasks; segments run on two Luigi workers
and on machines that share only S3."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s3_fixtures import aws_env, bucket, fresh_luigi, s3  # noqa: F401, F811
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
FAMILY = [("chelsea", Motion(dx=2, dy=1)), ("coffee", Motion(dx=3, dy=0)),
          ("astronaut", Motion(dx=1, dy=1))]


@pytest.fixture(scope="module")
def predictor(registry) -> LocalPredictor:
    return LocalPredictor(registry.model_uri, registry.tracking_uri)


def make_clip(folder: Path, photo: str, motion: Motion, frames: int = FRAMES) -> Path:
    return write_clip(folder / f"{photo}.mp4", synthetic_frames(sample_rgb(photo), motion,
                                                                frames, SIZE), audio=True)


def keep(into: dict[int, np.ndarray]) -> Any:
    """An ``on_frame`` hook keeping each output frame by its index."""
    return lambda index, _input, _alone, output: into.__setitem__(index, output)


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
    assert [(p.start, p.stop, p.warm) for p in segments.plan(stamps, SEGMENT, 8)] == [
        (0, 16, 0), (16, 32, 8), (32, 40, 24)]
    assert pieces[1].start_pts == 1600
    assert pieces[1].warm_pts == 100 * (16 - segments.SEGMENT_OVERLAP)
    assert pieces[-1].stop_pts is None and pieces[0].stop_pts == 1600
    assert [(p.start, p.stop) for p in segments.plan(stamps, 18)] == [(0, 18), (18, 40)]
    assert [(p.start, p.stop) for p in segments.plan(stamps, 10)] == [
        (0, 10), (10, 20), (20, 30), (30, 40)]
    assert len(segments.plan(stamps, 0)) == len(segments.plan(stamps, 40)) == 1
    assert len(segments.plan(None, 10)) == 1


def test_segmented_equals_one_piece_and_the_seam_does_not_show(predictor, registry,
                                                               tmp_path: Path) -> None:
    seams, against_whole, agreement = [], [], []
    for photo, motion in FAMILY:
        clip = make_clip(tmp_path, photo, motion)
        one: dict[int, np.ndarray] = {}
        whole = stylize_video(clip, tmp_path / f"{photo}-whole.mp4", "7", predictor,
                              {"max_size": max(SIZE)}, segment_frames=0,
                              on_frame=keep(one))
        seen: dict[int, np.ndarray] = {}
        cut = stylize_video(clip, tmp_path / f"{photo}-cut.mp4", "7", predictor,
                            {"max_size": max(SIZE)}, segment_frames=SEGMENT,
                            on_frame=keep(seen),
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
        flows = pan_flows(motion, FRAMES, SIZE)
        errors = metrics.pair_errors(inputs, outputs, flows)
        reference = metrics.pair_errors(inputs, [one[i] for i in range(FRAMES)], flows)
        at = (SEGMENT - 1, 2 * SEGMENT - 1)
        inside = [e for t, e in enumerate(errors) if t not in at and e is not None
                  and t >= 2]  # the first pairs of the clip are the blend's own warm-up
        for t in at:
            seam = errors[t]
            # No worse than the worst pair inside the segments, unless the one-piece result has
            # the same pair as high (the motion there, not the seam).
            assert seam is not None and seam <= 1.05 * max(*inside, reference[t]), (
                photo, t, seam, max(inside), reference[t])
            seams.append(seam / float(np.median(inside)))
            against_whole.append(seam / reference[t])
            agreement.append(metrics.psnr(whole_frames[t + 1], cut_frames[t + 1]))
            assert seam <= 1.15 * reference[t], (photo, t, seam, reference[t])
    print(f"\nseam / median within-segment warping error: min {min(seams):.2f} median "
          f"{np.median(seams):.2f} worst {max(seams):.2f}; seam / the same pair in one piece: "
          f"min {min(against_whole):.3f} median {np.median(against_whole):.3f} worst "
          f"{max(against_whole):.3f}; a segment's first frame against the one-piece result: "
          f"min {min(agreement):.1f} dB median {np.median(agreement):.1f} dB")
    assert float(np.median(against_whole)) <= 1.08


def test_an_interrupted_job_resumes_without_redoing_finished_segments(predictor,
                                                                      tmp_path: Path) -> None:
    clip = make_clip(tmp_path, "chelsea", Motion(dx=2, dy=1))
    out = tmp_path / "resumed.mp4"
    stamps = list(range(FRAMES))
    pieces = segments.plan(stamps, 10)  # 0-9, 10-19, 20-29, 30-39
    broken = Counting(predictor, fail_at=15)  # segment 0 (10 calls) done, segment 1 started
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
    assert again.calls == redone  # segment 0 is not stylized again
    assert result.frames == FRAMES and len(read_frames(out)[0]) == FRAMES
    assert audio_info(out)[0] == "aac" and not folders[0].exists()


def test_luigi_segments_resume_and_run_on_two_workers(registry, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import luigi

    from neuralstyle.video import clips
    from tasks.video import StylizeVideo, StylizeVideoSegment

    clip = make_clip(tmp_path, "coffee", Motion(dx=3, dy=0))
    settings = {"image": str(clip), "tracking_uri": registry.tracking_uri,
                "model_uri": registry.model_uri, "max_size": max(SIZE), "segment_frames": 10}
    calls = {"n": 0}
    real_run = clips._Job.run

    def flaky(self: Any, index: int, small: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 15:  # the first segment (10 frames) is done, the second is not
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
    done = [t.complete() for t in segment_tasks]
    # Luigi picks the order and goes on with the others after one fails: what was committed
    # stays, the failed one is not.
    assert 1 <= sum(done) < len(done), done
    pieces = segments.plan(list(range(FRAMES)), 10)

    calls["n"] = -10**6  # no more failures; count what the rerun stylizes
    luigi.task_register.Register.clear_instance_cache()
    second = luigi.build([StylizeVideo(output_path=str(out), **settings)], local_scheduler=True,
                         workers=1, detailed_summary=True)
    assert second.status.name == "SUCCESS"
    # The other segments with their overlap, never the committed one.
    assert calls["n"] + 10**6 == sum(p.stop - p.warm for p, d in zip(pieces, done, strict=True)
                                     if not d)
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


def test_workers_on_machines_sharing_only_s3_share_the_segments(
        registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: Any,  # noqa: F811
        bucket: str) -> None:  # noqa: F811
    """Three "machines" (each its own working folder: its own download of the clip, its own
    segment folder) and one S3 bucket: two each commit a segment to ``segments_uri``; the third
    runs the clip, stylizes only the segment nobody did, joins, and clears the shared ones."""
    import luigi

    from neuralstyle.video import clips
    from tasks.video import StylizeVideo, StylizeVideoSegment

    frames = 30  # segments 0-9, 10-19, 20-29
    clip = make_clip(tmp_path, "astronaut", Motion(dx=1, dy=1), frames=frames)
    s3.upload_file(str(clip), bucket, "clips/astronaut.mp4")
    settings = {"image": f"s3://{bucket}/clips/astronaut.mp4", "max_size": max(SIZE),
                "tracking_uri": registry.tracking_uri, "model_uri": registry.model_uri,
                "segment_frames": 10, "segments_uri": f"s3://{bucket}/work/",
                "output_path": "out/astronaut-7.mp4"}  # relative: each machine its own
    calls = {"n": 0}
    real_run = clips._Job.run

    def counted(self: Any, index: int, small: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return real_run(self, index, small)

    monkeypatch.setattr(clips._Job, "run", counted)

    def on_machine(number: int, task: luigi.Task) -> Any:
        machine = tmp_path / f"machine-{number}"
        machine.mkdir()
        monkeypatch.chdir(machine)
        luigi.task_register.Register.clear_instance_cache()
        return luigi.build([task], local_scheduler=True, workers=1, detailed_summary=True)

    for number in (0, 1):
        done = on_machine(number, StylizeVideoSegment(segment=number, **settings))
        assert done.status.name == "SUCCESS", done.summary_text
    shared = sorted(item["Key"] for item in
                    s3.list_objects_v2(Bucket=bucket, Prefix="work/").get("Contents", []))
    print("committed to S3:", shared)
    assert len([k for k in shared if k.endswith(".mp4")]) == 2 and len(shared) == 4, shared

    calls["n"] = 0
    joined = on_machine(2, StylizeVideo(**settings))
    assert joined.status.name == "SUCCESS", joined.summary_text
    pieces = segments.plan(list(range(frames)), 10)
    assert calls["n"] == pieces[2].stop - pieces[2].warm  # only the segment nobody had done
    out = tmp_path / "machine-2" / "out" / "astronaut-7.mp4"
    got, times = read_frames(out)
    assert len(got) == frames and np.allclose(times, read_frames(clip)[1])
    assert audio_info(out)[0] == "aac" and read_sidecar(out)["video"]["segments"] == 3
    assert s3.list_objects_v2(Bucket=bucket, Prefix="work/").get("KeyCount", 0) == 0

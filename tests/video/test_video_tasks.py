"""The Luigi video tasks on moto's S3: a clip from S3, a result published to S3 with its lineage,
a batch over a prefix (other files skipped), force, a bad clip failing only its own task."""

# Fixtures imported from s3_fixtures come back as test parameters of the same name:
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import aws_env, bucket, fresh_luigi, run, s3  # noqa: F401
from video_clips import Motion, audio_info, read_frames, synthetic_frames, write_clip

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.run.lineage import read_sidecar, sha256_bytes
from tasks.video import PublishStylizedVideo, StylizeVideo, StylizeVideoBatch

pytestmark = pytest.mark.slow  # the registry fixture packages the real networks

SIZE = (128, 80)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch folder: downloads (data/) and default outputs (out/) land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def clip_bytes(tmp_path: Path, photo: str, frames: int = 5) -> bytes:
    path = write_clip(tmp_path / f"{photo}-src.mp4",
                      synthetic_frames(sample_rgb(photo), Motion(dx=2, dy=1), frames, SIZE),
                      audio=True)
    return path.read_bytes()


def settings(registry: Any) -> dict[str, Any]:
    return {"tracking_uri": registry.tracking_uri, "model_uri": registry.model_uri,
            "max_size": max(SIZE)}


def test_a_clip_from_s3_is_stylized_and_published_to_s3(registry, s3, bucket, workdir) -> None:
    s3.put_object(Bucket=bucket, Key="in/dog.mp4", Body=clip_bytes(workdir, "chelsea"))
    local = StylizeVideo(image=f"s3://{bucket}/in/dog.mp4", **settings(registry))
    assert run(local).status.name == "SUCCESS"
    out = Path(local.output_file())
    assert out == Path("out/dog-7.mp4") and out.exists()
    frames, _ = read_frames(out)
    assert len(frames) == 5 and audio_info(out)[0] == "aac"
    assert read_sidecar(out)["input"]["uri"] == f"s3://{bucket}/in/dog.mp4"

    publish = PublishStylizedVideo(image=f"s3://{bucket}/in/dog.mp4",
                                   s3_path=f"s3://{bucket}/out/dog-7.webm", **settings(registry))
    assert run(publish).status.name == "SUCCESS"
    body = s3.get_object(Bucket=bucket, Key="out/dog-7.webm")
    data = body["Body"].read()
    assert body["Metadata"]["output-sha256"] == sha256_bytes(data)
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # a Matroska/WebM header
    assert not list(Path("out").rglob("*luigi-tmp*"))


def test_a_batch_over_a_prefix_skips_other_files_and_a_bad_clip_fails_alone(
        registry, s3, bucket, workdir) -> None:
    for name, photo in (("a.mp4", "coffee"), ("sub/b.mov", "rocket")):
        s3.put_object(Bucket=bucket, Key=f"clips/{name}", Body=clip_bytes(workdir, photo, 4))
    s3.put_object(Bucket=bucket, Key="clips/README.txt", Body=b"notes")
    s3.put_object(Bucket=bucket, Key="clips/broken.mp4", Body=b"not a video")
    batch = StylizeVideoBatch(images=f"s3://{bucket}/clips/", results=f"s3://{bucket}/styled/",
                              temporal=0.5, **settings(registry))
    result = run(batch)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="styled/")
                  .get("Contents", []))
    assert keys == ["styled/a-7.mp4", "styled/sub/b-7.mp4"], keys
    assert result.status.name != "SUCCESS"  # broken.mp4 failed, alone
    assert "broken.mp4" in result.summary_text
    record = read_sidecar(Path("out") / bucket / "styled" / "a-7.mp4")
    assert record["params"]["temporal"] == 0.5

    local = Path("out") / bucket / "styled" / "a-7.mp4"
    before = local.stat().st_mtime_ns
    again = StylizeVideoBatch(images=f"s3://{bucket}/clips/", results=f"s3://{bucket}/styled/",
                              temporal=0.5, force=True, **settings(registry))
    run(again)
    assert local.stat().st_mtime_ns != before  # force stylized it again

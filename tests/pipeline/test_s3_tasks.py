"""S3 tasks and helpers on moto's in-process S3: downloads, uploads, errors, forced reruns."""

# Fixtures imported from s3_fixtures come back as test parameters of the same name:
# ruff: noqa: F811

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import boto3
import luigi
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.response import StreamingBody
from luigi.contrib.s3 import S3Target
from luigi.execution_summary import LuigiStatusCode
from s3_fixtures import (  # noqa: F401  (fixtures are found by name)
    S3Hooks,
    aws_env,
    bucket,
    error_response,
    fresh_luigi,
    run,
    s3,
    s3_hooks,
)

from tasks import (
    ForceableTask,
    S3Download,
    S3FileExists,
    S3ObjectTarget,
    S3Upload,
    SuffixAtomicLocalTarget,
    download_s3_object,
    parse_s3_uri,
    s3_client,
    stat_s3_object,
    upload_file_atomic,
)

PHOTO = bytes(range(256)) * 400  # 100 KiB of something that is not all one byte


def leftovers(folder: Path) -> list[Path]:
    """Temporary files a failed write would leave behind."""
    return [p for p in folder.rglob("*") if "luigi-tmp" in p.name]


# ---------------------------------------------------------------- URIs and local paths


def test_parse_s3_uri_keeps_the_key_verbatim() -> None:
    assert parse_s3_uri("s3://photos/a/b c?.jpg#1") == ("photos", "a/b c?.jpg#1")
    assert parse_s3_uri("s3://photos", allow_empty_key=True) == ("photos", "")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("https://photos/cat.jpg", "is not an S3 URI"),
        ("photos/cat.jpg", "is not an S3 URI"),
        ("s3:///cat.jpg", "has no bucket"),
        ("s3://photos", "names a bucket, not an object"),
        ("s3://photos/", "names a bucket, not an object"),
        ("s3://my photos/cat.jpg", "is not a valid S3 bucket name"),
    ],
)
def test_parse_s3_uri_errors_name_the_uri(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_s3_uri(uri)
    assert uri in str(info.value)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("../../etc/passwd", "contains '..'"),
        ("a/../../escape.jpg", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("a//b.jpg", "empty or '.' segments"),
        ("a/./b.jpg", "empty or '.' segments"),
        ("folder/", "names a folder"),
    ],
)
def test_download_refuses_keys_that_escape_data_root(
    tmp_path: Path, key: str, problem: str
) -> None:
    uri = f"s3://photos/{key}"
    with pytest.raises(ValueError, match=problem) as info:
        S3Download(s3_path=uri, data_root=str(tmp_path / "data"))
    assert uri in str(info.value)
    assert not (tmp_path / "data").exists()


def test_an_awkward_key_can_still_be_downloaded_to_a_chosen_path(
    bucket: str, tmp_path: Path
) -> None:
    moto = boto3.client("s3")
    moto.put_object(Bucket=bucket, Key="../up.jpg", Body=PHOTO)
    dest = tmp_path / "chosen.jpg"
    result = run(S3Download(s3_path=f"s3://{bucket}/../up.jpg", local_path=str(dest)))
    assert result.status == LuigiStatusCode.SUCCESS
    assert dest.read_bytes() == PHOTO
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen.jpg"]


# ---------------------------------------------------------------- downloads


def test_download_mirrors_the_key_under_data_root(s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=PHOTO)
    task = S3Download(s3_path=f"s3://{bucket}/in/cat.jpg", data_root=str(tmp_path))
    result = run(task)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    dest = tmp_path / bucket / "in" / "cat.jpg"
    assert task.output().path == str(dest)
    assert isinstance(task.output(), SuffixAtomicLocalTarget)
    assert dest.read_bytes() == PHOTO
    assert leftovers(tmp_path) == []


def test_download_of_a_missing_key_waits_for_it_and_writes_nothing(
    bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"s3://{bucket}/nope.jpg"
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    # A missing input is an external dependency that is not there (yet): Luigi's own status.
    assert result.status == LuigiStatusCode.MISSING_EXT
    assert f"S3FileExists(path={uri})" in result.summary_text
    assert f"{uri} does not exist" in caplog.text
    assert list(tmp_path.rglob("*")) == []
    with pytest.raises(FileNotFoundError, match=f"^{uri} does not exist$"):
        download_s3_object(uri, tmp_path / "nope.jpg")
    assert list(tmp_path.rglob("*")) == []


def test_download_from_a_missing_bucket_says_so(
    s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = "s3://no-such-bucket/cat.jpg"
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    assert result.status != LuigiStatusCode.SUCCESS
    message = f"{uri}: bucket 'no-such-bucket' does not exist"
    assert message in caplog.text
    with pytest.raises(FileNotFoundError, match=message):
        download_s3_object(uri, tmp_path / "cat.jpg")
    assert list(tmp_path.rglob("*")) == []


def test_access_denied_on_metadata_is_clear(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    s3_hooks.on("before-call.s3.HeadObject", lambda **_: error_response(403, "403", "Forbidden"))
    uri = f"s3://{bucket}/cat.jpg"
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    assert result.status != LuigiStatusCode.SUCCESS
    assert f"access denied to {uri}" in caplog.text
    with pytest.raises(PermissionError, match=f"access denied to {uri}"):
        download_s3_object(uri, tmp_path / "cat.jpg")
    assert list(tmp_path.rglob("*")) == []


def test_access_denied_on_the_download_itself_leaves_no_file(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    s3_hooks.on(
        "before-call.s3.GetObject", lambda **_: error_response(403, "AccessDenied", "Access Denied")
    )
    uri = f"s3://{bucket}/cat.jpg"
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    assert result.status == LuigiStatusCode.FAILED
    assert f"access denied to {uri} (downloading to {tmp_path}/{bucket}/cat.jpg)" in caplog.text
    assert list(tmp_path.rglob("*.jpg")) == []
    assert leftovers(tmp_path) == []


class _CutOffBody(io.RawIOBase):
    """A response body that delivers the first half of the object, then fails or just ends."""

    def __init__(self, data: bytes, fail: bool) -> None:
        self._data = io.BytesIO(data[: len(data) // 2])
        self._fail = fail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._data.readinto(buffer)
        if n == 0 and self._fail:
            raise RuntimeError("connection reset by peer (simulated)")
        return n


def _cut_off(fail: bool):  # noqa: ANN202
    def handler(parsed: dict[str, Any], **_: Any) -> None:
        body = parsed["Body"].read()
        half = _CutOffBody(body, fail)
        parsed["Body"] = StreamingBody(io.BufferedReader(half), len(body) // 2)

    return handler


def test_a_download_cut_off_midway_leaves_no_partial_file(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    s3_hooks.on("after-call.s3.GetObject", _cut_off(fail=True))
    result = run(S3Download(s3_path=f"s3://{bucket}/cat.jpg", data_root=str(tmp_path)))
    assert result.status == LuigiStatusCode.FAILED
    assert "connection reset by peer (simulated)" in caplog.text
    assert list(tmp_path.rglob("*.jpg")) == []
    # An earlier good copy survives a failed re-download untouched.
    dest = tmp_path / "keep.jpg"
    dest.write_bytes(b"earlier good copy")
    with pytest.raises(RuntimeError, match="simulated"):
        download_s3_object(f"s3://{bucket}/cat.jpg", dest)
    assert dest.read_bytes() == b"earlier good copy"
    assert leftovers(tmp_path) == []


def test_a_short_download_is_caught_by_the_size_check(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    s3_hooks.on("after-call.s3.GetObject", _cut_off(fail=False))  # ends early, no error
    uri = f"s3://{bucket}/cat.jpg"
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    assert result.status == LuigiStatusCode.FAILED
    expected = (
        f"{uri}: downloaded {len(PHOTO) // 2} bytes but S3 reports ContentLength {len(PHOTO)}"
    )
    assert expected in caplog.text
    assert list(tmp_path.rglob("*.jpg")) == []
    assert leftovers(tmp_path) == []


def test_large_download_drives_a_progress_bar(
    s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setattr("tasks.base.PROGRESS_MIN_BYTES", 1024)
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    download_s3_object(f"s3://{bucket}/cat.jpg", tmp_path / "cat.jpg")
    assert "cat.jpg" in capsys.readouterr().err  # tqdm writes to stderr
    assert (tmp_path / "cat.jpg").read_bytes() == PHOTO


# ---------------------------------------------------------------- S3FileExists


def test_s3_file_exists_means_the_object_not_a_prefix(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="in/cat.jpg", Body=PHOTO)
    assert S3FileExists(path=f"s3://{bucket}/in/cat.jpg").complete()
    assert not S3FileExists(path=f"s3://{bucket}/in/dog.jpg").complete()
    # "in" is only a prefix: Luigi's S3Target calls it existing, a download would then fail.
    assert S3Target(f"s3://{bucket}/in", client=s3_client()).exists()
    assert not S3FileExists(path=f"s3://{bucket}/in").complete()
    assert isinstance(S3FileExists(path=f"s3://{bucket}/in").output(), S3Target)


def test_real_s3_head_errors_carry_only_a_status(s3: Any, bucket: str, s3_hooks: S3Hooks) -> None:
    """Real S3 answers HEAD with a bare 404 for a missing key and a missing bucket alike (moto
    says NoSuchBucket); the bucket is then asked about separately."""
    s3_hooks.on("before-call.s3.HeadObject", lambda **_: error_response(404, "404", "Not Found"))
    assert stat_s3_object(f"s3://{bucket}/cat.jpg") is None
    with pytest.raises(
        FileNotFoundError, match="s3://other/cat.jpg: bucket 'other' does not exist"
    ):
        stat_s3_object("s3://other/cat.jpg")


def test_stat_s3_object_reports_size(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    assert stat_s3_object(f"s3://{bucket}/cat.jpg")["ContentLength"] == len(PHOTO)
    assert stat_s3_object(f"s3://{bucket}/dog.jpg") is None


# ---------------------------------------------------------------- force


def test_force_downloads_again(s3: Any, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/cat.jpg"
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=b"version 1")
    assert run(S3Download(s3_path=uri, data_root=str(tmp_path))).status == LuigiStatusCode.SUCCESS
    dest = tmp_path / bucket / "cat.jpg"
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=b"version 2")

    result = run(S3Download(s3_path=uri, data_root=str(tmp_path)))
    assert result.status == LuigiStatusCode.SUCCESS
    assert "complete ones were encountered" in result.summary_text
    assert dest.read_bytes() == b"version 1"  # done already: not downloaded again

    forced = S3Download(s3_path=uri, data_root=str(tmp_path), force=True)
    assert forced.task_id == S3Download(s3_path=uri, data_root=str(tmp_path)).task_id
    assert run(forced).status == LuigiStatusCode.SUCCESS
    assert dest.read_bytes() == b"version 2"


class ManyOutputs(ForceableTask):
    """A local file, a local folder and an S3 object; counts its runs."""

    root = luigi.Parameter()
    s3_key = luigi.Parameter()
    runs: list[dict[str, bool]] = []

    def output(self) -> list[luigi.Target]:
        return [
            SuffixAtomicLocalTarget(f"{self.root}/result.json"),
            luigi.LocalTarget(f"{self.root}/tiles"),
            S3ObjectTarget(self.s3_key, client=s3_client()),
        ]

    def run(self) -> None:
        file, folder, obj = self.output()
        ManyOutputs.runs.append(
            {"file": file.exists(), "folder": folder.exists(), "s3": obj.exists()}
        )
        with file.open("w") as fh:
            fh.write("{}")
        Path(folder.path).mkdir()
        Path(folder.path, "tile-0.png").write_bytes(b"tile")
        upload_file_atomic(file.path, self.s3_key)


def test_force_removes_every_kind_of_output_then_runs_again(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    ManyOutputs.runs = []
    params = {"root": str(tmp_path), "s3_key": f"s3://{bucket}/out/result.json"}
    assert run(ManyOutputs(**params)).status == LuigiStatusCode.SUCCESS
    stray = tmp_path / "tiles" / "stale.png"
    stray.write_bytes(b"from an older run")
    assert run(ManyOutputs(**params)).status != LuigiStatusCode.FAILED
    assert len(ManyOutputs.runs) == 1  # complete: not run again

    assert run(ManyOutputs(**params, force=True)).status == LuigiStatusCode.SUCCESS
    assert ManyOutputs.runs == [{"file": False, "folder": False, "s3": False}] * 2
    assert not stray.exists()  # the whole folder went
    assert (tmp_path / "tiles" / "tile-0.png").exists()
    assert s3.get_object(Bucket=bucket, Key="out/result.json")["Body"].read() == b"{}"


class UsesDownload(luigi.Task):
    """A downstream task passing --force to its download, as Stylize does."""

    uri = luigi.Parameter()
    root = luigi.Parameter()
    force = luigi.BoolParameter(significant=False)

    def requires(self) -> S3Download:
        return S3Download(s3_path=self.uri, data_root=self.root, force=self.force)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(f"{self.root}/used.txt")

    def run(self) -> None:
        data = Path(self.input().path).read_bytes()
        with self.output().open("w") as fh:
            fh.write(str(len(data)))


def test_force_is_applied_once_per_instance(s3: Any, bucket: str, tmp_path: Path) -> None:
    """Luigi calls complete() again after the download ran (downstream dependency check,
    check_complete_on_run): the fresh file must survive those calls."""
    uri = f"s3://{bucket}/cat.jpg"
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    (tmp_path / bucket).mkdir()
    (tmp_path / bucket / "cat.jpg").write_bytes(b"stale")
    task = UsesDownload(uri=uri, root=str(tmp_path), force=True)
    result = run(task)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert (tmp_path / "used.txt").read_text() == str(len(PHOTO))
    download = task.requires()
    assert download.complete() and download.complete()  # later checks do not delete it
    assert (tmp_path / bucket / "cat.jpg").read_bytes() == PHOTO


@pytest.mark.parametrize(
    "how",
    [{"workers": 2}, {"workers": 2, "parallel_scheduling": True}],
    ids=["task-processes", "parallel-scheduling"],
)
def test_force_with_several_processes(
    s3: Any, bucket: str, tmp_path: Path, how: dict[str, Any]
) -> None:
    """Forked task processes and a scheduling pool (which pickles tasks back) still force once."""
    uri = f"s3://{bucket}/cat.jpg"
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    (tmp_path / bucket).mkdir()
    (tmp_path / bucket / "cat.jpg").write_bytes(b"stale")
    task = UsesDownload(uri=uri, root=str(tmp_path), force=True)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True, **how)
    assert result.status == LuigiStatusCode.SUCCESS, result.summary_text
    assert (tmp_path / bucket / "cat.jpg").read_bytes() == PHOTO


def test_a_failed_forced_download_leaves_nothing_behind(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/cat.jpg"
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    assert run(S3Download(s3_path=uri, data_root=str(tmp_path))).status == LuigiStatusCode.SUCCESS
    s3_hooks.on("after-call.s3.GetObject", _cut_off(fail=True))
    result = run(S3Download(s3_path=uri, data_root=str(tmp_path), force=True))
    assert result.status == LuigiStatusCode.FAILED
    assert list(tmp_path.rglob("*.jpg")) == []  # the old copy was forced away, no partial new one


# ---------------------------------------------------------------- uploads


def test_upload_task_publishes_once_and_force_replaces(
    s3: Any, bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "result.jpg"
    local.write_bytes(b"first")
    uri = f"s3://{bucket}/results/result.jpg"
    assert run(S3Upload(local_path=str(local), s3_path=uri)).status == LuigiStatusCode.SUCCESS
    head = s3.head_object(Bucket=bucket, Key="results/result.jpg")
    assert head["ContentType"] == "image/jpeg"
    local.write_bytes(b"second")
    run(S3Upload(local_path=str(local), s3_path=uri))
    assert s3.get_object(Bucket=bucket, Key="results/result.jpg")["Body"].read() == b"first"
    assert (
        run(S3Upload(local_path=str(local), s3_path=uri, force=True)).status
        == LuigiStatusCode.SUCCESS
    )
    assert s3.get_object(Bucket=bucket, Key="results/result.jpg")["Body"].read() == b"second"


def test_upload_of_a_missing_local_file_names_it(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to upload to s3://photos/x.jpg"):
        upload_file_atomic(tmp_path / "missing.jpg", "s3://photos/x.jpg")
    result = run(S3Upload(local_path=str(tmp_path / "missing.jpg"), s3_path="s3://photos/x.jpg"))
    assert result.status == LuigiStatusCode.MISSING_EXT


def test_upload_to_a_missing_bucket_names_it(s3: Any, tmp_path: Path) -> None:
    local = tmp_path / "a.jpg"
    local.write_bytes(b"x")
    with pytest.raises(
        FileNotFoundError, match="s3://nobucket/a.jpg: bucket 'nobucket' does not exist"
    ):
        upload_file_atomic(local, "s3://nobucket/a.jpg")


def _fail_on_part(number: int):  # noqa: ANN202
    def handler(params: dict[str, Any], **_: Any) -> None:
        if params.get("PartNumber") == number:
            raise ConnectionResetError(f"connection lost while sending part {number} (simulated)")

    return handler


def test_a_failed_multipart_upload_never_exposes_a_partial_object(
    s3: Any, bucket: str, s3_hooks: S3Hooks, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.bin", Body=b"previous version")
    local = tmp_path / "big.bin"
    local.write_bytes(b"n" * (11 * 1024 * 1024))  # three 5 MiB parts
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    s3_hooks.on("before-parameter-build.s3.UploadPart", _fail_on_part(2))

    with pytest.raises(ConnectionResetError, match="part 2"):
        upload_file_atomic(local, f"s3://{bucket}/big.bin", config=config)
    with pytest.raises(ConnectionResetError, match="part 2"):
        upload_file_atomic(local, f"s3://{bucket}/new.bin", config=config)

    # Readers still see the previous object, the new key never appeared, and s3transfer
    # aborted the multipart uploads (no parts left behind).
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == b"previous version"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="new.bin")
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_a_multipart_upload_completes_as_one_object(s3: Any, bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB
    local.write_bytes(data)
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    upload_file_atomic(local, f"s3://{bucket}/big.bin", config=config)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts, one object
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data


# ---------------------------------------------------------------- endpoint and credentials


def test_s3_client_endpoint_comes_from_the_environment(aws_env: None, monkeypatch: Any) -> None:
    # boto3 itself honours AWS_ENDPOINT_URL_S3 (botocore >= 1.31) ...
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:5999")
    assert boto3.client("s3").meta.endpoint_url == "http://127.0.0.1:5999"
    assert s3_client().s3.meta.client.meta.endpoint_url == "http://127.0.0.1:5999"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5998")
    assert s3_client().s3.meta.client.meta.endpoint_url == "http://127.0.0.1:5998"


@pytest.fixture
def s3_config_endpoint() -> Any:
    """Set ``[s3] endpoint_url`` in Luigi's (process-wide) config for one test."""
    config = luigi.configuration.get_config()
    added_section = not config.has_section("s3")
    if added_section:
        config.add_section("s3")
    config.set("s3", "endpoint_url", "http://127.0.0.1:5997")
    yield "http://127.0.0.1:5997"
    config.remove_option("s3", "endpoint_url")
    if added_section:
        config.remove_section("s3")


def test_luigi_s3_config_endpoint_is_used_and_the_environment_wins(
    aws_env: None, s3_config_endpoint: str, monkeypatch: Any
) -> None:
    assert s3_client().s3.meta.client.meta.endpoint_url == s3_config_endpoint
    # Luigi passes [s3] options as arguments, which would beat the environment in boto3 alone:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:5999")
    assert luigi.contrib.s3.S3Client().s3.meta.client.meta.endpoint_url == s3_config_endpoint
    assert s3_client().s3.meta.client.meta.endpoint_url == "http://127.0.0.1:5999"


def test_no_client_and_no_network_until_first_use(aws_env: None, monkeypatch: Any) -> None:
    monkeypatch.setattr(boto3, "resource", lambda *a, **k: pytest.fail("boto3 used too early"))
    S3Download(s3_path="s3://photos/cat.jpg").output()
    S3FileExists(path="s3://photos/cat.jpg").output()
    s3_client()


def test_download_logs_what_it_did(
    s3: Any, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s3.put_object(Bucket=bucket, Key="cat.jpg", Body=PHOTO)
    download_s3_object(f"s3://{bucket}/cat.jpg", tmp_path / "cat.jpg")
    assert (
        f"downloaded s3://{bucket}/cat.jpg to {tmp_path}/cat.jpg ({len(PHOTO)} bytes)"
        in caplog.text
    )


def test_packaging_fetches_an_s3_checkpoint_whole_or_not_at_all(s3: Any, bucket: str,
                                                                  tmp_path: Path) -> None:
    """``package_models.py --checkpoint s3://...`` downloads with boto3 alone (the library
    imports nothing from the pipeline); a missing key names itself and leaves no file."""
    from neuralstyle.builder.weights import fetch as resolve_checkpoint

    s3.put_object(Bucket=bucket, Key="nets/candy.pth", Body=b"weights" * 1000)
    got = resolve_checkpoint(f"s3://{bucket}/nets/candy.pth", tmp_path)
    assert got == tmp_path / "checkpoints" / "candy.pth"
    assert got.read_bytes() == b"weights" * 1000
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/nets/gone.pth does not exist"):
        resolve_checkpoint(f"s3://{bucket}/nets/gone.pth", tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["candy.pth"]

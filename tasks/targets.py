"""Luigi targets and S3 plumbing shared by the pipeline tasks.

``SuffixAtomicLocalTarget`` is a ``luigi.LocalTarget`` whose atomic writes keep the file suffix
and never leave a temporary file behind (Luigi's own ``temporary_path`` names the temporary
``photo.jpg-luigi-tmp-123`` and leaks it when the block raises: luigi issue #3128).

``s3_client()`` builds Luigi's ``S3Client`` (boto3 underneath, created lazily on first use,
credentials from boto3's default chain only); ``parse_s3_uri`` splits ``s3://bucket/key``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from typing import Any

import luigi
from botocore.exceptions import ClientError
from luigi.contrib.s3 import S3Client, S3Target
from luigi.local_target import atomic_file

from neuralstyle.atomic import atomic_path, temporary_sibling

# botocore (>= 1.31) already reads these, but Luigi passes ``[s3] endpoint_url`` from luigi.cfg
# as an explicit argument, which beats the environment; we let the per-run variable win.
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

# Loose on purpose: legacy us-east-1 buckets may hold upper case and underscores.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")


class _SuffixAtomicFile(atomic_file):
    """Luigi's ``atomic_file``, keeping the suffix and removing the temporary when a write fails.

    Luigi's version only deletes its temporary in ``__del__`` (whenever the garbage collector
    gets to it, which a traceback can delay) and names it ``<path>-luigi-tmp-<n>``.
    """

    def generate_tmp_path(self, path: str) -> str:
        return str(temporary_sibling(path))

    def close(self) -> None:
        if self.closed:  # a second close must not try to move a file that is already in place
            return
        try:
            super().close()  # flush, close, os.replace onto the final path
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Close without publishing and delete the temporary."""
        if not self.closed:
            with contextlib.suppress(OSError, ValueError):
                io.BufferedWriter.close(self)
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp_path)

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is not None:
            self.abort()
            return None
        self.close()
        return None


class SuffixAtomicLocalTarget(luigi.LocalTarget):
    """A LocalTarget whose ``temporary_path()`` and ``open('w')`` keep the suffix and never leak.

    Both write to ``<stem>-luigi-tmp-<n><suffix>`` in the destination's folder (so Pillow,
    onnx... infer the format, and the final rename stays on one filesystem), rename onto the
    destination on success and delete the temporary on any exception.
    """

    @contextlib.contextmanager
    def temporary_path(self) -> Iterator[str]:  # type: ignore[override]
        """Yield a temporary sibling path; it becomes ``self.path`` only if the block succeeds."""
        with atomic_path(self.path) as tmp:
            yield str(tmp)

    def open(self, mode: str = "r") -> Any:
        """Like LocalTarget.open; writes go to a suffix-keeping temporary that a failure removes."""
        if mode.replace("b", "").replace("t", "") == "w":
            self.makedirs()
            return self.format.pipe_writer(_SuffixAtomicFile(self.path))
        return super().open(mode)


def _env_endpoint() -> str | None:
    """The S3 endpoint from the environment, unless boto3 is told to ignore configured endpoints."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_client(**options: Any) -> S3Client:
    """Luigi's S3Client, aimed at the endpoint in the environment or in ``[s3] endpoint_url``.

    Precedence: explicit ``endpoint_url`` option > environment > luigi.cfg ``[s3]`` > AWS config
    file > AWS itself. Credentials are never passed here: boto3's default chain finds them.
    No network and no boto3 client until the first S3 call (``S3Client.s3`` is lazy).
    """
    endpoint = _env_endpoint()
    if endpoint and "endpoint_url" not in options:
        options["endpoint_url"] = endpoint
    return S3Client(**options)


def parse_s3_uri(uri: str, *, allow_empty_key: bool = False) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``, naming the URI and the problem on error.

    The key is kept verbatim (``?`` and ``#`` are legal in S3 keys, so no URL parsing).
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri} has no bucket: expected s3://bucket/key")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{uri}: {bucket!r} is not a valid S3 bucket name "
            "(3-255 letters, digits, '.', '-', '_'; starting and ending with a letter or digit)"
        )
    if not key and not allow_empty_key:
        raise ValueError(f"{uri} names a bucket, not an object: expected s3://{bucket}/path/to/key")
    return bucket, key


def _error_code(err: ClientError) -> tuple[str, int | None, str]:
    """(code, HTTP status, message) of a botocore ClientError; HEAD errors carry only a status."""
    error = err.response.get("Error", {})
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), status, str(error.get("Message", ""))


def s3_error(err: ClientError, uri: str, action: str) -> OSError:
    """Turn a botocore ClientError into an error that names the S3 URI and the likely fix."""
    code, status, message = _error_code(err)
    bucket = uri[len("s3://") :].partition("/")[0]
    if code == "NoSuchBucket":
        return FileNotFoundError(f"{uri}: bucket {bucket!r} does not exist ({action})")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return FileNotFoundError(f"{uri} does not exist ({action})")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
        return PermissionError(
            f"access denied to {uri} ({action}): check the credentials boto3 finds "
            "(AWS_PROFILE, AWS_ACCESS_KEY_ID, instance role) and the bucket policy"
        )
    detail = f"{code} {message}".strip() or f"HTTP {status}"
    return OSError(f"{action} {uri} failed: {detail}")


def boto3_s3(client: Any | None = None) -> Any:
    """The boto3 S3 client to use: the one given, else a fresh one from ``s3_client()``."""
    return client if client is not None else s3_client().s3.meta.client


def stat_s3_object(uri: str, *, client: Any | None = None) -> dict[str, Any] | None:
    """HEAD ``uri``: the response (ContentLength, ETag, ...) or None if no such key.

    A missing bucket or a denied request raises (FileNotFoundError / PermissionError naming the
    URI) rather than reading as "not there yet": waiting would never fix either.
    ``client`` is a boto3 S3 client; default: ``s3_client()``'s.
    """
    bucket, key = parse_s3_uri(uri)
    s3 = boto3_s3(client)
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code, status, _ = _error_code(err)
        if code not in ("NoSuchKey", "404", "NotFound") and status != 404:
            raise s3_error(err, uri, "reading its metadata") from err
        # HEAD says only "404" for a missing key and a missing bucket alike: ask the bucket.
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as bucket_err:
            _, bucket_status, _ = _error_code(bucket_err)
            if bucket_status == 404:
                raise FileNotFoundError(f"{uri}: bucket {bucket!r} does not exist") from err
        return None


class S3ObjectTarget(S3Target):
    """An S3Target that exists only as an object (not as a "folder" prefix), with clear errors.

    Luigi's S3Target.exists() is also true for a prefix with objects under it and raises a bare
    botocore NoSuchBucket for a missing bucket; a download needs the object itself.
    """

    def exists(self) -> bool:
        return stat_s3_object(self.path, client=self.fs.s3.meta.client) is not None

"""Pipeline building blocks: tasks that can be forced to rerun, and S3 objects in and out.

    luigi --module tasks S3Download --s3-path s3://bucket/photos/cat.jpg   # data/bucket/photos/...
    luigi --module tasks S3Download --s3-path s3://bucket/photos/cat.jpg --force   # download again
    luigi --module tasks S3Upload --local-path out/cat.jpg --s3-path s3://bucket/results/cat.jpg

``download_s3_object`` and ``upload_file_atomic`` are the one way to move a file between S3 and
the local disk; tasks other than these reuse them.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path
from typing import Any

import luigi
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from luigi.task import flatten
from tqdm import tqdm

from neuralstyle.atomic import atomic_path
from neuralstyle.model.contract import FLAG_PARAMS, RequestParam
from tasks.targets import (
    S3ObjectTarget,
    SuffixAtomicLocalTarget,
    boto3_s3,
    parse_s3_uri,
    s3_client,
    s3_error,
    stat_s3_object,
)

logger = logging.getLogger("luigi-interface.tasks")

# Below this size a progress bar is noise.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024


def _progress(total: int, desc: str) -> tqdm:
    """A byte progress bar for transfers big enough to watch; disabled for small ones."""
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=total < PROGRESS_MIN_BYTES,
        leave=False,
    )


def download_s3_object(
    uri: str, dest: str | os.PathLike[str], *, client: Any | None = None
) -> Path:
    """Download ``uri`` to ``dest`` atomically and verify its size; return ``dest``.

    The bytes go to a temporary sibling with the same suffix, which becomes ``dest`` only when
    the transfer finished and its size equals S3's ContentLength; on any failure (missing key,
    denied, cut-off transfer, short read) the temporary is removed and ``dest`` is untouched.
    ``client`` is a boto3 S3 client; default: ``s3_client()``'s.
    """
    bucket, key = parse_s3_uri(uri)
    s3 = boto3_s3(client)
    head = stat_s3_object(uri, client=s3)
    if head is None:
        raise FileNotFoundError(f"{uri} does not exist")
    expected = int(head["ContentLength"])
    dest = Path(dest)
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh, _progress(expected, key) as bar:
        try:
            s3.download_fileobj(bucket, key, fh, Callback=bar.update)
        except ClientError as err:
            raise s3_error(err, uri, f"downloading to {dest}") from err
        fh.flush()
        got = os.fstat(fh.fileno()).st_size
        if got != expected:
            raise OSError(
                f"{uri}: downloaded {got} bytes but S3 reports ContentLength {expected}; "
                f"the transfer was cut short, {dest} was not written"
            )
        os.fsync(fh.fileno())
    logger.info("downloaded %s to %s (%d bytes)", uri, dest, expected)
    return dest


def upload_file_atomic(
    local: str | os.PathLike[str],
    uri: str,
    *,
    client: Any | None = None,
    config: Any | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Upload the whole local file to ``uri``; readers never see a partial object. Return ``uri``.

    Why no temporary key + copy: S3 makes an object visible under its key only when a PutObject
    finishes or CompleteMultipartUpload is called, so readers see the previous object or the
    new one, never a part. boto3's ``upload_file`` sends one PutObject below
    ``multipart_threshold`` (8 MiB) and a multipart upload above it; when a part fails,
    s3transfer calls AbortMultipartUpload, so neither an object nor parts are left. (A process
    killed mid-upload can leave invisible parts that are billed until a lifecycle rule with
    AbortIncompleteMultipartUpload removes them.) ``config`` is a boto3 TransferConfig;
    ``metadata`` becomes the object's user metadata (``x-amz-meta-*``), sent with the same PUT.
    """
    path = Path(local)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist or is not a file: nothing to upload to {uri}"
        )
    bucket, key = parse_s3_uri(uri)
    s3 = boto3_s3(client)
    size = path.stat().st_size
    extra: dict[str, Any] = {}
    content_type = mimetypes.guess_type(path.name)[0]
    if content_type:
        extra["ContentType"] = content_type
    if metadata:
        extra["Metadata"] = metadata
    try:
        with _progress(size, path.name) as bar:
            s3.upload_file(
                str(path), bucket, key, ExtraArgs=extra, Callback=bar.update, Config=config
            )
    except S3UploadFailedError as err:
        # boto3 wraps the ClientError in a message-only error raised inside its except block.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ClientError):
            raise s3_error(cause, uri, f"uploading {path}") from err
        raise OSError(f"uploading {path} to {uri} failed: {err}") from err
    except ClientError as err:
        raise s3_error(err, uri, f"uploading {path}") from err
    logger.info("uploaded %s to %s (%d bytes)", path, uri, size)
    return uri


def mirror_path(uri: str, data_root: str | os.PathLike[str]) -> Path:
    """Where ``s3://bucket/key`` is kept locally: ``data_root/bucket/key``.

    Refuses keys that would land outside ``data_root`` (``..``, a leading ``/``) or that would
    not map to exactly one file (empty or ``.`` segments, a trailing ``/``).
    """
    bucket, key = parse_s3_uri(uri)
    hint = "pass local_path to choose the file yourself"
    if key.startswith("/"):
        raise ValueError(
            f"{uri}: key {key!r} is absolute and would be written outside {data_root}; {hint}"
        )
    parts = key.split("/")
    if ".." in parts:
        raise ValueError(f"{uri}: key {key!r} contains '..' and would escape {data_root}; {hint}")
    if key.endswith("/"):
        raise ValueError(f"{uri} ends with '/': it names a folder, not an object")
    if "" in parts or "." in parts or "\x00" in key:
        raise ValueError(
            f"{uri}: key {key!r} has empty or '.' segments and maps to no single local file; {hint}"
        )
    path = Path(data_root, bucket, *parts)
    root = os.path.abspath(data_root)
    if os.path.commonpath([root, os.path.abspath(path)]) != root:  # belt and braces
        raise ValueError(f"{uri} would be written outside {data_root}; {hint}")
    return path


def local_input_path(task: luigi.Task) -> Path:
    """The one local file that ``task.requires()`` provides; an error naming the task otherwise."""
    inputs = flatten(task.input())
    if len(inputs) != 1 or not isinstance(inputs[0], luigi.LocalTarget):
        raise TypeError(f"{task} needs exactly one local file from requires(); got {inputs!r}")
    return Path(inputs[0].path)


def remove_outputs(task: luigi.Task) -> list[str]:
    """Remove each existing output of ``task`` through its target's filesystem; return the paths.

    ``fs.remove`` deletes a local file or folder (rmtree) and an S3 object or a whole prefix.
    """
    removed = []
    for target in flatten(task.output()):
        if not target.exists():
            continue
        fs = getattr(target, "fs", None)
        if fs is None:
            raise TypeError(
                f"{task}: cannot force, output {target!r} has no filesystem to remove it with"
            )
        logger.info("force: removing %s (output of %s)", target.path, task)
        fs.remove(target.path)
        removed.append(target.path)
    return removed


def _luigi_parameter(param: RequestParam) -> luigi.Parameter:
    """One request param of the model's contract as a Luigi parameter (same default and help)."""
    description = f"{param.help} (default: {param.default})"
    if param.choices:
        return luigi.ChoiceParameter(choices=param.choices, var_type=str, default=param.default,
                                     description=description)
    kinds = {bool: luigi.BoolParameter, int: luigi.IntParameter, float: luigi.FloatParameter}
    return kinds.get(param.kind, luigi.Parameter)(default=param.default, description=description)


class _RequestParamsBase:
    def request_params(self) -> dict[str, Any]:
        """The request params this task was given, by their contract names."""
        return {param.name: getattr(self, param.name) for param in FLAG_PARAMS}


# The model's per-request params (neuralstyle.model.contract) as Luigi parameters, mixed into
# every task that stylizes (Stylize, StylizeBatch, StylizeSpark): a param added to the contract
# appears on all of them with its default and help. Built by type(), so each Parameter gets its
# name through __set_name__ as if written in a class body.
RequestParams = type("RequestParams", (_RequestParamsBase,), {
    "__doc__": "The model's per-request params as Luigi parameters, built from the contract.",
    "__module__": __name__,
    **{param.name: _luigi_parameter(param) for param in FLAG_PARAMS},
})


def run_here(task: luigi.Task) -> None:
    """Run ``task`` in this process, its incomplete dependencies first.

    For local files another worker made on another machine: the scheduler counts them done,
    but this machine has to make its own copy before it can use them.
    """
    for dependency in luigi.task.flatten(task.requires()):
        if not dependency.complete():
            run_here(dependency)
    task.run()


class ForceableTask(luigi.Task):
    """A task whose ``--force`` removes its existing outputs so that it runs again.

    The removal happens in the first ``complete()`` call on this instance, which is Luigi's
    scheduling check, before anything else looks at the outputs. It happens once: the worker
    calls ``complete()`` again (dependency checks of downstream tasks, ``check_complete_on_run``)
    and must then see the fresh outputs, in forked task processes too and when
    ``parallel_scheduling`` pickles the task (see ``__setstate__``).

    Luigi caches task instances per process, so a second ``luigi.build`` of an identical forced
    task in the same process reuses the instance and does not force again; each ``luigi``
    command is a new process (tests clear the cache with
    ``luigi.task_register.Register.clear_instance_cache()``).
    """

    force = luigi.BoolParameter(
        default=False,
        significant=False,
        description="remove this task's existing outputs first, so it runs again (default: false)",
    )

    _force_applied = False

    def complete(self) -> bool:
        if self.force and not self._force_applied:
            remove_outputs(self)
            self._force_applied = True
        return super().complete()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled copy; if it already forced, mark this process's own instance too.

        With ``parallel_scheduling`` Luigi runs complete() in a pool process and sends the task
        back pickled; without this, downstream tasks would reach the cached original instance
        through requires(), call its complete() and delete the outputs just made.
        """
        self.__dict__.update(state)
        if state.get("_force_applied"):
            type(self)(**self.param_kwargs)._force_applied = True


class S3FileExists(luigi.ExternalTask):
    """An S3 object this pipeline does not make (an uploaded photo, say)."""

    path = luigi.Parameter(description="s3://bucket/key of the object")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parse_s3_uri(self.path)  # a malformed URI fails here, naming itself

    def output(self) -> S3ObjectTarget:
        return S3ObjectTarget(self.path, client=s3_client(), format=luigi.format.Nop)

    def complete(self) -> bool:
        done = super().complete()
        if not done:
            logger.warning("%s does not exist (yet?)", self.path)
        return done


class S3Download(ForceableTask):
    """Download an S3 object to data_root/bucket/key (or local_path), atomically, size-checked."""

    s3_path = luigi.Parameter(description="s3://bucket/key of the object to download")
    data_root = luigi.Parameter(
        default="data",
        description="folder mirroring S3 as data_root/bucket/key "
        "(default: data; set [S3Download] data_root in luigi.cfg)",
    )
    local_path = luigi.OptionalParameter(
        default=None,
        description="download to exactly this path instead of under data_root (default: none)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_file()  # a malformed URI or an escaping key fails here, before any S3 call

    def local_file(self) -> Path:
        """The local path of the downloaded object."""
        if self.local_path:
            parse_s3_uri(self.s3_path)
            return Path(self.local_path)
        return mirror_path(self.s3_path, self.data_root)

    def requires(self) -> S3FileExists:
        return S3FileExists(path=self.s3_path)

    def output(self) -> SuffixAtomicLocalTarget:
        return SuffixAtomicLocalTarget(str(self.local_file()), format=luigi.format.Nop)

    def run(self) -> None:
        download_s3_object(self.s3_path, self.local_file())


class LocalFileExists(luigi.ExternalTask):
    """A local file this pipeline does not make."""

    path = luigi.Parameter(description="path of the file")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.path, format=luigi.format.Nop)


class S3Upload(ForceableTask):
    """Publish one local file to ``s3_path``.

    Give ``local_path``, or subclass and return the producing task from ``requires()``.
    """

    s3_path = luigi.Parameter(description="s3://bucket/key to publish to")
    local_path = luigi.OptionalParameter(
        default=None,
        description="file to upload (default: none; subclasses upload their requires() output)",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        parse_s3_uri(self.s3_path)

    def requires(self) -> luigi.Task:
        if not self.local_path:
            raise ValueError(
                f"{self}: set local_path, or subclass S3Upload and override requires()"
            )
        return LocalFileExists(path=self.local_path)

    def output(self) -> S3ObjectTarget:
        return S3ObjectTarget(self.s3_path, client=s3_client(), format=luigi.format.Nop)

    def run(self) -> None:
        """Upload; a lineage sidecar beside the file travels as the object's metadata."""
        from neuralstyle.run import lineage

        local = local_input_path(self)
        record = lineage.read_sidecar(local)
        metadata = None
        if record is not None:
            record["output"]["uri"] = self.s3_path
            metadata = lineage.s3_metadata(record)
        upload_file_atomic(local, self.s3_path, metadata=metadata)

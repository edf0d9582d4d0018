"""Lineage of a stylized file: which model version made it, from what, with which settings.

Every result carries one record: the model (name, registry version, fingerprint), the style asked
for and the one it resolved to, the effective request params, and the sha256 of the input and of
the output. Local results get a sidecar ``<result>.lineage.json``; S3 results get the same fields
as object metadata; ``mlflow run`` logs the records. From a stylized file alone a user can tell
which version made it: ``sha256sum result.jpg`` matches ``output.sha256`` in its sidecar.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".lineage.json"
SCHEMA = "stylize.lineage/1"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sidecar_path(output: str | Path) -> Path:
    """``out/cat-7.jpg`` -> ``out/cat-7.jpg.lineage.json`` (beside the result, same stem)."""
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def model_name_of(model_uri: str) -> str | None:
    """``models:/style-transfer@champion`` or ``models:/style-transfer/3`` -> ``style-transfer``."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri[len("models:/"):]
    return rest.split("@", 1)[0].split("/", 1)[0] or None


@functools.lru_cache(maxsize=32)
def registry_version(tracking_uri: str, model_name: str, fingerprint: str) -> str | None:
    """The registered version tagged with ``fingerprint`` (what the model reports), if any.

    The model answers with its fingerprint, whatever runs it (in-process, a server, a container),
    and packaging tags each version with it, so the registry names the exact version.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not fingerprint or not _registry_exists(tracking_uri):
        return None
    try:
        versions = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri) \
            .search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return None
    found = [v.version for v in versions if v.tags.get("fingerprint") == fingerprint]
    return str(min(int(v) for v in found)) if found else None


def _registry_exists(tracking_uri: str) -> bool:
    """False for a sqlite registry file that is not there (asking would create an empty one)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).is_file()
    return True


def build_record(
    *, input_uri: str, input_bytes: bytes, output_uri: str, output_bytes: bytes, style: str,
    resolved_style: str, params: dict[str, Any], fingerprint: str, model_uri: str | None,
    tracking_uri: str | None, precision: str | None = None,
) -> dict[str, Any]:
    """One lineage record (plain JSON types)."""
    name = model_name_of(model_uri or "")
    version = registry_version(tracking_uri, name, fingerprint) if name and tracking_uri else None
    return {
        "schema": SCHEMA,
        "model": {"name": name, "version": version, "fingerprint": fingerprint,
                  "uri": model_uri, "registry": tracking_uri},
        "style": {"requested": style, "resolved": resolved_style},
        "params": params,
        "precision": precision,
        "input": {"uri": input_uri, "sha256": sha256_bytes(input_bytes), "bytes": len(input_bytes)},
        "output": {"uri": output_uri, "sha256": sha256_bytes(output_bytes),
                   "bytes": len(output_bytes)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def to_json(record: dict[str, Any]) -> bytes:
    """The sidecar's bytes: indented, sorted keys, trailing newline."""
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself (no lock file left behind), held for a few ms."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_result(output: str | Path, data: bytes, record: dict[str, Any]) -> None:
    """Write a result and its sidecar, each atomically, the sidecar first.

    The result's existence marks the work done, so it never exists without its record; and two
    writers of one output (two tasks, two machines on one share) take turns, so the file and its
    sidecar always come from the same run, whichever wins.
    """
    from neuralstyle.atomic import write_bytes_atomic

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(output.parent):
        write_bytes_atomic(sidecar_path(output), to_json(record))
        write_bytes_atomic(output, data)


def read_sidecar(output: str | Path) -> dict[str, Any] | None:
    """The record stored beside ``output``, or None."""
    path = sidecar_path(output)
    return json.loads(path.read_text()) if path.is_file() else None


def s3_metadata(record: dict[str, Any]) -> dict[str, str]:
    """The record as S3 user metadata (``x-amz-meta-*``: ASCII values, 2 KB in all)."""
    def ascii_(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return text.encode("ascii", "backslashreplace").decode("ascii")

    model = record["model"]
    return {
        "lineage-schema": record["schema"],
        "model-name": ascii_(model["name"] or ""),
        "model-version": ascii_(model["version"] or ""),
        "model-fingerprint": model["fingerprint"],
        "style": ascii_(record["style"]["resolved"]),
        "params": ascii_(record["params"]),
        "precision": ascii_(record.get("precision") or ""),
        "input-uri": ascii_(record["input"]["uri"]),
        "input-sha256": record["input"]["sha256"],
        "output-sha256": record["output"]["sha256"],
        "created": record["created"],
    }

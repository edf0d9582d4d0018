"""What a model URI points at in the registry right now: one lookup for every caller.

The Docker images key their tags on it, and a stylize run records the version it used.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from neuralstyle import config


@dataclass(frozen=True)
class ModelRef:
    """What a model URI points at right now, and the identity used to tag and reuse images."""

    uri: str
    tracking_uri: str
    registry_uri: str
    name: str | None  # None for URIs outside the registry (runs:/..., a path)
    version: str | None
    run_id: str
    key: str  # the version's ``fingerprint`` tag (weights + code + styles + requirements)
    code_version: str  # the version's ``code_version`` tag: the serving code inside the model


def content_key(*parts: str | bytes) -> str:
    """sha256 over the parts, each ended by a NUL (so ("ab", "c") differs from ("a", "bc"))."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


def resolve_model(model_uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Resolve ``models:/name@alias`` or ``models:/name/N`` in the registry (sets no global
    MLflow state).

    Other URIs (``runs:/...``, a local folder) are built too, keyed by the URI (and for a local
    folder by its files), without a version in the tag.
    """
    from mlflow import MlflowClient

    tracking = config.tracking_uri(tracking_uri)
    # An explicit tracking URI is the registry too (as in neuralstyle.run.serving): a leftover
    # MLFLOW_REGISTRY_URI must not redirect it.
    registry = tracking if tracking_uri else (os.environ.get("MLFLOW_REGISTRY_URI") or tracking)
    alias = _ALIAS_URI.match(model_uri)
    numbered = _VERSION_URI.match(model_uri)
    if alias or numbered:
        client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
        if alias:
            mv = client.get_model_version_by_alias(alias["name"], alias["alias"])
        else:
            mv = client.get_model_version(numbered["name"], numbered["version"])
        run_id = mv.run_id or ""
        # Versions registered by package_models carry these tags; others get a key from where
        # the registry says the version is (registry, name, version, run, source).
        key = mv.tags.get("fingerprint") or content_key(registry, mv.name, str(mv.version), run_id,
                                                 mv.source or "")
        code = mv.tags.get("code_version") or key[:12]
        return ModelRef(model_uri, tracking, registry, mv.name, str(mv.version), run_id, key, code)
    path = Path(model_uri.removeprefix("file://"))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        key = content_key(*(part for p in files for part in (str(p.relative_to(path)), p.read_bytes())))
    else:
        key = content_key(tracking, model_uri)
    return ModelRef(model_uri, tracking, registry, None, None, "", key, key[:12])

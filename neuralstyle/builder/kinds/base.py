"""What every kind of network provides to packaging (see ``neuralstyle.builder.kinds``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralstyle.model.styles import Catalog


@dataclass(frozen=True)
class PackageInputs:
    """What the user asked ``package_models`` for, beyond the style map: each kind takes its part."""

    workdir: Path  # a temporary folder for fetched inputs, removed after packaging
    checkpoints: tuple[str, ...] = ()  # pytorch/examples checkpoints (paths or s3:// URIs)
    style_images: tuple[str, ...] = ()  # named paintings, ``name=path`` or ``name=s3://...``


@dataclass
class QualityJob:
    """One entry of ``quality.json``: a network file run fast and exact with each of ``feeds``
    (besides the photo) on every sample photo; ``record`` adds to the shipped record."""

    label: str
    file: str
    feeds: list[dict[str, np.ndarray]]
    record: dict = field(default_factory=dict)


class NetworkKind:
    """One kind of network, through packaging; a subclass overrides what its kind needs.

    The order of a packaging call: ``plan`` (fast: fetch and check inputs, describe them in the
    catalog, before any slow work so an unchanged rerun is instant), ``identity`` (fingerprint),
    ``build`` (rebuild from the weights, prove against the original, export to ``staging``),
    ``after_build`` (what needs the exported files), ``quality_jobs``, ``preview``.
    """

    name = ""

    def __init__(self, inputs: PackageInputs) -> None:
        self.inputs = inputs

    def plan(self, catalog: Catalog) -> None:
        """Fetch and check this kind's inputs and describe them in ``catalog``."""

    def identity(self) -> dict:
        """Pinned weights the fingerprint must cover (the catalog and code are covered already)."""
        return {}

    def build(self, staging: Path, catalog: Catalog) -> tuple[dict[str, float], dict[str, str]]:
        """Rebuild, prove and export into ``staging``: metrics and params to log."""
        return {}, {}

    def after_build(self, staging: Path, catalog: Catalog) -> None:
        """Complete the catalog with what needs this kind's exported networks."""

    def quality_jobs(self, staging: Path, catalog: Catalog) -> list[QualityJob]:
        """What the fast-precision check runs for this kind."""
        return []

    def preview(self, staging: Path, catalog: Catalog, folder: Path) -> tuple[dict[str, float], list[Path]]:
        """Pictures logged with the version (written to ``folder``) and their metrics."""
        return {}, []

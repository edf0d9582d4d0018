"""The kinds of network a version serves: each is one module here, registered in ``KINDS``.

A kind says how it is planned into the catalog, fingerprinted, rebuilt and proven, exported,
completed after export, checked at fast precision and previewed (``base.NetworkKind``). Its
PyTorch module lives beside it (``builder/networks.py``, ``builder/arbitrary.py``); how it runs
when served is the model package's (``model.styles.Resolved.feeds`` and ``Engine``).
"""

from __future__ import annotations

from neuralstyle.builder.kinds.arbitrary import Arbitrary
from neuralstyle.builder.kinds.base import NetworkKind, PackageInputs, QualityJob
from neuralstyle.builder.kinds.checkpoints import Checkpoints
from neuralstyle.builder.kinds.multistyle import MultiStyle

# Packaging order: a later kind's plan sees the names an earlier one took.
KINDS: tuple[type[NetworkKind], ...] = (MultiStyle, Checkpoints, Arbitrary)

__all__ = ["KINDS", "NetworkKind", "PackageInputs", "QualityJob", "for_inputs"]


def for_inputs(inputs: PackageInputs) -> list[NetworkKind]:
    """One instance of every registered kind, for one packaging call."""
    return [kind(inputs) for kind in KINDS]

"""Style addressing: ``"7"``, ``"style-07"``, a user alias, a blend ``"3:0.5,12:0.5"``, or a name
of an extra single-style network (a pytorch/examples checkpoint such as ``candy``).

The 26 styles of the multi-style network have no official names, so they are numbered honestly
(``style-00`` .. ``style-25``); users name their favourites in a small JSON style map
(``styles.json`` at the repo top) that ships inside the model as ``catalog.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuralstyle.model.errors import StyleInputError

N_STYLES = 26
# The arbitrary-style transformer's network key, and its entry in quality.json (not valid
# network names, so no checkpoint can take them): one bf16 decision for every painting.
ARBITRARY = ":arbitrary"
ARBITRARY_QUALITY_KEY = "painting:any"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def style_name(index: int) -> str:
    """The honest built-in name of one of the 26 styles."""
    return f"style-{index:02d}"


@dataclass(frozen=True)
class Resolved:
    """A resolved style: either weights over the 26 styles or one named extra network."""

    label: str
    weights: np.ndarray | None = None  # float32 [26], sums to 1
    network: str | None = None
    style_vector: np.ndarray | None = None  # float32 [100]: a painting (arbitrary networks)

    # How each kind of network runs a resolved style (the served half of a kind; the building
    # half is ``neuralstyle.builder.kinds``).
    @property
    def network_key(self) -> str | None:
        """The network that runs it: None the 26-style one, a name an extra one, ARBITRARY a painting."""
        return ARBITRARY if self.style_vector is not None else self.network

    def feeds(self) -> dict[str, np.ndarray]:
        """That network's inputs besides the photo."""
        if self.style_vector is not None:
            return {"style_vector": self.style_vector.reshape(1, -1).astype(np.float32)}
        if self.network is not None:
            return {}
        return {"style_weights": self.weights}

    def quality_keys(self) -> list[str]:
        """The entries of ``quality.json`` that decide whether it may run fast."""
        if self.style_vector is not None:
            return [ARBITRARY_QUALITY_KEY]  # one decision for the network, whatever the painting
        if self.network is not None:
            return [self.network]
        return [style_name(i) for i in range(N_STYLES) if self.weights[i] > 0]


@dataclass
class Catalog:
    """What styles a packaged model serves; saved as ``catalog.json`` inside the model."""

    multistyle_file: str = "multistyle26.onnx"
    networks: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {file, sha256..}
    aliases: dict[str, str] = field(default_factory=dict)  # user name -> style spec
    # The arbitrary-style pair: {"predict": file, "transform": file} (absent in older versions).
    arbitrary: dict[str, str] = field(default_factory=dict)
    # Named paintings: name -> {"vector": [100 floats], "source": uri, "sha256": of the file}.
    paintings: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"multistyle_file": self.multistyle_file, "networks": self.networks,
             "aliases": self.aliases, "arbitrary": self.arbitrary, "paintings": self.paintings},
            indent=2, sort_keys=True,
        )

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        data = json.loads(Path(path).read_text())
        return cls(data["multistyle_file"], data.get("networks", {}), data.get("aliases", {}),
                   data.get("arbitrary", {}), data.get("paintings", {}))

    def network_files(self) -> dict[str | None, str]:
        """Every network a photo runs through, by ``Resolved.network_key``: None the 26-style
        network, extra networks by name, ARBITRARY the painting transformer (when the version has
        the pair; the painting -> vector network is not a photo's)."""
        files: dict[str | None, str] = {None: self.multistyle_file}
        files |= {name: info["file"] for name, info in self.networks.items()}
        if "transform" in self.arbitrary:
            files[ARBITRARY] = self.arbitrary["transform"]
        return files

    def names(self) -> list[str]:
        """Every name a request may use, for error messages and docs."""
        return [style_name(i) for i in range(N_STYLES)] + sorted(self.networks) + sorted(
            self.aliases
        ) + sorted(self.paintings)

    def resolve(self, spec: str) -> Resolved:
        """Parse a style spec; unknown names and malformed blends raise a clear error."""
        if not isinstance(spec, str) or not spec.strip():
            raise StyleInputError(f"style must be a non-empty string, got {spec!r}")
        spec = spec.strip()
        if spec in self.paintings:
            vector = np.asarray(self.paintings[spec]["vector"], np.float32)
            return Resolved(spec, style_vector=vector)
        if spec in self.aliases:
            resolved = self._resolve_plain(self.aliases[spec], alias_of=spec)
            return Resolved(spec, resolved.weights, resolved.network)
        return self._resolve_plain(spec)

    def _resolve_plain(self, spec: str, alias_of: str | None = None) -> Resolved:
        where = f"style {spec!r}" + (f" (alias {alias_of!r})" if alias_of else "")
        if spec in self.networks:
            return Resolved(spec, network=spec)
        if "," in spec or ":" in spec:
            return self._resolve_blend(spec, where)
        weights = np.zeros(N_STYLES, np.float32)
        weights[self._index(spec, where)] = 1.0
        return Resolved(style_name(self._index(spec, where)), weights=weights)

    def _index(self, token: str, where: str) -> int:
        token = token.strip()
        if token.isdigit():
            index = int(token)
        elif re.fullmatch(r"style-\d{2}", token):
            index = int(token[6:])
        elif token in self.networks or token in self.paintings:
            raise StyleInputError(
                f"{where}: {token!r} is a separate network and cannot be blended; blends mix "
                f"the 26 built-in styles (0..25)"
            )
        else:
            extra = ", ".join(self.names()[N_STYLES:]) or "no extra names"
            raise StyleInputError(
                f"{where} is unknown: use an index 0..{N_STYLES - 1}, a name "
                f"(style-00, ..., style-25; {extra}), or a blend like '3:0.5,12:0.5'"
            )
        if not 0 <= index < N_STYLES:
            raise StyleInputError(f"{where}: index {index} is out of range 0..{N_STYLES - 1}")
        return index

    def _resolve_blend(self, spec: str, where: str) -> Resolved:
        weights = np.zeros(N_STYLES, np.float32)
        for part in spec.split(","):
            token, sep, amount = part.partition(":")
            if not sep:
                raise StyleInputError(
                    f"{where}: blend part {part!r} needs the form index:weight, e.g. '3:0.5,12:0.5'"
                )
            try:
                value = float(amount)
            except ValueError:
                raise StyleInputError(
                    f"{where}: blend weight {amount!r} in {part!r} is not a number"
                ) from None
            if not np.isfinite(value) or value < 0:
                raise StyleInputError(f"{where}: blend weight {amount!r} must be >= 0")
            weights[self._index(token, where)] += value
        total = float(weights.sum())
        if total <= 0:
            raise StyleInputError(f"{where}: blend weights sum to 0")
        weights /= total  # a convex mix of the learned norms; unnormalised mixes look broken
        label = ",".join(f"{i}:{weights[i]:.4g}" for i in np.flatnonzero(weights))
        return Resolved(label, weights=weights)


def load_style_map(path: str | Path | None) -> dict[str, str]:
    """Read the user's style map (``{"name": "spec"}``); clear errors for a malformed file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise StyleInputError(f"style map {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StyleInputError(f"style map {path} is not valid JSON ({exc})") from None
    aliases = data.get("aliases", data) if isinstance(data, dict) else None
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in aliases.items()
    ):
        raise StyleInputError(f'style map {path} must map names to specs: {{"aliases": {{"name": "7"}}}}')
    aliases = {k: str(v) for k, v in aliases.items() if not k.startswith("_")}
    for name in aliases:
        if not _NAME.match(name) or re.fullmatch(r"style-\d{2}|\d+", name):
            raise StyleInputError(
                f"style map {path}: name {name!r} must be lower-case letters, digits, '-', '_' "
                f"or '.', and not a number or a built-in style-NN name"
            )
    return aliases


def validate_network_name(name: str) -> str:
    """Names of extra networks follow the same rules as aliases."""
    if not _NAME.match(name) or re.fullmatch(r"style-\d{2}|\d+", name):
        raise StyleInputError(
            f"network name {name!r} must be lower-case letters, digits, '-', '_' or '.', "
            f"and not a number or a built-in style-NN name"
        )
    return name

"""The request contract, declared once: each per-request param's name, type, default, limits, help.

Everything else is built from ``REQUEST_PARAMS``: the validation here (``Params.parse``), the
pyfunc signature (``signature``), the CLI flags (``neuralstyle.run.flags``), the Luigi parameters
(``tasks.base.RequestParams``) and the Spark job's settings; ``tests/test_project.py`` checks the
MLproject parameters against it. Adding a param is one entry here plus its use in the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralstyle.model.errors import StyleInputError
from neuralstyle.model.imaging import FORMATS, MAX_SIDE, MIN_SIDE
from neuralstyle.model.runtime import PRECISIONS

# Up to 16K on the longest side: photos above 1 MP run in bands (neuralstyle.model.tiling), so
# memory stays bounded; max_size=0 asks for the photo's own size (README, "Full resolution").
MAX_SIZE_LIMIT = MAX_SIDE
OWN_SIZE = 0
# Photos one loaded model decodes, stylizes and encodes at once; other rows wait for a slot
# (docs/serving.md, "Under load").
PARALLEL_PHOTOS_ENV = "STYLIZE_PARALLEL_PHOTOS"
DEFAULT_PARALLEL_PHOTOS = 2
TRUE_WORDS = ("1", "true", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "no", "n", "off", "")


@dataclass(frozen=True)
class RequestParam:
    """One per-request param of the model."""

    name: str
    kind: type  # int | float | bool | str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    flag: bool = True  # a CLI/Luigi option (format is not: it follows the output's suffix)

    @property
    def described(self) -> str:
        """The help with the limits or choices: what a CLI's --help and the version page show."""
        if self.low is not None and self.high is not None:
            return f"{self.help}, {self.low:g}..{self.high:g}"
        if self.choices:
            return f"{self.help} (one of {', '.join(self.choices)})"
        return self.help

    @property
    def option(self) -> str:
        """The command-line spelling: ``--max-size``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value as this param's type, within its limits, or a StyleInputError naming it."""
        try:
            if self.kind is bool:
                got: Any = parse_bool(value)
            elif self.kind is int:  # also as MLflow writes float params: "1024.0"
                number = float(value)
                if not number.is_integer():
                    raise ValueError(f"{value!r} is not a whole number")
                got = int(number)
            else:
                got = self.kind(value)
        except (TypeError, ValueError) as exc:
            raise StyleInputError(f"param {self.name}={value!r}: {exc}") from None
        if isinstance(got, str):
            got = got.strip().lower()
            got = {"jpg": "jpeg"}.get(got, got) if self.name == "format" else got
        if self.choices and got not in self.choices:
            raise StyleInputError(f"param {self.name}={value!r} must be one of "
                                  f"{', '.join(self.choices)} ({self.help})")
        if self.low is not None and self.high is not None and not self.low <= got <= self.high:
            raise StyleInputError(f"param {self.name}={got} must be in "
                                  f"{self.low:g}..{self.high:g} ({self.help})")
        return got


def parse_bool(value: Any) -> bool:
    """true/false, yes/no, 1/0 (any case), or a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"{value!r} is not a yes/no value (true or false)")


REQUEST_PARAMS: tuple[RequestParam, ...] = (
    RequestParam("max_size", int, 1024, "longest side in px (0: the photo's own size)", OWN_SIZE,
                 MAX_SIZE_LIMIT),
    RequestParam("paint_size", int, 0,
                 "longest side the network paints at, guided up to the output (0: the output size)",
                 OWN_SIZE, MAX_SIZE_LIMIT),
    RequestParam("strength", float, 1.0, "mix of stylized (1) and original (0)", 0.0, 1.0),
    RequestParam("preserve_color", bool, False, "true keeps the photo's colours"),
    RequestParam("format", str, "jpeg", "the result's encoding", choices=tuple(FORMATS),
                 flag=False),
    RequestParam("quality", int, 90, "JPEG/WebP quality", 1, 100),
    RequestParam("precision", str, "fast",
                 "exact: fp32, as the original graph; fast: bf16 where this CPU has it and the "
                 "style meets the quality bound, else exact", choices=PRECISIONS),
)
BY_NAME = {p.name: p for p in REQUEST_PARAMS}
DEFAULT_PARAMS: dict[str, Any] = {p.name: p.default for p in REQUEST_PARAMS}
FLAG_PARAMS = tuple(p for p in REQUEST_PARAMS if p.flag)


@dataclass(frozen=True)
class Params:
    """Validated per-request parameters."""

    max_size: int
    strength: float
    preserve_color: bool
    format: str
    quality: int
    precision: str = "fast"
    paint_size: int = 0

    @classmethod
    def parse(cls, params: dict[str, Any] | None) -> Params:
        given = {k: v for k, v in (params or {}).items() if v is not None}
        unknown = sorted(set(given) - set(BY_NAME))
        if unknown:
            raise StyleInputError(f"unknown params {unknown}: accepted are {', '.join(BY_NAME)}")
        parsed = cls(**{p.name: p.parse(given.get(p.name, p.default)) for p in REQUEST_PARAMS})
        parsed.check_paint_size()
        return parsed

    def check_paint_size(self) -> None:
        """``paint_size`` paints at most at the output size: larger than ``max_size`` is refused
        (a photo smaller than ``paint_size`` at ``max_size=0`` simply paints at its own size)."""
        if 0 < self.paint_size < MIN_SIDE:
            raise StyleInputError(f"param paint_size={self.paint_size} is below {MIN_SIDE} px "
                                  "(0 paints at the output size)")
        if self.max_size and self.paint_size > self.max_size:
            raise StyleInputError(
                f"param paint_size={self.paint_size} is larger than the output "
                f"(max_size={self.max_size}): the network paints at most at the output size; "
                f"give paint_size <= max_size, or 0 to paint at the output size")


def signature():
    """The pyfunc signature: input and output columns, and every request param with its default."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    dtypes = {int: "long", float: "double", bool: "boolean", str: "string"}
    return ModelSignature(
        inputs=Schema([
            ColSpec("string", "image"),
            ColSpec("string", "style", required=False),  # may be absent when style_image is given
            ColSpec("string", "style_image", required=False),  # base64 of a painting
        ]),
        outputs=Schema([
            ColSpec("string", "image"), ColSpec("long", "width"), ColSpec("long", "height"),
            ColSpec("string", "style"), ColSpec("string", "model"), ColSpec("string", "precision"),
        ]),
        params=ParamSchema([ParamSpec(p.name, dtypes[p.kind], p.default) for p in REQUEST_PARAMS]),
    )

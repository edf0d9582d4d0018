"""The model's request params as command-line flags, built from the contract (every CLI uses it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from neuralstyle.model.contract import FLAG_PARAMS, RequestParam
from neuralstyle.model.errors import StyleInputError


def _converter(param: RequestParam) -> Callable[[str], Any]:
    """argparse ``type=``: the contract's own check, reported as a usage error (exit 2)."""
    def convert(text: str) -> Any:
        try:
            return param.parse(text)
        except StyleInputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = param.kind.__name__  # argparse names it in "invalid <type> value"
    return convert


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """``--max-size``, ``--strength``, ``--preserve-color [true|false]``, ``--quality``, ``--precision``."""
    for param in FLAG_PARAMS:
        kwargs: dict[str, Any] = {"type": _converter(param), "default": param.default,
                                  "help": f"{param.described} (default: %(default)s)"}
        if param.choices:
            kwargs["choices"] = param.choices
        if param.kind is bool:  # a bare --preserve-color means true
            kwargs.update(nargs="?", const=True, metavar="true|false")
        parser.add_argument(param.option, **kwargs)


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    """The request params the flags gave, by their contract names."""
    return {param.name: getattr(args, param.name) for param in FLAG_PARAMS}

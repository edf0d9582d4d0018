"""The video settings, declared once: the CLI flags, the Luigi parameters and the MLproject entry
``stylize_video`` are built from (and tested against) ``VIDEO_PARAMS``.

They are client-side settings (flow and blending run beside the model, not in it), so they are not
request params of the model contract; they reuse its typed, range-checked declaration.
"""

from __future__ import annotations

import argparse
from typing import Any

from neuralstyle.model.contract import RequestParam
from neuralstyle.video.segments import SEGMENT_FRAMES
from neuralstyle.video.temporal import DEFAULT_TEMPORAL, DIS_PRESETS

VIDEO_PARAMS: tuple[RequestParam, ...] = (
    RequestParam("temporal", float, DEFAULT_TEMPORAL,
                 "temporal consistency: how much of the previous stylized frame, carried along "
                 "the optical flow, is kept where the motion is trusted (0 = every frame on its "
                 "own, flicker and all)", 0.0, 1.0),
    RequestParam("flow_preset", str, "fast", "OpenCV DIS optical flow preset",
                 choices=DIS_PRESETS),
    RequestParam("segment_frames", int, SEGMENT_FRAMES,
                 "a longer clip is cut into segments of this many frames, each stylized and "
                 "committed on its own (a rerun resumes; Luigi runs them on several workers); "
                 "0 = one piece", 0, 1_000_000),
)
VIDEO_DEFAULTS: dict[str, Any] = {p.name: p.default for p in VIDEO_PARAMS}


def add_video_flags(parser: argparse.ArgumentParser) -> None:
    """``--temporal`` and ``--flow-preset``, checked as the pipeline checks them."""
    for param in VIDEO_PARAMS:

        def convert(text: str, param: RequestParam = param) -> Any:
            from neuralstyle.model.errors import StyleInputError

            try:
                return param.parse(text)
            except StyleInputError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        convert.__name__ = param.kind.__name__
        kwargs: dict[str, Any] = {"type": convert, "default": param.default,
                                  "help": f"{param.described} (default: %(default)s)"}
        if param.choices:
            kwargs["choices"] = param.choices
        parser.add_argument(param.option, **kwargs)


def video_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The video settings the flags gave, by name."""
    return {param.name: getattr(args, param.name) for param in VIDEO_PARAMS}

"""Stylize one photo with the registered model, in-process or through a running server.

    python stylize.py --image photo.jpg --style 7 --output out.jpg
    python stylize.py --server-url http://127.0.0.1:5001 --image photo.jpg --style 3:0.5,12:0.5
    python stylize.py --image photo.jpg --style-image painting.jpg   # any painting as the style
    python stylize.py --image clip.mp4 --style 7 --output clip-7.mp4 --max-size 640   # a video
    python stylize.py --image clip.mov --output clip-7.webm --temporal 0   # VP9; per-frame flicker

A video (by the input's suffix: .mp4, .mov, .mkv, .webm, ...) comes out as .mp4 (H.264) or .webm
(VP9) with its sound, a progress bar on stderr and a lineage sidecar (``pip install -e .[video]``).

Exit status: 0 on success, 2 for bad input (the message names the input and the problem; no
output file is left), 1 when the model or server fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuralstyle import config
from neuralstyle.run.flags import add_request_flags, request_params


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", required=True, help="input photo (JPEG, PNG, WebP, ...)")
    parser.add_argument("--style", default=None,
                        help="index 0..25, a name (style-07, an alias, candy, a named painting) "
                             f"or a blend '3:0.5,12:0.5' (default: {config.DEFAULT_STYLE}, none "
                             "with --style-image)")
    parser.add_argument("--style-image", default=None,
                        help="any painting (JPEG, PNG, ...) as the style instead of a style "
                             "name; strength then mixes its style with the photo's own "
                             "(default: none)")
    parser.add_argument("--output", default=None,
                        help="output file; its suffix (.jpg/.png/.webp) sets the format "
                             "(default: out/<image stem>-<style>.jpg)")
    parser.add_argument("--model-uri", default=config.DEFAULT_MODEL_URI,
                        help="model to load in-process (default: %(default)s)")
    parser.add_argument("--server-url", default=None,
                        help="use a running server instead, e.g. http://127.0.0.1:5001 "
                             "(default: none, run in-process)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    add_request_flags(parser)
    from neuralstyle.video.options import add_video_flags

    add_video_flags(parser)  # only a video uses them
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from neuralstyle.model.errors import is_input_error
    from neuralstyle.run.executors import open_predictor
    from neuralstyle.run.inference import default_output, stylize_file

    style = args.style if args.style is not None else (
        "" if args.style_image else config.DEFAULT_STYLE)
    label = style or Path(args.style_image).stem
    output = args.output or default_output(args.image, label)
    params = request_params(args)
    from neuralstyle.video.media import is_video_path

    if is_video_path(args.image):
        return _video(args, style, label, params)
    try:
        with open_predictor(model_uri=args.model_uri, server_url=args.server_url,
                            tracking_uri=args.tracking_uri) as predictor:
            result = stylize_file(args.image, output, style, predictor, params,
                                  style_image=args.style_image)
    except Exception as exc:
        message = " ".join(str(getattr(exc, "message", None) or exc).split())
        print(f"stylize: error: {message}", file=sys.stderr)
        return 2 if is_input_error(exc) else 1
    print(f"wrote {result.output} ({result.width}x{result.height}, style {result.style}, "
          f"{result.seconds:.2f} s)")
    return 0


def _video(args: argparse.Namespace, style: str, label: str, params: dict) -> int:
    """A clip: the video pipeline with a progress bar (frames per second, ETA)."""
    from neuralstyle.model.errors import is_input_error
    from neuralstyle.run.executors import open_predictor
    from neuralstyle.video.clips import default_video_output, progress_bar, stylize_video
    from neuralstyle.video.options import video_settings

    output = args.output or default_video_output(args.image, label)
    try:
        with open_predictor(model_uri=args.model_uri, server_url=args.server_url,
                            tracking_uri=args.tracking_uri) as predictor, \
                progress_bar(args.image) as progress:
            result = stylize_video(args.image, output, style, predictor, params,
                                   style_image=args.style_image, model_uri=args.model_uri,
                                   tracking_uri=args.tracking_uri, progress=progress,
                                   **video_settings(args))
    except Exception as exc:
        message = " ".join(str(getattr(exc, "message", None) or exc).split())
        print(f"stylize: error: {message}", file=sys.stderr)
        return 2 if is_input_error(exc) else 1
    print(f"wrote {result.output} ({result.frames} frames, {result.width}x{result.height}, "
          f"style {result.style}, audio {result.audio}, {result.seconds:.1f} s, "
          f"{result.fps:.1f} fps; {result.steady_fps:.1f} fps after the first frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

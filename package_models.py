"""Package the pretrained style networks as a pyfunc model in the MLflow registry.

    python package_models.py                       # 26 styles -> models:/style-transfer@champion
    python package_models.py --checkpoint candy.pth   # + a pytorch/examples checkpoint as "candy"
    python package_models.py --style-image starry=starry.jpg   # + a named painting "starry"
    python package_models.py --force --force-champion  # champion even if the evaluation finds it worse
    mlflow run . -e package_models --env-manager local
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neuralstyle import config
from neuralstyle.model.contract import parse_bool
from neuralstyle.model.errors import is_input_error


def build_parser() -> argparse.ArgumentParser:
    """CLI flags; every default is stated in its help and declared once in neuralstyle.config."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-name", default=config.DEFAULT_MODEL_NAME,
                        help="registered model name (default: %(default)s)")
    parser.add_argument("--alias", default=config.DEFAULT_ALIAS,
                        help="alias set on the new version (default: %(default)s)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="pytorch/examples fast_neural_style .pth (path or s3:// URI); served "
                             "as a style named after the file stem; repeatable (default: none)")
    parser.add_argument("--style-image", action="append", default=[], metavar="NAME=PATH",
                        help="a named painting (path or s3:// URI) stored with the version as a "
                             "style vector, so style=NAME works without sending it; repeatable "
                             "(default: none)")
    parser.add_argument("--style-map", default=config.DEFAULT_STYLE_MAP,
                        help="JSON file naming favourite styles and blends; '' for none "
                             "(default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="register a new version even if an identical one exists "
                             "(default: off)")
    parser.add_argument("--force-champion", type=parse_bool, nargs="?", const=True, default=False,
                        help="give a new version the alias even when the evaluation gate finds it "
                             "worse than the version holding it (otherwise it gets "
                             f"'{config.CHALLENGER_ALIAS}') (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                             f"{config.DEFAULT_TRACKING_URI})")
    parser.add_argument("--experiment", default=config.DEFAULT_EXPERIMENT,
                        help="MLflow experiment for the packaging run (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per exporter pass
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # one line per folded node
    style_map = args.style_map or None
    if style_map == config.DEFAULT_STYLE_MAP and not Path(style_map).exists():
        style_map = str(Path(__file__).resolve().parent / config.DEFAULT_STYLE_MAP)
    from neuralstyle.builder.packaging import package_models

    try:
        result = package_models(
            model_name=args.model_name, alias=args.alias, checkpoints=args.checkpoint,
            style_map=style_map, force=args.force, style_images=args.style_image,
            tracking_uri=args.tracking_uri, experiment=args.experiment,
            force_champion=args.force_champion,
        )
    except Exception as exc:
        if is_input_error(exc) or isinstance(exc, (FileNotFoundError, ValueError)):
            print(f"package_models: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 2
        raise
    uri = f"models:/{result.name}@{result.alias or args.alias}"
    if result.created:
        print(f"registered {result.name} version {result.version} as {uri} (run {result.run_id})")
        print(f"  evaluation: {result.evaluation}")
        for key, value in sorted(result.metrics.items()):
            print(f"  {key} = {value:.3g}")
    else:
        print(f"{result.name} version {result.version} already holds these weights and code: "
              "registry left as it is (use --force for a new version)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

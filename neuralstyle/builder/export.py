"""ONNX export of a rebuilt network, and proof that the exported file computes what the module does.

Every kind of network (``neuralstyle.builder.kinds``) exports through here, so every served file
has dynamic height and width and passes the same bound.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

EXPORT_TOLERANCE = 1e-4  # exported ONNX vs the PyTorch module, 0..1 scale


def export_onnx(
    module, example: tuple, path: Path, input_names: list[str], dynamic: bool = True
) -> None:
    """torch.onnx (dynamo exporter) with dynamic height and width of input 0 (or fixed shapes)."""
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    height = torch.export.Dim("height", min=32, max=8192)
    width = torch.export.Dim("width", min=32, max=8192)
    shapes = ({2: height, 3: width},) + (None,) * (len(example) - 1) if dynamic else None
    # The exporter's optimizer prints every pass to stdout; keep the CLI output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            module, example, str(path), dynamo=True, input_names=input_names,
            output_names=["stylized"], dynamic_shapes=shapes, opset_version=18, verbose=False,
            external_data=False,  # one self-contained file per network (< 2 GB)
        )


def export_error(module, path: Path, inputs: list[tuple]) -> float:
    """Max |exported ONNX - torch module| over a few input sizes (dynamic shapes exercised)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for args in inputs:
        with torch.no_grad():
            ref = module(*args).numpy()
        out = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def check_exports(metrics: dict[str, float]) -> None:
    """Refuse to package when any ``export_max_abs_diff*`` metric is over the bound."""
    worst = max((v for k, v in metrics.items() if k.startswith("export_max_abs_diff")), default=0.0)
    if worst > EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {worst:.2e} > {EXPORT_TOLERANCE}")

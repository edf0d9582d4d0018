"""The 26-style network (``builder.networks.MultiStyleNet``): always in a version.

Rebuilt from ``multistyle26.onnx``, proven against that graph on real photos, exported once;
the catalog addresses its 26 styles, blends and the style map's aliases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuralstyle.builder.export import export_error, export_onnx
from neuralstyle.builder.kinds.base import NetworkKind, QualityJob
from neuralstyle.model.styles import N_STYLES, Catalog, style_name

PARITY_TOLERANCE = 1e-3  # vs the original ONNX graph, 0..1 scale
PARITY_STYLES = ("0", "7", "19", "3:0.5,12:0.5")


def parity_against_original(net, onnx_path: Path, photos: dict[str, np.ndarray]) -> float:
    """Max |torch - original ONNX graph| over the parity styles and photos (0..1 scale)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    catalog = Catalog()
    worst = 0.0
    for photo in photos.values():
        x = np.ascontiguousarray((photo.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        for spec in PARITY_STYLES:
            weights = catalog.resolve(spec).weights
            ref = session.run(None, {"image": x, "style_weights": weights})[0]
            with torch.no_grad():
                out = net(torch.from_numpy(x), torch.from_numpy(weights)).numpy()
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


class MultiStyle(NetworkKind):
    """Dumoulin et al.'s 26 styles in one network, conditioned on a style-weights vector."""

    name = "multistyle"

    def identity(self) -> dict:
        from neuralstyle.builder import weights

        return {"weights": weights.MULTISTYLE26.sha256}

    def build(self, staging: Path, catalog: Catalog) -> tuple[dict[str, float], dict[str, str]]:
        import torch

        from neuralstyle.builder import samples, weights

        source_path = weights.locate(weights.MULTISTYLE26)
        net = weights.load_multistyle26(source_path)
        photos = {name: samples.sample_rgb(name) for name in ("astronaut", "chelsea")}
        parity = parity_against_original(net, source_path, photos)
        if parity > PARITY_TOLERANCE:
            raise RuntimeError(f"rebuilt network differs from the original graph by {parity:.2e}"
                               f" > {PARITY_TOLERANCE}: refusing to package")
        w7 = torch.from_numpy(Catalog().resolve("7").weights)
        path = staging / catalog.multistyle_file
        export_onnx(net, (torch.rand(1, 3, 64, 96), w7), path, ["image", "style_weights"])
        checks = [(torch.rand(1, 3, h, w), w7) for h, w in ((97, 131), (128, 128))]
        metrics = {"parity_max_abs_diff": parity, "export_max_abs_diff": export_error(net, path, checks)}
        params = {"weight_source": weights.MULTISTYLE26.source,
                  "weight_sha256": weights.MULTISTYLE26.sha256}
        return metrics, params

    def quality_jobs(self, staging: Path, catalog: Catalog) -> list[QualityJob]:
        # One entry per style: a blend runs fast only when each style in it may.
        return [QualityJob(style_name(i), catalog.multistyle_file,
                           [{"style_weights": catalog.resolve(str(i)).weights}])
                for i in range(N_STYLES)]

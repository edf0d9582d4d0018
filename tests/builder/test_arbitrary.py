"""Arbitrary style (any painting): the rebuilt networks against the original int8 graphs.

The oracle is the pinned ``arbitrary_predict.onnx`` / ``arbitrary_transform.onnx`` run by
onnxruntime (the predictor as written, ``oracle.graph_as_written``) at their native 256 / 384 px,
on real photos and real textures from scikit-image. The original is a fully int8 graph (even its
instance-norm statistics are int8), so it is chaotic: moving 10 of 147,456 input pixels by one
8-bit level moves its own output by ~0.01-0.04 mean. Each figure is printed beside that noise
floor, measured on the same pair. The int8 emulation (``load_arbitrary(int8=True)``), which
repeats onnxruntime's own arithmetic (x86-64 MLAS kernels), matches both graphs bit for bit here:
the predictor's style vector and the transformer's pixels, so the whole method too.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from oracle import MEAN_BAR, PSNR_BAR, as_written_options, figures
from PIL import Image

from neuralstyle.builder import weights
from neuralstyle.builder.arbitrary import (
    MLAS_THREADS,
    NATIVE_CONTENT_SIZE,
    STYLE_SIZE,
    Conv,
    _mlas_conv,
    _same_pad,
    load_arbitrary,
)
from neuralstyle.builder.export import EXPORT_TOLERANCE, export_error, export_onnx
from neuralstyle.builder.samples import PAINTINGS, sample_painting, sample_rgb
from neuralstyle.model.imaging import centre_square

PHOTOS = ("astronaut", "chelsea", "coffee")
VECTOR_QUANTIZE = "mobilenet_conv/Conv/BiasAdd_int8_quantize"  # the source's grid of the vector


@functools.lru_cache(maxsize=2)
def original(name: str) -> ort.InferenceSession:
    """The original graph: the predictor as written (``oracle.graph_as_written``'s options: its
    fused kernels saturate on CPUs without VNNI) on ``MLAS_THREADS`` intra-op threads, the transformer
    as onnxruntime optimizes it by default (the kernels the int8 emulation repeats; the same
    pixels as written, here).

    Why pin the predictor's threads: MLAS splits a float GEMM among threads, and a narrower
    slice sums in longer K blocks (``arbitrary._stride_k``), so the graph's own float32 sums
    depend on the thread count (on 4 threads, thousands of float32 values of its 16x16 project
    convolutions, here), and with them, rarely, an int8 level; the int8 emulation repeats the
    split for ``MLAS_THREADS`` (and for other counts, ``Int8Points.threads``).
    """
    if name == "predict":
        return ort.InferenceSession(str(weights.locate(weights.ARBITRARY_PREDICT)),
                                    as_written_options(MLAS_THREADS), providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(weights.locate(weights.ARBITRARY_TRANSFORM)),
                                providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def served():
    """The networks as served: plain float."""
    return load_arbitrary()


def prepared(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square at ``size`` px in 0..1, as the original method prepares its inputs."""
    return np.asarray(centre_square(Image.fromarray(rgb), size), np.float32) / 255.0


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def original_vector(painting: np.ndarray) -> np.ndarray:
    return original("predict").run(None, {"style_image": painting[None]})[0].reshape(1, -1)


def original_stylized(photo: np.ndarray, vector: np.ndarray) -> np.ndarray:
    feeds = {"content_image": photo[None], "mobilenet_conv/Conv/BiasAdd": vector.reshape(1, 1, 1, -1)}
    return original("transform").run(None, feeds)[0][0]


def nudged(x: np.ndarray, seed: int) -> np.ndarray:
    """10 pixels moved by one 8-bit level: what the original should not care about."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    for y, col in rng.integers(0, x.shape[0], (10, 2)):
        x[y, col, 0] += 1 / 255 if x[y, col, 0] < 0.5 else -1 / 255
    return x


@pytest.fixture(scope="module")
def predictor8():
    """The painting -> vector network on the source's int8 grid (``load_arbitrary(int8=True)``)."""
    return load_arbitrary(int8=True)[0]


@pytest.mark.parametrize("name", PAINTINGS)
def test_predictor_matches_original_graph(served, predictor8, name: str) -> None:
    """Served float: within 3% of the original's vector. On the int8 grid (computed as
    onnxruntime computes it: MLAS's float32 summation orders, see ``arbitrary._mlas_conv``):
    every one of the 100 entries the original's own int8 value."""
    predictor, _ = served
    painting = prepared(sample_painting(name), STYLE_SIZE)
    ref = original_vector(painting)
    with torch.no_grad():
        ours = predictor(nchw(painting)).numpy()
        levels = predictor8.q.levels(predictor8(nchw(painting)), VECTOR_QUANTIZE).numpy()
    want = predictor8.q.levels(torch.from_numpy(ref), VECTOR_QUANTIZE).numpy()
    rel = float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))
    cos = float((ours * ref).sum() / np.linalg.norm(ours) / np.linalg.norm(ref))
    same = float((levels == want).mean())
    print(f"style vector {name}: float: relative difference {rel:.4f}, cosine {cos:.6f}; int8 grid: "
          f"{same:.0%} of 100 entries identical (largest difference "
          f"{int(np.abs(levels - want).max())} levels)")
    assert cos >= 0.999 and rel <= 0.03
    assert same == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", PAINTINGS)
def test_whole_method_matches_original_graph(served, name: str) -> None:
    """Painting -> vector -> stylized photo at 384 px, ours (float) vs the original graphs."""
    predictor, transformer = served
    painting = prepared(sample_painting(name), STYLE_SIZE)
    ref_vector = original_vector(painting)
    with torch.no_grad():
        vector = predictor(nchw(painting))
    lines, within_bar = [], 0
    for photo_name in PHOTOS:
        photo = prepared(sample_rgb(photo_name), NATIVE_CONTENT_SIZE)
        ref = original_stylized(photo, ref_vector)
        with torch.no_grad():
            ours = transformer(nchw(photo), vector).numpy()[0].transpose(1, 2, 0)
            same_vector = transformer(nchw(photo), torch.from_numpy(ref_vector)).numpy()
        mean, psnr = figures(ours, ref)
        t_mean, t_psnr = figures(same_vector[0].transpose(1, 2, 0), ref)
        floor = [figures(original_stylized(nudged(photo, s), original_vector(nudged(painting, s))), ref)
                 for s in range(2)]
        f_mean, f_psnr = float(np.mean([f[0] for f in floor])), float(np.mean([f[1] for f in floor]))
        lines.append(f"{name} on {photo_name} 384x384: mean {mean:.4f} PSNR {psnr:.1f} dB "
                     f"(transformer alone {t_mean:.4f} / {t_psnr:.1f} dB; the original's own "
                     f"noise floor {f_mean:.4f} / {f_psnr:.1f} dB)")
        within_bar += mean <= MEAN_BAR and psnr >= PSNR_BAR
        # The bar, or the original's own noise floor where the original itself cannot hold it.
        assert mean <= max(MEAN_BAR, 1.25 * f_mean), lines[-1]
        assert psnr >= min(PSNR_BAR, f_psnr - 1.5), lines[-1]
    print("\n".join(lines) + f"\n{within_bar}/{len(PHOTOS)} within the bar outright")


@pytest.fixture(scope="module")
def transformer8():
    """The vector + photo -> stylized network on the source's int8 grid."""
    return load_arbitrary(int8=True)[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAINTINGS)
def test_int8_emulation_matches_original_end_to_end(served, predictor8, transformer8, name: str) -> None:
    """The whole method on the original's int8 grid, both networks computed as onnxruntime
    computes them (its integer kernels where it fuses QDQ ops, MLAS's float summation orders
    elsewhere): painting -> int8 predictor -> vector -> int8 transformer -> photo at 384 px,
    against the original graphs end to end (their own vector), within the issue's bar on every
    pair, grey textures included; the served float networks are printed beside it."""
    predictor, transformer = served
    painting = prepared(sample_painting(name), STYLE_SIZE)
    ref_vector = original_vector(painting)
    with torch.no_grad():
        vector8 = predictor8(nchw(painting))
        vector = predictor(nchw(painting))
    levels = predictor8.q.levels(vector8, VECTOR_QUANTIZE)
    want = predictor8.q.levels(torch.from_numpy(ref_vector), VECTOR_QUANTIZE)
    same_vector = float((levels == want).double().mean())
    results = []
    for photo_name in PHOTOS:
        photo = prepared(sample_rgb(photo_name), NATIVE_CONTENT_SIZE)
        ref = original_stylized(photo, ref_vector)
        with torch.no_grad():
            emulated = transformer8(nchw(photo), vector8).numpy()[0].transpose(1, 2, 0)
            floating = transformer(nchw(photo), vector).numpy()[0].transpose(1, 2, 0)
        e_mean, e_psnr = figures(emulated, ref)
        f_mean, f_psnr = figures(floating, ref)
        same = float((np.abs(emulated - ref) < 1e-6).mean())
        line = (f"{name} on {photo_name}, whole method: int8 emulation {e_mean:.4f} / {e_psnr:.1f} dB "
                f"({same_vector:.0%} of the vector's int8 levels and {same:.3%} of the pixels "
                f"identical), float {f_mean:.4f} / {f_psnr:.1f} dB")
        results.append((line, e_mean <= MEAN_BAR and e_psnr >= PSNR_BAR))
    print("\n".join(line for line, _ in results))
    assert same_vector == 1.0, results[0][0]
    assert all(ok for _, ok in results), [line for line, ok in results if not ok]


def graph_with_outputs(path, names: list[str], options: ort.SessionOptions | None = None
                       ) -> ort.InferenceSession:
    """The original graph with some of its internal tensors exposed as outputs."""
    model = onnx.load(str(path))
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in names:
        model.graph.output.append(inferred[name])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_int8_predictor_reproduces_each_convolution_of_the_original(predictor8, threads: int) -> None:
    """Op for op, in float32: fed onnxruntime's own input to each of the predictor's 53 Conv
    nodes (the graph as written, on ``threads`` intra-op threads), the rebuild's convolution
    (``arbitrary._mlas_conv``, split among as many threads) gives the same float32 output, every
    value. The thread counts matter: on 2, MLAS reduces the last 1x1 conv (one pixel) in a
    different tree; on 4, it splits the 8x8 layers' GEMMs into slices that sum in longer blocks."""
    path = weights.locate(weights.ARBITRARY_PREDICT)
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    session = graph_with_outputs(path, [t for n in convs for t in (n.input[0], n.output[0])],
                                 as_written_options(threads))
    painting = prepared(sample_painting("hubble_deep_field"), STYLE_SIZE)
    _, *inner = session.run(None, {"style_image": painting[None]})
    layers = [m for m in predictor8.modules() if isinstance(m, Conv)]
    assert len(layers) == len(convs)
    off = {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = torch.from_numpy(inner[2 * i])  # the original's own input to this conv
            x = _same_pad(x, layer.stride) if layer.weight.shape[-1] == 3 else x
            ours = _mlas_conv(x, layer.weight, layer.bias, layer.stride, layer.groups, threads)
            off[layer.name] = int((ours.numpy() != inner[2 * i + 1]).sum())
    print(f"int8 predictor, {threads} thread(s): {sum(off.values())} float32 values off the "
          f"original's in its {len(convs)} convolutions")
    assert not any(off.values()), {k: v for k, v in off.items() if v}


def test_int8_rebuild_reproduces_each_stage_of_the_original() -> None:
    """Op for op: fed the original's own input to a stage, the int8-grid rebuild gives its output.

    Proves the architecture, padding, norms and weights. Computed as onnxruntime computes it
    (integer kernels where it fuses, MLAS's float summation order elsewhere) it is exact on
    x86-64 with AVX2/FMA (0 values off); the margin is for other CPUs' kernels.
    """
    _, transformer = load_arbitrary(int8=True)
    stages = [f"transformer/residual/residual{i}/add" for i in range(1, 6)]
    path = weights.locate(weights.ARBITRARY_TRANSFORM)
    graph = onnx.load(str(path)).graph
    dequantized = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    names = [dequantized["transformer/contract/conv3/Relu"]] + [dequantized[s] for s in stages]
    session = graph_with_outputs(path, names)
    photo = prepared(sample_rgb("astronaut"), NATIVE_CONTENT_SIZE)
    vector = original_vector(prepared(sample_painting("hubble_deep_field"), STYLE_SIZE))
    feeds = {"content_image": photo[None], "mobilenet_conv/Conv/BiasAdd": vector.reshape(1, 1, 1, -1)}
    out, *inner = session.run(None, feeds)
    style = transformer.q(torch.from_numpy(vector.reshape(1, -1, 1, 1)), "mobilenet_conv/Conv/BiasAdd_int8")
    with torch.no_grad():
        x = nchw(photo)
        for layer in transformer.contract.values():
            x = layer(x)
        results = [("contract", x, inner[0])]
        for i, block in enumerate(transformer.residual.values()):
            given = torch.from_numpy(inner[i])  # the original's own input to this block
            results.append((f"residual{i + 1}", block(given, style), inner[i + 1]))
    for name, ours, ref in results:
        ours = ours.numpy()
        off = float((np.abs(ours - ref) > 1e-4).mean())
        print(f"int8 rebuild, stage {name}: {off:.5%} of values off the original's, "
              f"max {np.abs(ours - ref).max():.3g}")
        assert off <= 0.001


@pytest.mark.slow
def test_transformer_export_has_dynamic_size(served, tmp_path) -> None:
    predictor, transformer = served
    vector = torch.randn(1, 100)
    export_onnx(transformer, (torch.rand(1, 3, 64, 96), vector), tmp_path / "t.onnx",
                ["image", "style_vector"])
    sizes = [(32, 48), (200, 132), (300, 452)]
    err = export_error(transformer, tmp_path / "t.onnx", [(torch.rand(1, 3, h, w), vector) for h, w in sizes])
    export_onnx(predictor, (torch.rand(1, 3, 256, 256),), tmp_path / "p.onnx", ["painting"], dynamic=False)
    err_p = export_error(predictor, tmp_path / "p.onnx", [(torch.rand(1, 3, 256, 256),)])
    print(f"arbitrary export vs torch: transformer {err:.2e} (sizes {sizes}), predictor {err_p:.2e}")
    assert err <= EXPORT_TOLERANCE and err_p <= EXPORT_TOLERANCE


def test_arbitrary_weights_sha256_is_checked(tmp_path) -> None:
    corrupt = tmp_path / "arbitrary_transform.onnx"
    data = bytearray(weights.locate(weights.ARBITRARY_TRANSFORM).read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="does not have the pinned sha256"):
        load_arbitrary(transform_path=corrupt)

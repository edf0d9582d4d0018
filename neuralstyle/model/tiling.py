"""Exact tiled inference: any photo size, in bounded memory, the same picture as a one-piece run.

Every network the model serves normalises with whole-image statistics (instance norm), so a tile
cannot simply be run alone (URST's thumbnail statistics give another picture). Here the exported
graph is cut at each normalisation (OpenVINO ``MVN``) into pieces, each compiled on its own:

* piece k computes, band by band, what the next normalisation needs (``z``); the band's core rows
  are kept and their per-channel count/mean/M2 merged in float64 (Chan et al.'s stable formula);
* piece k+1 then applies ``(z - mean) * invstd`` in its graph, with the whole-image statistics, and
  carries on to the next normalisation (or the output).

Tiles are full-width bands: rows of the photo with origins on multiples of 4 (the networks halve
twice), each piece reading a halo of rows as wide as its own reach (sum of its convolutions' half
kernels, rounded up to the coarsest grid it touches: 4 rows for the 9x9 conv, 2 for a stride-2
3x3, 4 (one quarter-size row) for a 3x3 at quarter size). Left and right edges are the photo's
true borders, so the network's own reflect padding stays as it is there; top and bottom bands
start at the photo's true borders too, and an interior band's padded rows lie in its halo and are
cut off. What must survive between
pieces (each ``z``, and a residual stream that skips one) is kept whole: in memory when small, else
spilled to an unlinked temporary file read back band by band (``SPILL_ENV``), so resident memory
stays at a few bands whatever the photo.

A photo of at most ``TILE_PIXELS`` is one band: the whole network runs in one piece, on its static
compile (``runtime.Network``), exactly as before tiling existed.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

# A photo of at most this many pixels runs in one piece (its own static compile, fastest);
# larger ones in bands of about BAND_PIXELS each. OpenVINO keeps each piece's buffers at its
# band size, so memory goes with BAND_PIXELS (bench/results/fullres.md).
TILE_PIXELS = 1024 * 1024
BAND_PIXELS = int(os.environ.get("STYLIZE_BAND_PIXELS", 512 * 1024))
GRID = 4  # tile origins and sides are multiples of this: two stride-2 convolutions
MIN_BAND_ROWS = 32  # a reflect pad needs more rows than it pads, at every scale
SPILL_BYTES = 64 * 1024 * 1024  # a tensor kept between pieces above this goes to a temporary file
SPILL_ENV = "STYLIZE_SPILL_DIR"  # where (default: the system's temporary folder)
# A probe size whose multiples cannot be mistaken for channel counts: finds each tensor's row axis.
_PROBE_H, _PROBE_W = 4 * 23, 4 * 29
_SPATIAL = {"Convolution", "GroupConvolution"}
_REFUSED = {"MaxPool", "AvgPool", "ReduceMean", "ReduceSum", "Transpose2", "DeformableConvolution"}

Key = tuple[str, int]  # (op friendly name, output port): one tensor of the full graph


@dataclass
class _Tensor:
    """A tensor that crosses pieces: its row axis and scale (photo rows per tensor row)."""

    key: Key
    axis: int
    scale: int
    shape: tuple[int, ...]  # as probed, for channel counts; rows and columns vary


@dataclass
class _Norm:
    """One cut normalisation: what it normalises, its epsilon, and which piece computes ``z``."""

    name: str
    z: Key
    eps: float
    inside_sqrt: bool
    producer: int


@dataclass
class Piece:
    """One compiled piece: inputs fed by name, outputs in order, the rows of halo it reads."""

    index: int
    model: object  # ov.Model
    inputs: list[str]  # crossing tensors' param names, "mean:<norm>"/"invstd:<norm>", graph inputs
    outputs: list[Key]
    halo: int  # photo rows read above and below a band's core
    network: object = None  # runtime.Network, compiled on first use


@dataclass
class Plan:
    """The pieces of one network, and what crosses between them."""

    pieces: list[Piece]
    tensors: dict[Key, _Tensor]
    norms: dict[str, _Norm]
    image: str  # the photo's input name
    image_axis: int
    result: Key
    last_use: dict[Key, int] = field(default_factory=dict)


def _param_name(key: Key) -> str:
    return f"t:{key[0]}:{key[1]}"


def _row_axis(shape: list[int]) -> tuple[int, int] | None:
    """(axis, photo rows per tensor row) of a probed shape, or None for a small tensor."""
    hits = [(axis, _PROBE_H // dim) for axis, dim in enumerate(shape) if axis > 0
            and dim > 0 and _PROBE_H % dim == 0 and _PROBE_H // dim in (1, 2, 4)
            and dim * (_PROBE_H // dim) == _PROBE_H and dim >= _PROBE_H // 4]
    if not hits:
        return None
    if len(hits) > 1:
        raise ValueError(f"cannot tell the row axis of a tensor shaped {shape}")
    return hits[0]


def split(model, image: str) -> Plan:
    """Cut ``model`` (an ov.Model with dynamic height and width) at every MVN into pieces."""
    import openvino as ov
    from openvino import opset13 as ops

    ordered = model.get_ordered_ops()
    names = [op.get_friendly_name() for op in ordered]
    if len(set(names)) != len(names):
        raise ValueError("ops need unique names to be cut into pieces")
    image_param = next(p for p in model.get_parameters() if p.output(0).get_any_name() == image)
    rank = image_param.get_output_partial_shape(0).rank.get_length()
    image_axis = 1 if image_param.get_output_partial_shape(0)[rank - 1].is_static else 2
    probe = model.clone()
    shape = [1, _PROBE_H, _PROBE_W, 3] if image_axis == 1 else [1, 3, _PROBE_H, _PROBE_W]
    probe.reshape({image: shape})
    probed = {op.get_friendly_name(): op for op in probe.get_ordered_ops()}

    stage: dict[str, int | None] = {}
    for op in ordered:
        name, kind = op.get_friendly_name(), op.get_type_name()
        if kind == "Parameter":
            stage[name] = 0 if op.output(0).get_any_name() == image else None
            continue
        sources = [inp.get_source_output().get_node() for inp in op.inputs()]
        steps = [stage[s.get_friendly_name()] + (s.get_type_name() == "MVN")
                 for s in sources if stage.get(s.get_friendly_name()) is not None]
        stage[name] = max(steps) if steps else None
        if stage[name] is not None and kind in _REFUSED:
            raise ValueError(f"{kind} {name} cannot be tiled exactly")

    def tensor(output) -> _Tensor:
        node = output.get_node()
        key = (node.get_friendly_name(), output.get_index())
        dims = [d.get_length() for d in probed[key[0]].get_output_partial_shape(key[1])]
        found = _row_axis(dims)
        if found is None:
            raise ValueError(f"{key[0]} ({dims}) crosses pieces but has no row axis")
        return _Tensor(key, found[0], found[1], tuple(dims))

    tensors: dict[Key, _Tensor] = {}
    norms: dict[str, _Norm] = {}
    for op in ordered:
        name = op.get_friendly_name()
        if stage[name] is None or op.get_type_name() == "Parameter":
            continue
        if op.get_type_name() == "MVN":
            attrs = op.get_attributes()
            axes = [int(a) % 4 for a in probed[name].input_value(1).get_node().get_vector()]
            if not attrs["normalize_variance"] or sorted(axes) != [2, 3]:
                raise ValueError(f"MVN {name} is not an instance norm over height and width")
            z = tensor(op.input_value(0))
            tensors[z.key] = z
            norms[name] = _Norm(name, z.key, float(attrs["eps"]),
                                attrs["eps_mode"].upper() == "INSIDE_SQRT", stage[name])
            continue
        for inp in op.inputs():
            src = inp.get_source_output()
            sname = src.get_node().get_friendly_name()
            if (stage.get(sname) is not None and src.get_node().get_type_name()
                    not in ("MVN", "Parameter") and stage[sname] != stage[name]):
                t = tensor(src)
                tensors[t.key] = t
    result_op = model.get_results()[0]
    result = tensor(result_op.input_value(0))
    tensors[result.key] = result
    last = max(v for v in stage.values() if v is not None)
    produced: dict[int, list[Key]] = {}
    for key in tensors:
        produced.setdefault(stage[key[0]], []).append(key)

    pieces = []
    for k in range(last + 1):
        clone = model.clone()
        by_name = {op.get_friendly_name(): op for op in clone.get_ordered_ops()}
        params: dict[str, object] = {}
        param = functools.partial(_parameter, params)
        for op in clone.get_ordered_ops():
            oname = op.get_friendly_name()
            if stage.get(oname) != k or op.get_type_name() in ("Parameter", "MVN", "Result"):
                continue
            for inp in op.inputs():
                src = inp.get_source_output()
                snode = src.get_node()
                sname = snode.get_friendly_name()
                if stage.get(sname) is None or snode.get_type_name() == "Parameter":
                    continue
                if snode.get_type_name() == "MVN":
                    norm = norms[sname]
                    zsrc = snode.input_value(0)
                    z = param(_param_name(norm.z), zsrc.get_element_type(), zsrc.get_partial_shape())
                    channels = zsrc.get_partial_shape()[1]
                    stat = ov.PartialShape([1, channels, 1, 1])
                    mean = param(f"mean:{sname}", ov.Type.f32, stat)
                    inv = param(f"invstd:{sname}", ov.Type.f32, stat)
                    inp.replace_source_output(ops.multiply(ops.subtract(z, mean), inv).output(0))
                elif stage[sname] != k:
                    key = (sname, src.get_index())
                    inp.replace_source_output(
                        param(_param_name(key), src.get_element_type(), src.get_partial_shape())
                        .output(0))
        outs = produced.get(k, [])
        results = []
        for key in outs:
            if key == result.key:
                results.append(clone.get_results()[0])
            else:
                results.append(ops.result(by_name[key[0]].output(key[1])))
        reached = _reachable_params(results)
        piece_model = ov.Model(results, reached, f"piece{k}")
        inputs = [p.output(0).get_any_name() for p in reached]
        pieces.append(Piece(k, piece_model, inputs, outs,
                            _halo(clone, k, stage, probed, by_name)))
    plan = Plan(pieces, tensors, norms, image, image_axis, result.key)
    for piece in pieces:
        for name in piece.inputs:
            if name.startswith("t:"):
                sname, port = name[2:].rsplit(":", 1)
                plan.last_use[(sname, int(port))] = piece.index
    return plan


def _parameter(made: dict, name: str, element_type, shape):
    """The piece's input called ``name`` (made once per piece, fed by that name)."""
    from openvino import opset13 as ops

    if name not in made:
        made[name] = ops.parameter(shape, element_type, name=name)
        made[name].output(0).get_tensor().set_names({name})
    return made[name]


def _reachable_params(results) -> list:
    """The Parameter nodes the results depend on, in a stable order (first met first)."""
    seen: set[int] = set()
    found = []
    stack = [r for r in reversed(results)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.get_type_name() == "Parameter":
            found.append(node)
        for inp in node.inputs():
            stack.append(inp.get_source_output().get_node())
    return sorted(found, key=lambda p: p.get_friendly_name())


def _halo(clone, k: int, stage: dict, probed: dict, by_name: dict) -> int:
    """Photo rows a band of piece ``k`` must read beyond its core: its convolutions' reach,
    rounded up to the coarsest grid any of its tensors lies on (so every band stays aligned)."""
    reach, grid = 0, 1
    for name, s in stage.items():
        if s != k or name not in by_name:
            continue
        op = probed[name]
        for port in range(op.get_output_size()):
            shape = op.get_output_partial_shape(port)
            if shape.is_static:
                found = _row_axis([d.get_length() for d in shape])
                if found:
                    grid = max(grid, found[1])
        if op.get_type_name() in _SPATIAL:
            # Its input is padded (no row axis to probe): its scale is the output's over the stride.
            dims = [d.get_length() for d in op.get_output_partial_shape(0)]
            _, out_scale = _row_axis(dims)
            scale = out_scale // int(op.get_attributes()["strides"][0])
            kernel = op.input_value(1).get_partial_shape()[-2].get_length()
            reach += (kernel // 2) * scale
            grid = max(grid, scale)
    if GRID % grid:
        raise ValueError(f"piece {k} works on a grid of {grid} rows, not a divisor of {GRID}")
    return -(-reach // grid) * grid


def bands(height: int, width: int, tile_pixels: int = TILE_PIXELS,
          band_pixels: int | None = None) -> list[tuple[int, int]]:
    """Core rows [start, stop) of each band: one band up to ``tile_pixels``, else even bands of
    about ``band_pixels`` (default: BAND_PIXELS, at most ``tile_pixels``), their origins on the
    4-row grid (``height`` is a multiple of 4: the photo is padded to one)."""
    if height * width <= tile_pixels:
        return [(0, height)]
    band_pixels = min(tile_pixels, band_pixels or BAND_PIXELS)
    count = -(-height * width // band_pixels)
    rows = max(MIN_BAND_ROWS, -(-height // count // GRID) * GRID)
    if count == 1 or rows >= height:
        return [(0, height)]
    starts = list(range(0, height, rows))
    if height - starts[-1] < MIN_BAND_ROWS:
        starts.pop()  # the last band is too thin to pad: the one before takes it
    return list(zip(starts, starts[1:] + [height], strict=True))


class _Store:
    """A tensor [1, C, rows, W] kept whole between pieces: band cores written once, read back with
    halos. In memory when small; else in an unlinked temporary file, channel-major as the network
    lays it out (one contiguous run per channel and band: no transposes), so a band's rows come
    back by ``pread`` without the whole tensor ever being resident."""

    def __init__(self, tensor: _Tensor, rows: int, columns: int) -> None:
        if tensor.axis != 2 or len(tensor.shape) != 4:
            raise ValueError(f"{tensor.key[0]} is not laid out [1, C, rows, columns]")
        self.channels, self.rows, self.columns = tensor.shape[1], rows, columns
        self.file = None
        self.memory = None
        if self.channels * rows * columns * 4 > SPILL_BYTES:
            self.file = tempfile.TemporaryFile(dir=os.environ.get(SPILL_ENV) or None)
        else:
            self.memory = np.empty((1, self.channels, rows, columns), np.float32)

    def _offset(self, channel: int, row: int) -> int:
        return (channel * self.rows + row) * self.columns * 4

    def write(self, start: int, band: np.ndarray) -> None:
        """Rows ``start..`` from a band [1, C, rows, W]."""
        if self.memory is not None:
            self.memory[:, :, start:start + band.shape[2]] = band
            return
        for c in range(self.channels):
            data = np.ascontiguousarray(band[0, c], np.float32)
            os.pwrite(self.file.fileno(), memoryview(data).cast("B"), self._offset(c, start))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop`` as [1, C, rows, W]."""
        if self.memory is not None:
            return np.ascontiguousarray(self.memory[:, :, start:stop])
        rows = np.empty((1, self.channels, stop - start, self.columns), np.float32)
        for c in range(self.channels):
            view = memoryview(rows[0, c]).cast("B")
            done = 0
            while done < len(view):
                got = os.preadv(self.file.fileno(), [view[done:]], self._offset(c, start) + done)
                if got <= 0:
                    raise OSError("spilled rows could not be read back")
                done += got
        return rows

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.memory = None


class _Stats:
    """Per-channel count, mean and M2 in float64, merged band by band (Chan et al. 1979)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, z: np.ndarray) -> None:
        """A band's core of ``z`` [1, C, rows, W]."""
        channels = z.shape[1]
        count = z.shape[2] * z.shape[3]
        mean = np.empty(channels)
        m2 = np.empty(channels)
        for c in range(channels):
            x = z[0, c]
            mean[c] = x.sum(dtype=np.float64) / count
            shift = np.float32(mean[c])
            d = x - shift  # sum((x - m)^2) = sum((x - shift)^2) - n (m - shift)^2, exactly
            m2[c] = np.square(d, out=d).sum(dtype=np.float64) - count * (mean[c] - float(shift)) ** 2
        if self.mean is None:
            self.n, self.mean, self.m2 = count, mean, m2
            return
        total = self.n + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta * delta * self.n * count / total
        self.n = total

    def feeds(self, norm: _Norm) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) as [1, C, 1, 1] float32, the norm's epsilon as the graph has it."""
        var = np.maximum(self.m2 / self.n, 0.0)
        std = np.sqrt(var + norm.eps) if norm.inside_sqrt else np.sqrt(var) + norm.eps
        shape = (1, -1, 1, 1)
        return (self.mean.astype(np.float32).reshape(shape),
                (1.0 / std).astype(np.float32).reshape(shape))


class TiledNetwork:
    """A network run band by band (``run``), cut once into pieces on first need."""

    def __init__(self, whole, image: str = "image", tile_pixels: int = TILE_PIXELS) -> None:
        self.whole = whole  # runtime.Network: the one-band case, and the compile settings
        self.image = image
        self.tile_pixels = tile_pixels
        self._plan: Plan | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def precision(self) -> str:
        return self.whole.precision

    def plan(self) -> Plan:
        """The pieces, split and compiled once (~0.05 s per piece)."""
        with self._lock:
            if self._plan is None:
                plan = split(self.whole.model, self.image)
                for piece in plan.pieces:
                    piece.network = self.whole.compile_piece(piece.model)
                self._plan = plan
        return self._plan

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The network's first output for ``feeds``; photos above ``tile_pixels`` in bands."""
        x = feeds[self.image]
        axis = 1 if x.shape[-1] == 3 else 2
        height, width = x.shape[axis], x.shape[axis + 1]
        cores = bands(height, width, self.tile_pixels)
        if len(cores) == 1:
            return self.whole.run(feeds)[0]
        if self._plan is None and os.getpid() != self._pid:
            # A forked child (luigi's workers) cannot compile (runtime.Network): the whole network
            # runs at once, as before tiling; the same picture, not the bounded memory.
            return self.whole.run(feeds, release_memory=True)[0]
        return run_tiled(self.plan(), feeds, cores, height, width)


def run_tiled(plan: Plan, feeds: dict[str, np.ndarray], cores: list[tuple[int, int]],
              height: int, width: int) -> np.ndarray:
    """Every piece over every band, in order; the output assembled from the band cores."""
    image = feeds[plan.image]
    static = {k: v for k, v in feeds.items() if k != plan.image}
    stores: dict[Key, _Store] = {}
    stats: dict[str, _Stats] = {}
    z_of = {norm.z: name for name, norm in plan.norms.items()}
    result = None
    try:
        for piece in plan.pieces:
            for key in piece.outputs:
                t = plan.tensors[key]
                if key == plan.result:
                    shape = list(t.shape)
                    shape[t.axis] = height // t.scale
                    shape[t.axis + 1] = width // t.scale
                    result = np.empty(shape, np.float32)
                else:
                    stores[key] = _Store(t, height // t.scale, width // t.scale)
                if key in z_of:
                    stats[z_of[key]] = _Stats()
            for i, (start, stop) in enumerate(cores):
                low, high = max(0, start - piece.halo), min(height, stop + piece.halo)
                band = {}
                for name in piece.inputs:
                    if name == plan.image:
                        band[name] = np.ascontiguousarray(_rows(image, plan.image_axis, low, high))
                    elif name.startswith("t:"):
                        sname, port = name[2:].rsplit(":", 1)
                        key = (sname, int(port))
                        s = plan.tensors[key].scale
                        band[name] = stores[key].read(low // s, high // s)
                    elif name.startswith(("mean:", "invstd:")):
                        kind, norm = name.split(":", 1)
                        mean, inv = stats[norm].feeds(plan.norms[norm])
                        band[name] = mean if kind == "mean" else inv
                    else:
                        band[name] = static[name]
                outs = piece.network.run(band, release_memory=i == len(cores) - 1)
                for key, out in zip(piece.outputs, outs, strict=True):
                    t = plan.tensors[key]
                    first, last = (start - low) // t.scale, (stop - low) // t.scale
                    core = _rows(out, t.axis, first, last)
                    if key == plan.result:
                        _rows(result, t.axis, start // t.scale, stop // t.scale)[...] = core
                    else:
                        stores[key].write(start // t.scale, core)
                    if key in z_of:
                        stats[z_of[key]].add(core)
            for key in [k for k, last in plan.last_use.items() if last == piece.index]:
                stores.pop(key).close()
    finally:
        for store in stores.values():
            store.close()
        _trim()
    return result


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc, where there is one (None elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _trim() -> None:
    """Hand the freed band arrays back to the OS: a tiled run frees hundreds of band-sized arrays
    in a worker thread's malloc arena, which glibc otherwise keeps (a server's RSS grew ~250 MB
    per round of 2048 px requests under its MALLOC_MMAP_THRESHOLD_ of 32 MB)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _rows(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """A view of rows ``start..stop`` along ``axis``."""
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]

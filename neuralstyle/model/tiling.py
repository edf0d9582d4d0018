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
spilled to the run's one unlinked temporary file (``SPILL_ENV``), read back band by band, a closed
tensor's bytes rewritten by the next ones; so resident memory stays at a few bands whatever the
photo. Spill or recompute was measured (bench/results/fullres.md): the one tensor that can be
recomputed from the photo (the first convolution's output, the largest) is computed again by the
piece that needs it, everything else is spilled (``RECOMPUTE``; spilling it too gives the same
bits).

A photo of at most ``TILE_PIXELS`` is one band, run by the same ``run_tiled`` with a plan of one
piece: the whole network, uncut, on a static compile of its size (``runtime.Network``). One code
path; the cut costs only where a photo needs it (README, "Full resolution": at 2048x2048 the
19-piece run took ~2.2x the CPU time of the static one-piece run).

Where the time of a tiled run goes, and what keeps it down: every band of a piece has one input
size (``window``), so the piece's buffers are made once per photo, not per band; band inputs are
read into buffers reused band after band; outputs are copied once, from the runtime's buffers
into what keeps them (by a second thread, beside the statistics: the runtime waits for both);
kept tensors stay in memory up to ``KEEP_BYTES`` in all, their buffers handed on to the next
ones (fresh pages cost a fault per 4 KiB); statistics are vectorised.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from neuralstyle.model import runtime, stats

# A photo of at most this many pixels runs in one piece (its own static compile, fastest; ~1.1 GB
# of buffers at 2048x2048, held while runs of its size come: runtime.HOLD_S); larger ones in
# bands of about BAND_PIXELS each. A piece's buffers go with BAND_PIXELS, one piece at a time
# (bench/results/fullres.md).
TILE_PIXELS = 2048 * 2048
BAND_PIXELS = int(os.environ.get("STYLIZE_BAND_PIXELS", 512 * 1024))
GRID = 4  # tile origins and sides are multiples of this: two stride-2 convolutions
MIN_BAND_ROWS = 32  # a reflect pad needs more rows than it pads, at every scale
# Tensors kept between pieces stay in memory up to this many bytes in all (a 2048x2048 photo's
# fit); the rest go to temporary files (bench/results/fullres.md: spilling costs ~2 GB/s).
KEEP_BYTES = int(os.environ.get("STYLIZE_KEEP_BYTES", 512 * 1024 * 1024))
# On (the default; "0" turns it off): a full-size normalisation input made from the photo alone
# (the first convolution's: 32 channels, 5.4 GiB at 45 MP) is computed again by the piece that
# applies it instead of being spilled. Measured at 45 MP exact (bench/results/fullres-notes.md), first
# runs of fresh processes: on a quiet machine recomputing took 39.1 and 36.6 s against 47.9 and
# 46.9 s spilling, and wrote 1.5 GiB per photo to the disk against 8.3-8.7; on a machine shared by three other
# sessions (load ~9) it lost once (169 vs 108 s) and tied once (112 s).
RECOMPUTE = os.environ.get("STYLIZE_RECOMPUTE", "1") != "0"
SPILL_ENV = "STYLIZE_SPILL_DIR"  # where (default: the system's temporary folder)
# Photos run in bands one at a time per process, and never beside a one-piece photo larger than
# a 1080p frame; those run beside each other (``stats.Turn``). Each photo in bands already uses
# every core, and holds ~1.1 GB beyond the loaded model, as a 2048x2048 one-piece run does. In
# one process, a 45 MP photo peaked at 2.07 GB beside another, 1.65 GB in turn (59 s for both
# against 63 s at once); at 2.30 GB beside a 2048x2048 photo started 8 s into its run, 1.90 GB
# with that one waiting (19 s instead of 5); beside a 1080p frame at 1.71-1.78 GB, under the 2 GB
# bound, so frames that size keep running beside it (docs/serving.md, "Limits, and why they
# are set this way"). One waiting hands its photo slot back, so small photos keep being served.
BESIDE_BANDS_PIXELS = 1920 * 1080
_TURN = stats.Turn()
# A probe size whose multiples cannot be mistaken for channel counts: finds each tensor's row axis.
_PROBE_H, _PROBE_W = 4 * 23, 4 * 29
_SPATIAL = {"Convolution", "GroupConvolution"}
_REFUSED = {"MaxPool", "AvgPool", "ReduceMean", "ReduceSum", "Transpose2", "DeformableConvolution"}

Key = tuple[str, int]  # (op friendly name, output port): one tensor of the full graph
Convert = Callable[[np.ndarray], np.ndarray]  # elementwise, applied to the output band by band


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
    recomputed: set[Key] = field(default_factory=set)  # made again by their user, not kept


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


def split(model, image: str, recompute: bool | None = None) -> Plan:
    """Cut ``model`` (an ov.Model with dynamic height and width) at every MVN into pieces.

    With ``recompute`` (default ``RECOMPUTE``), a normalisation input made by a piece that reads
    only the graph's inputs (the first convolution, on the photo) is not kept: the piece that
    applies it computes it again from the photo, its halo widened by that reach."""
    recompute = RECOMPUTE if recompute is None else recompute
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

    first_only = {k for k in range(last + 1)}  # pieces fed by graph inputs only
    for op in ordered:
        name = op.get_friendly_name()
        if stage.get(name) is None or op.get_type_name() in ("Parameter", "MVN"):
            continue
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            sname = src.get_friendly_name()
            if stage.get(sname) is not None and src.get_type_name() != "Parameter" and (
                    src.get_type_name() == "MVN" or stage[sname] != stage[name]):
                first_only.discard(stage[name])
    recomputed = {n.z for n in norms.values() if recompute and stage[n.z[0]] in first_only
                  and tensors[n.z].scale == 1}

    pieces = []
    for k in range(last + 1):
        clone = model.clone()
        by_name = {op.get_friendly_name(): op for op in clone.get_ordered_ops()}
        params: dict[str, object] = {}
        param = functools.partial(_parameter, params)
        also: set[int] = set()  # pieces whose ops this one runs again (a recomputed input)
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
                    z = zsrc if norm.z in recomputed else param(
                        _param_name(norm.z), zsrc.get_element_type(), zsrc.get_partial_shape())
                    if norm.z in recomputed:
                        also.add(stage[norm.z[0]])
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
                            _halo(clone, {k} | also, stage, probed, by_name)))
    plan = Plan(pieces, tensors, norms, image, image_axis, result.key, recomputed=recomputed)
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


def _halo(clone, ks: set[int], stage: dict, probed: dict, by_name: dict) -> int:
    """Photo rows a band of a piece must read beyond its core: the reach of the convolutions of
    the stages ``ks`` it runs (its own, and one it recomputes), rounded up to the coarsest grid
    any of its tensors lies on (so every band stays aligned)."""
    reach, grid = 0, 1
    k = max(ks)
    for name, s in stage.items():
        if s not in ks or name not in by_name:
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
    halos into the caller's buffer. In memory while the run's ``_Budget`` allows; else in an
    unlinked temporary file, channel-major as the network lays it out (one contiguous run per
    channel and band: no transposes), so a band's rows come back by ``preadv`` without the whole
    tensor ever being resident."""

    def __init__(self, tensor: _Tensor, rows: int, columns: int, budget: _Budget) -> None:
        if tensor.axis != 2 or len(tensor.shape) != 4:
            raise ValueError(f"{tensor.key[0]} is not laid out [1, C, rows, columns]")
        self.channels, self.rows, self.columns = tensor.shape[1], rows, columns
        self.file = None
        self.memory = None
        self.budget = budget
        self.nbytes = self.channels * rows * columns * 4
        self.buffer = budget.take(self.nbytes)
        self.base = 0
        if self.buffer is not None:
            self.memory = self.buffer.reshape(1, self.channels, rows, columns)
        else:
            self.file = budget.spill_file()
            self.base = budget.spill.take(self.nbytes)

    def _offset(self, channel: int, row: int) -> int:
        return self.base + (channel * self.rows + row) * self.columns * 4

    def write(self, start: int, band: np.ndarray) -> None:
        """Rows ``start..`` from a band [1, C, rows, W] (a view of the runtime's buffer)."""
        if self.memory is not None:
            self.memory[:, :, start:start + band.shape[2]] = band
            return
        for c in range(self.channels):
            data = band[0, c]  # rows of one channel: contiguous when the band is whole rows
            if not data.flags.c_contiguous:
                data = np.ascontiguousarray(data)
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(self.file.fileno(), view[done:], self._offset(c, start) + done)

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Rows ``start..`` into ``out`` [1, C, rows, W] (a band buffer, reused band after band)."""
        stop = start + out.shape[2]
        if self.memory is not None:
            np.copyto(out, self.memory[:, :, start:stop])
            return
        for c in range(self.channels):
            view = memoryview(out[0, c]).cast("B")
            done = 0
            while done < len(view):
                got = os.preadv(self.file.fileno(), [view[done:]], self._offset(c, start) + done)
                if got <= 0:
                    raise OSError("spilled rows could not be read back")
                done += got

    def close(self) -> None:
        if self.file is not None:
            self.budget.spill.give(self.base, self.nbytes)  # the next tensors rewrite its pages
        if self.buffer is not None:
            self.budget.give(self.buffer)
        self.memory = self.buffer = self.file = None


class _Regions:
    """Byte ranges of a run's one spill file: a closed tensor's range is handed to the next ones
    (first fit), new ranges are added at the end with ``posix_fallocate``. Why one file, reused:
    on this ext4 disk, writing new pages of a file ran at ~0.2 GiB/s (block allocation), into
    fallocated ones at ~1.7, over pages written before at ~3.5 (bench/results/fullres.md)."""

    def __init__(self) -> None:
        self.end = 0
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted, merged
        self.fileno = -1

    def take(self, nbytes: int) -> int:
        for i, (offset, size) in enumerate(self.free):
            if size >= nbytes:
                rest = (offset + nbytes, size - nbytes)
                self.free[i:i + 1] = [rest] if rest[1] else []
                return offset
        if self.free and self.free[-1][0] + self.free[-1][1] == self.end:
            offset, _ = self.free.pop()  # the free tail grows instead of a new range after it
        else:
            offset = self.end
        self.end = offset + nbytes
        try:
            os.posix_fallocate(self.fileno, offset, nbytes)
        except OSError:
            pass  # a filesystem without it: written as it comes
        return offset

    def give(self, offset: int, nbytes: int) -> None:
        self.free.append((offset, nbytes))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for start, size in self.free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((start, size))
        self.free = merged


class _Budget:
    """Bytes of kept tensors a run may hold in memory (the rest spill): ``KEEP_BYTES``; and the
    buffers of tensors no longer needed, handed to the next ones (fresh memory costs a page
    fault per 4 KiB on first touch: ~1 s of a 2048 px run before they were reused). The spill
    file (one per run, unlinked, closed with the run) and its ranges live here too."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.free: list[np.ndarray] = []
        self.file = None
        self.spill = _Regions()

    def spill_file(self):
        """The run's spill file, made on first need (``SPILL_ENV``, else the temporary folder)."""
        if self.file is None:
            self.file = tempfile.TemporaryFile(dir=os.environ.get(SPILL_ENV) or None)
            self.spill.fileno = self.file.fileno()
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def take(self, nbytes: int) -> np.ndarray | None:
        """A float32 buffer of ``nbytes`` (a reused one where one fits), or None: over budget."""
        fits = [b for b in self.free if b.nbytes >= nbytes]
        if fits:
            buffer = min(fits, key=lambda b: b.nbytes)
            self.free = [b for b in self.free if b is not buffer]
            return buffer[:nbytes // 4]
        if nbytes > self.left:  # every buffer made, free or not, counts against the limit
            return None
        self.left -= nbytes
        return np.empty(nbytes // 4, np.float32)

    def give(self, buffer: np.ndarray) -> None:
        self.free.append(buffer.base if buffer.base is not None else buffer)


class _Stats:
    """Per-channel count, mean and M2, merged band by band (Chan et al. 1979).

    Each band is shifted by a per-channel estimate of its mean first, so nothing cancels; each
    row's sums are float32 (NumPy's pairwise summation: relative error ~1e-7 x log2(width)) and
    the rows are summed in float64. A few channels at a time, so the shifted copy stays in cache.
    """

    CHUNK_BYTES = 1 << 20

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, z: np.ndarray) -> None:
        """A band's core of ``z`` [1, C, rows, W]."""
        channels = z.shape[1]
        per = z.shape[2] * z.shape[3]
        shift = (z[0, :, ::8, ::8].mean(axis=(1, 2), dtype=np.float64) if self.mean is None
                 else self.mean).astype(np.float32)
        s1, s2 = np.empty(channels), np.empty(channels)
        group = max(1, self.CHUNK_BYTES // (per * 4))
        scratch = np.empty(min(group, channels) * per, np.float32)
        for c in range(0, channels, group):
            x = z[0, c:c + group]
            d = scratch[:x.size].reshape(x.shape)
            np.subtract(x, shift[c:c + group, None, None], out=d)
            s1[c:c + group] = d.sum(axis=2).sum(axis=1, dtype=np.float64)
            np.multiply(d, d, out=d)
            s2[c:c + group] = d.sum(axis=2).sum(axis=1, dtype=np.float64)
        mean = shift.astype(np.float64) + s1 / per
        m2 = np.maximum(s2 - s1 * s1 / per, 0.0)
        if self.mean is None:
            self.n, self.mean, self.m2 = per, mean, m2
            return
        total = self.n + per
        delta = mean - self.mean
        self.mean = self.mean + delta * per / total
        self.m2 = self.m2 + m2 + delta * delta * self.n * per / total
        self.n = total

    def feeds(self, norm: _Norm) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) as [1, C, 1, 1] float32, the norm's epsilon as the graph has it."""
        var = np.maximum(self.m2 / self.n, 0.0)
        std = np.sqrt(var + norm.eps) if norm.inside_sqrt else np.sqrt(var) + norm.eps
        shape = (1, -1, 1, 1)
        return (self.mean.astype(np.float32).reshape(shape),
                (1.0 / std).astype(np.float32).reshape(shape))


class TiledNetwork:
    """A network run band by band (``run``): one band (the whole network, one piece) up to
    ``tile_pixels``; above, cut once into pieces on first need."""

    def __init__(self, whole, image: str = "image", tile_pixels: int = TILE_PIXELS,
                 band_pixels: int | None = None) -> None:
        self.whole = whole  # runtime.Network: the one-band case, and the compile settings
        self.image = image
        self.tile_pixels = tile_pixels
        self.band_pixels = band_pixels
        self._plan: Plan | None = None
        self._single: Plan | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def precision(self) -> str:
        return self.whole.precision

    def plan(self) -> Plan:
        """The pieces, split and compiled once (~0.05 s per piece; each band size then gets a
        static compile of its own on first use, ~0.05 s per piece)."""
        with self._lock:
            if self._plan is None:
                plan = split(self.whole.model, self.image)
                for piece in plan.pieces:
                    piece.network = self.whole.compile_piece(piece.model)
                self._plan = plan
        return self._plan

    def single(self) -> Plan:
        """The whole network as the one piece of a plan: no cut, no normalisation fed."""
        with self._lock:
            if self._single is None:
                inputs = list(self.whole.input_names)
                image_axis = 1  # the compiled network takes uint8 pixels [1, H, W, 3]
                key = ("whole", 0)
                tensor = _Tensor(key, 1, 1, ())
                self._single = Plan([Piece(0, self.whole.model, inputs, [key], 0, self.whole)],
                                    {key: tensor}, {}, self.image, image_axis, key)
        return self._single

    def run(self, feeds: dict[str, np.ndarray], convert: Convert | None = None) -> np.ndarray:
        """The network's first output for ``feeds``; photos above ``tile_pixels`` in bands.
        ``convert`` (elementwise, e.g. to 8-bit) is applied band by band as the output is
        assembled, so the unconverted output never exists whole (545 MB as float at 45 MP)."""
        x = feeds[self.image]
        axis = 1 if x.shape[-1] == 3 else 2
        height, width = x.shape[axis], x.shape[axis + 1]
        cores = bands(height, width, self.tile_pixels, self.band_pixels)
        if len(cores) == 1:
            small = height * width <= BESIDE_BANDS_PIXELS
            with contextlib.nullcontext() if small else _TURN.hold(exclusive=False):
                return run_tiled(self.single(), feeds, cores, height, width, convert)
        with _TURN.hold(exclusive=True):
            runtime.release_static()  # what one-piece sizes hold goes before the bands come
            if self._plan is None and os.getpid() != self._pid:
                # A forked child (luigi's workers) cannot compile (runtime.Network): the whole
                # network runs at once, as before tiling; the same picture, not the bounded memory.
                out = self.whole.run(feeds, release_memory=True)[0]
                return out if convert is None else convert(out)
            return run_tiled(self.plan(), feeds, cores, height, width, convert)


def window(start: int, stop: int, halo: int, height: int, rows: int) -> tuple[int, int]:
    """The input rows [low, high) a band reads: ``rows`` of them (the same for every band, so a
    piece runs one static size), holding the core and its halo, slid inside the photo."""
    size = min(height, rows)
    low = min(max(0, start - halo), height - size)
    if low > max(0, start - halo) or low + size < min(height, stop + halo):
        raise AssertionError(f"window {low}+{size} does not hold rows {start}..{stop} +-{halo}")
    return low, low + size


def run_tiled(plan: Plan, feeds: dict[str, np.ndarray], cores: list[tuple[int, int]],
              height: int, width: int, convert: Convert | None = None) -> np.ndarray:
    """Every piece over every band, in order; the output assembled from the band cores (each
    passed through ``convert`` first, where given).

    Each piece runs one input size (the widest core plus twice its halo, slid inside the photo
    at the top and bottom), so it runs on a static compile whose buffers are made once; band
    inputs are read into buffers reused band after band, and outputs are copied once, straight
    from the runtime's buffers into what keeps them. Nothing is allocated per band.
    """
    image = feeds[plan.image]
    static = {k: v for k, v in feeds.items() if k != plan.image}
    stores: dict[Key, _Store] = {}
    stats: dict[str, _Stats] = {}
    z_of = {norm.z: name for name, norm in plan.norms.items()}
    core_rows = max(stop - start for start, stop in cores)
    budget = _Budget(KEEP_BYTES)
    single = len(plan.pieces) == 1  # the whole network: a static compile up to 1 MP, kept
    result = None
    writer = ThreadPoolExecutor(1, thread_name_prefix="tiling-keep")
    try:
        for piece in plan.pieces:
            for key in piece.outputs:
                t = plan.tensors[key]
                if key == plan.result:
                    continue  # made from the first band's output (its shape and type)
                if key not in plan.recomputed:  # else only its statistics are taken
                    stores[key] = _Store(t, height // t.scale, width // t.scale, budget)
                if key in z_of:
                    stats[z_of[key]] = _Stats()
            rows = core_rows + 2 * piece.halo
            band: dict[str, np.ndarray] = {}
            for name in piece.inputs:
                if name.startswith(("mean:", "invstd:")):
                    kind, norm = name.split(":", 1)
                    mean, inv = stats[norm].feeds(plan.norms[norm])
                    band[name] = mean if kind == "mean" else inv
                elif name.startswith("t:"):
                    store = stores[_key(name)]
                    s = plan.tensors[_key(name)].scale
                    band[name] = np.empty((1, store.channels, min(height, rows) // s,
                                           store.columns), np.float32)
                elif name != plan.image:
                    band[name] = static[name]
            request = None
            for start, stop in cores:
                low, high = window(start, stop, piece.halo, height, rows)
                for name in piece.inputs:
                    if name == plan.image:  # whole rows of [1, H, W, 3]: a contiguous view
                        band[name] = np.ascontiguousarray(_rows(image, plan.image_axis, low, high))
                    elif name.startswith("t:"):
                        key = _key(name)
                        stores[key].read_into(low // plan.tensors[key].scale, band[name])

                def keep(outs: list[np.ndarray], piece=piece, start=start, stop=stop, low=low) -> None:
                    nonlocal result
                    writes = []
                    for key, out in zip(piece.outputs, outs, strict=True):
                        t = plan.tensors[key]
                        first, last = (start - low) // t.scale, (stop - low) // t.scale
                        core = _rows(out, t.axis, first, last)
                        if key == plan.result:
                            if convert is not None:
                                core = convert(core)
                            if result is None:
                                shape = list(out.shape)
                                shape[t.axis] = height // t.scale
                                result = np.empty(shape, core.dtype)
                            _rows(result, t.axis, start // t.scale, stop // t.scale)[...] = core
                        elif key in plan.recomputed:
                            pass
                        else:  # beside the statistics: the runtime is idle until keep returns
                            writes.append(writer.submit(stores[key].write, start // t.scale, core))
                        if key in z_of:
                            stats[z_of[key]].add(core)
                    for done in writes:
                        done.result()  # the outputs are the runtime's buffers: the next band reuses them

                if single:
                    piece.network.run_into(band, keep, release_memory=True)
                else:
                    request = request or piece.network.request()
                    request.run_into(band, keep)
            band.clear()
            if not single:  # one piece's buffers at a time (made again for the next photo)
                request = None  # with it the band inputs it held
                piece.network.release_memory()
            for key in [k for k, last in plan.last_use.items() if last == piece.index]:
                stores.pop(key).close()
    finally:
        for store in stores.values():
            store.close()
        writer.shutdown()
        budget.close()
        if not single:
            _trim()
    return result


def _key(name: str) -> Key:
    """The tensor a piece input ``t:<op>:<port>`` is fed from."""
    sname, port = name[2:].rsplit(":", 1)
    return sname, int(port)


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

"""The one place that turns an exported network (ONNX file) into something that runs, at a precision.

Every kind of network the model serves (the 26-style network, pytorch/examples checkpoints, the
arbitrary-style pair) is compiled here, so they all share one runtime and the same two precisions:

* ``exact``: fp32, the numbers of the original graph (OpenVINO fp32 is within 0.06/255 of
  onnxruntime on these networks; tests keep onnxruntime as the independent oracle).
* ``fast``: the fastest faithful path this CPU offers: bf16 where the CPU computes it natively
  (AMX, or AVX-512 BF16), detected at run time; fp32 on a CPU with neither.

Usage::

    net = compile_network("multistyle26.onnx", "fast")
    out = net.run({"image": x, "style_weights": w})[0]
    net.precision  # "bf16" or "fp32": what actually runs
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from neuralstyle.model import stats

PRECISIONS = ("exact", "fast")
FP32, BF16 = "fp32", "bf16"
# /proc/cpuinfo flags that mean the CPU computes bf16 natively (AMX tiles, or AVX-512 BF16).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Set to "0" to refuse bf16 even where the CPU has it (every request then runs fp32).
FAST_ENV = "STYLIZE_FAST_BF16"
# The quality bound of ``fast``: against exact, per style, worst over the bundled sample photos
# (8-bit results), checked at packaging; a style below either bound is served exact.
FAST_MIN_PSNR_DB = 40.0
FAST_MAX_MEAN_LEVELS = 1.5  # mean |fast - exact| in levels of 255
# fp32 at a static input size runs 30-35% faster than at a dynamic one (OpenVINO 2026.4, 256 to
# 1024 px, bench/RESULTS.md) and compiles in ~0.1 s: every size up to 1024x1024 gets its own
# compile, on its first run, so the same photo gives the same bytes whatever ran before it.
# bf16 runs as fast either way, and gets them too: its kernels are then made at compile time,
# not by concurrent requests meeting a new size (a served model under load hung in its first
# bf16 requests in two CI runs on AMX CPUs, never when run alone; the cause is not proven).
STATIC_SHAPES = 4  # static compiles kept per network (least recently used goes first)
# An RGB 2048x2048 photo: larger inputs stay dynamic. A static run at 2048 px took 0.62x the
# dynamic one's CPU time (0.54x wall, one interleaved run); the one-piece run stops there (tiling).
STATIC_MAX_ELEMENTS = 3 * 2048 * 2048
# Above an RGB 1024x1024 photo a static compile's buffers (~1.1 GB at 2048 px) are not kept for
# good: one such compile in the process holds them while runs of its size keep coming, and hands
# them back HOLD_S after its last run, when another large size starts, or before a tiled run
# (``release_static``). Made again on every run, they cost a page fault per 4 KiB: 2048 px exact
# took 1.84 s a run releasing after each, 1.56 s holding (medians of 5, AMD EPYC 2 cores).
STATIC_KEEP_ELEMENTS = 3 * 1024 * 1024
HOLD_S = float(os.environ.get("STYLIZE_HOLD_S", "10"))

log = logging.getLogger(__name__)


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of /proc/cpuinfo (None where unreadable or absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is unreadable)."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name, for every benchmark's header (``unknown`` where unreadable)."""
    return _cpuinfo_field("model name") or "unknown"


@functools.lru_cache(maxsize=1)
def fast_precision() -> str:
    """What ``fast`` means on this CPU: bf16 where both the CPU and OpenVINO's CPU plugin have it."""
    if os.environ.get(FAST_ENV, "1") == "0":
        return FP32
    if not cpu_has_bf16():
        return FP32
    capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return BF16 if "BF16" in capabilities else FP32


def cpu_has_bf16() -> bool:
    """True where /proc/cpuinfo lists AMX bf16 or AVX-512 BF16."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def numeric_precision(precision: str) -> str:
    """``exact`` -> fp32; ``fast`` -> bf16 or fp32, as this CPU allows."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    return FP32 if precision == "exact" else fast_precision()


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core per process (it owns the plugin and its thread pool)."""
    import openvino as ov

    core = ov.Core()
    _warm_numpy_bindings()
    return core


def _warm_numpy_bindings() -> None:
    """Make OpenVINO's first NumPy conversion here, in one thread, before any request.

    Two threads whose first ``infer`` in a fresh process comes at the same moment can deadlock
    forever: one initialises pybind11's NumPy API inside a C++ static guard and waits for the
    GIL, the other holds the GIL and waits on the guard (py-spy on a hung ``mlflow models serve``
    given a clip's first two frames at once). In a repro, 6 of 30 fresh processes hung, none of 30
    after this warm-up: tests/model/test_runtime.py.
    """
    import numpy as np
    import openvino as ov

    ov.Tensor(np.zeros((1,), np.float32)).get_element_type().to_dtype()


Shapes = tuple[tuple[str, tuple[int, ...]], ...]
T = TypeVar("T")


class _Static:
    """One input size compiled statically (by the first thread that needs it; the others wait),
    and its idle infer requests (any thread takes one)."""

    def __init__(self, release: bool = False) -> None:
        self.compiled = None
        self.failed = False
        self.done = threading.Event()
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        self.release = release  # a large size: its buffers are held a while, not kept (_Held)
        self._lock = threading.Lock()
        self._active = 0
        _STATICS.add(self)

    def _request(self):
        if self.release:
            _HELD.take(self)  # the large compile held before this one hands its buffers back
        with self._lock:
            self._active += 1
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def _done(self, request) -> None:
        self.idle.put(request)
        with self._lock:
            self._active -= 1
            idle = self.release and self._active == 0
        if idle and not _HELD.hold(self):  # another large size took over meanwhile
            # off the caller's time (~0.09 s at 2048 px): the answer is ready already
            threading.Thread(target=self.release_now, daemon=True).start()

    def release_now(self) -> None:
        """Hand the buffers back, unless a run of this size is in flight (it releases after)."""
        with self._lock:
            if self._active == 0:
                self.compiled.release_memory()  # no run of this size can start meanwhile

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.run_into(feeds, lambda outs: [np.array(out) for out in outs])

    def run_into(self, feeds: dict[str, np.ndarray], consume: Callable[[list[np.ndarray]], T]) -> T:
        """``consume`` the outputs in place (views of this request's buffers), no copy made."""
        request = self._request()
        try:
            results = request.infer(feeds, share_inputs=True, share_outputs=True)
            return consume([np.asarray(results[port]) for port in self.compiled.outputs])
        finally:
            self._done(request)


class _Held:
    """The one large static compile (``STATIC_KEEP_ELEMENTS``) allowed to keep its buffers
    between runs in this process, and the timer that hands them back ``HOLD_S`` after its last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: _Static | None = None
        self._timer: threading.Timer | None = None

    def take(self, entry: _Static) -> None:
        """``entry`` starts a run: it becomes the holder; the one before releases now."""
        with self._lock:
            previous = self._entry if self._entry is not entry else None
            self._entry = entry
            self._cancel()
        if previous is not None:
            previous.release_now()

    def hold(self, entry: _Static) -> bool:
        """``entry`` went idle: False if it is no longer the holder (so it releases now), else
        True and its buffers are handed back ``HOLD_S`` from now unless a run comes first."""
        with self._lock:
            if self._entry is not entry:
                return False
            self._cancel()
            self._timer = threading.Timer(HOLD_S, self._expire, args=(entry,))
            self._timer.daemon = True
            self._timer.start()
            return True

    def release(self) -> None:
        """The holder, if any, hands its buffers back now (a tiled run is about to start)."""
        with self._lock:
            entry, self._entry = self._entry, None
            self._cancel()
        if entry is not None:
            entry.release_now()

    def _expire(self, entry: _Static) -> None:
        with self._lock:
            if self._entry is not entry:
                return
            self._entry = self._timer = None
        entry.release_now()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_HELD = _Held()
_STATICS: weakref.WeakSet[_Static] = weakref.WeakSet()  # every static compile made here


def release_static() -> None:
    """Every static compile in the process that no run is using hands its buffers back now: the
    large one held between runs (``HOLD_S``) and the kept ones up to 1 MP (a served model warms
    six: ~1 GB). Called before a tiled run, whose memory bound must hold whatever ran before it;
    the next run of a kept size makes its buffers again (page faults: ~0.1 s at 1024 px)."""
    _HELD.release()
    for entry in list(_STATICS):
        if entry.compiled is not None:
            entry.release_now()


class Request:
    """One infer request: ``run_into`` hands ``consume`` views of its output buffers, no copy.
    With ``share_inputs`` it holds a reference to its last inputs until it is dropped. Its runs
    count as its network's (``Network.release_memory`` waits for none to be in flight: two
    photos tiled at once share each piece's compile, and OpenVINO refuses to release a busy one)."""

    def __init__(self, request, compiled, network: Network) -> None:
        self._request = request
        self._outputs = compiled.outputs
        self._network = network

    def run_into(self, feeds: dict[str, np.ndarray], consume: Callable[[list[np.ndarray]], T]) -> T:
        with self._network._running():
            results = self._request.infer(feeds, share_inputs=True, share_outputs=True)
            return consume([np.asarray(results[port]) for port in self._outputs])


class Network:
    """A compiled network: ``run(feeds) -> outputs``, safe to call from several threads.

    Compiled for any input size; with ``specialize``, every input size up to
    ``STATIC_MAX_ELEMENTS`` runs on a static compile of its own, made on its first run (~0.1 s).
    Why every time and not only for sizes seen again: the two compiles round differently
    (~1e-6), and a photo must give the same bytes whether or not its size ran before.
    """

    def __init__(self, compiled, precision: str, path: Path,
                 specialize: Callable[[Shapes], object] | None = None,
                 model=None, config: dict[str, str] | None = None) -> None:
        self.compiled = compiled
        self.model = model  # the ov.Model compiled (tiling cuts it into pieces)
        self._config = config or {}
        self.precision = precision  # "fp32" or "bf16": what runs, for lineage
        self.path = path
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self._local = threading.local()  # one infer request per thread: requests are not shared
        self._lock = threading.Lock()  # guards _active and _static; held while memory is released
        self._active = 0
        self._specialize = specialize
        self._static: OrderedDict[Shapes, _Static] = OrderedDict()
        # A forked child (luigi's worker processes) cannot compile: OpenVINO's compile waits on
        # thread-pool threads that did not survive the fork (a luigi worker hung there). It runs
        # what it inherited, the any-size network and the sizes already compiled.
        self._pid = os.getpid()

    def compile_piece(self, model) -> Network:
        """Another ov.Model (a piece of this one, ``tiling``) compiled as this one is, any size.

        Not static per band size: with static piece compiles a 45 MP photo peaked at 2.9 GB
        (README, "Full resolution"). Tiling feeds every band of a piece at one size, so the
        dynamic compile makes its buffers once per piece and photo."""
        compiled = _core().compile_model(model, "CPU", self._config)
        return Network(compiled, self.precision, self.path)

    def request(self) -> Request:
        """An infer request of its own on the any-size compile, for a caller that runs many
        pieces of one photo (``tiling``); dropping it drops what it held (its last inputs)."""
        return Request(self.compiled.create_infer_request(), self.compiled, self)

    @contextlib.contextmanager
    def _running(self, release_after: bool = False) -> Iterator[None]:
        """A run on the any-size compile is in flight (``release_memory`` skips it meanwhile);
        with ``release_after``, the last run to finish hands its buffers back."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if release_after and self._active == 0:
                    self.compiled.release_memory()  # no run can start while the lock is held

    def release_memory(self) -> None:
        """Hand back the intermediate buffers of every compile that no run is using now."""
        with self._lock:
            entries = [e for e in self._static.values() if e.compiled is not None]
            if self._active == 0:
                self.compiled.release_memory()  # no run can start while the lock is held
        for entry in entries:
            entry.release_now()  # each under its own lock, unless a run of it is in flight

    @property
    def static_sizes(self) -> list[Shapes]:
        """The input sizes that have a static compile now (least recently used first)."""
        with self._lock:
            return [shapes for shapes, entry in self._static.items() if entry.compiled is not None]

    def run(self, feeds: dict[str, np.ndarray], release_memory: bool = False) -> list[np.ndarray]:
        """Run once; outputs are fresh arrays (not views of the runtime's buffers).

        OpenVINO keeps the intermediate buffers of the largest input it has seen (~1.5 GB after
        one 2048 px run of both precisions); ``release_memory`` hands them back after this run
        when no other run is in flight (the next run allocates what it needs again). A size with
        a static compile decides for itself: kept up to 1 MP, held for a while above
        (``HOLD_S``).
        """
        static = self._static_for(feeds) if self._specialize else None
        if static is not None:
            return static.run(feeds)
        request = getattr(self._local, "request", None)
        if request is None:  # one thread at a time sets up a request (cheap, once per thread)
            with self._lock:
                request = self._local.request = self.compiled.create_infer_request()
        with self._running(release_after=release_memory):
            results = request.infer(feeds, share_inputs=True, share_outputs=False)
            return [np.asarray(results[port]) for port in self.compiled.outputs]

    def run_into(self, feeds: dict[str, np.ndarray], consume: Callable[[list[np.ndarray]], T],
                 release_memory: bool = False) -> T:
        """Run once and hand ``consume`` the outputs as views of the runtime's own buffers (valid
        only during the call): a caller that keeps part of them copies only that part.
        ``release_memory`` as ``run`` (where this size has no static compile)."""
        static = self._static_for(feeds) if self._specialize else None
        if static is not None:
            return static.run_into(feeds, consume)
        return consume(self.run(feeds, release_memory=release_memory))

    def _static_for(self, feeds: dict[str, np.ndarray]) -> _Static | None:
        """The static compile for these input sizes (None: too large, or it failed to compile)."""
        shapes: Shapes = tuple(sorted((name, tuple(array.shape)) for name, array in feeds.items()))
        if max(int(np.prod(shape)) for _, shape in shapes) > STATIC_MAX_ELEMENTS:
            return None
        with self._lock:
            entry = self._static.get(shapes)
            if os.getpid() != self._pid:  # forked: only what the parent had finished compiling
                return entry if entry is not None and entry.done.is_set() and not entry.failed else None
            build = entry is None
            if build:
                largest = max(int(np.prod(shape)) for _, shape in shapes)
                entry = self._static[shapes] = _Static(
                    release=largest > STATIC_KEEP_ELEMENTS)
                while len(self._static) > STATIC_SHAPES:
                    self._static.popitem(last=False)
            else:
                self._static.move_to_end(shapes)
        if build:
            try:
                entry.compiled = stats.timed_compile(lambda: self._specialize(shapes))
            except Exception as err:  # the dynamic compile still serves this size
                entry.failed = True
                log.warning("static compile of %s at %s failed, running dynamic: %s",
                            self.path.name, shapes, err)
            finally:
                entry.done.set()
        else:
            entry.done.wait()
        return None if entry.failed else entry


def compile_network(
    path: str | Path, precision: str = "exact", cache_dir: str | Path | None = None,
    threads: int = 0, pixels_input: str | None = None, streams: int = 0,
) -> Network:
    """Compile an ONNX network for this CPU at ``exact`` or ``fast`` precision.

    ``cache_dir`` keeps OpenVINO's compiled blobs, so a later start skips most of the compile.
    ``threads`` 0 lets OpenVINO use every core. ``pixels_input`` names an NCHW float input in
    0..1 that should take uint8 RGB pixels [1, H, W, 3] instead; the conversion (/255, layout)
    then runs inside the compiled network, and the first output comes back as [1, H, W, C].
    ``streams`` > 1 runs that many requests at once, the cores split between them (a caller that
    keeps several frames in flight: a clip); else one request at a time on every core (a photo's
    latency).
    """
    import openvino as ov

    numeric = numeric_precision(precision)
    core = _core()
    config: dict[str, str] = {
        "INFERENCE_PRECISION_HINT": "bf16" if numeric == BF16 else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if streams > 1:
        # Two 640 px frames at once, a core each, against one after the other on both cores:
        # 33.5 against 38.7 ms a frame at bf16 (56.0 / 57.7 fp32); a clip end to end ~15% faster
        # (bench/results/video.md).
        del config["PERFORMANCE_HINT"]
        config["NUM_STREAMS"] = str(streams)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        config["CACHE_DIR"] = str(cache_dir)
    model = core.read_model(str(path))
    if pixels_input:
        from openvino.preprocess import PrePostProcessor

        ppp = PrePostProcessor(model)
        image = ppp.input(pixels_input)
        image.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        image.preprocess().convert_element_type(ov.Type.f32).scale(255.0)
        image.model().set_layout(ov.Layout("NCHW"))
        ppp.output(0).tensor().set_layout(ov.Layout("NHWC"))
        ppp.output(0).model().set_layout(ov.Layout("NCHW"))
        model = ppp.build()
    compiled = core.compile_model(model, "CPU", config)
    static_config = {k: v for k, v in config.items() if k != "CACHE_DIR"}  # no blob per size

    def specialize(shapes: Shapes):
        sized = model.clone()
        sized.reshape({name: list(shape) for name, shape in shapes})
        return core.compile_model(sized, "CPU", static_config)

    return Network(compiled, numeric, Path(path), specialize, model, static_config)

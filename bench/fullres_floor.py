"""The floor under the linear-time bar: what exact tiling must cost at 45 MP on this machine,
whatever is engineered around it.

    python bench/fullres_floor.py --tracking-uri sqlite:///mlflow.db   # ~1 minute
    (also run by bench/fullres.py, `make bench-fullres`, into bench/results/fullres.md)

Instance norm needs a channel's statistics over the whole photo before any band can be
normalised, so an exact run of a photo that does not fit in memory at once pays, beyond the
one-piece work:

* the first normalisation's statistics before anything else: its convolution (on the photo) run
  once more over the whole photo, or its output (5.4 GiB at 45 MP) spilled and read back;
* every later normalisation's input (the tensors that cross pieces) out of the process and back,
  for what the memory bound cannot hold: at best written once and read once, at the fastest
  route this machine has (rewriting pages already in the page cache by ``pwrite`` or through a
  shared mapping; reads by ``preadv`` or a mapping's page faults, with no copy at all).

The floor counts only those, at their best measured speeds, and nothing else: no halo rows, no
layout reorders, no statistics pass, no waiting, no new pages or writeback (a fresh page is far
dearer: 7.7 GiB written to new pages of one file ran at 0.3 GiB/s here, the writer waiting on
the disk past the kernel's ``dirty_ratio``; bench/results/fullres-notes.md). A real run costs
more. The photo's own one-piece work is the 1 MP request's seconds per MP times the MP (what the
bar compares with). A design under the bar would have to come close to this floor.
"""

from __future__ import annotations

import argparse
import base64
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CAMERA = (8256, 5504)  # 45 MP, the size
ONE_MP = (1224, 816)  # the 1 MP photo of bench/fullres.py
BOUND_BYTES = 2 * 2**30  # the memory bound, read generously (2 GiB)
BAR = 1.3
PROBE_BYTES = 2 * 2**30  # written and read back to time the page cache


def _feeds(network, height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for param in network.model.get_parameters():
        name = param.output(0).get_any_name()
        if name == "image":
            feeds[name] = rng.integers(0, 256, (1, height, width, 3), np.uint8)
        else:
            shape = [d.get_length() for d in param.get_output_partial_shape(0)]
            feeds[name] = rng.random(shape, np.float32)
    return feeds


def first_convolution_ms(network, names: set[str], runs: int = 5) -> dict:
    """The whole network in one piece at 1 MP, static, as served (f32), with OpenVINO's counters:
    the median run and the median time of the convolution(s) ``names`` (the ones a tiled run
    computes twice), ms."""
    from neuralstyle.model import runtime

    height, width = ONE_MP[1], ONE_MP[0]
    model = network.model.clone()
    feeds = _feeds(network, height, width)
    model.reshape({name: list(value.shape) for name, value in feeds.items()})
    compiled = runtime._core().compile_model(model, "CPU", {**network._config, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    request.infer(feeds)
    whole, first = [], []
    for _ in range(runs):
        started = time.perf_counter()
        request.infer(feeds)
        whole.append((time.perf_counter() - started) * 1e3)
        first.append(sum(info.real_time.total_seconds() * 1e3 for info in request.profiling_info
                         if info.node_name in names))
    mp = height * width / 1e6
    return {"whole_ms_per_mp": statistics.median(whole) / mp,
            "first_ms_per_mp": statistics.median(first) / mp,
            "kernel": next((i.exec_type for i in request.profiling_info if i.node_name in names), "")}


def crossing_bytes(plan, height: int, width: int) -> int:
    """Bytes of every tensor a tiled run keeps between pieces for a photo of this size (the
    result and the recomputed first convolution's output excluded)."""
    total = 0
    for key, tensor in plan.tensors.items():
        if key == plan.result or key in plan.recomputed:
            continue
        total += tensor.shape[1] * (height // tensor.scale) * (width // tensor.scale) * 4
    return total


def page_cache_rates(folder: str | None = None, nbytes: int = PROBE_BYTES) -> dict:
    """GiB/s of the routes out of the process and back, in the spill folder, over ``nbytes``:
    written once into new, fallocated pages (a spill file's first bytes), then, best of two
    rounds, rewrites of those pages by ``pwrite`` from one thread and two and through a shared
    mapping (what a zero-copy store would do); reads by ``preadv`` from one thread and two, and
    a mapping's read faults alone (a zero-copy read); an anonymous copy for scale."""
    from concurrent.futures import ThreadPoolExecutor

    chunk = 64 * 2**20
    data = np.ones(chunk // 4, np.float32)
    into = [np.empty_like(data), np.empty_like(data)]
    view = memoryview(data).cast("B")
    rates: dict[str, float] = {}

    def timed(name: str, step, threads: int = 1, rounds: int = 2) -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(step, range(0, nbytes, chunk)))
            rate = nbytes / (time.perf_counter() - started) / 2**30
            rates[name] = max(rates.get(name, 0.0), rate)

    def back(offset: int) -> memoryview:
        return memoryview(into[offset // chunk % 2]).cast("B")

    with tempfile.TemporaryFile(dir=folder) as file:
        fd = file.fileno()
        os.posix_fallocate(fd, 0, nbytes)

        def mapped(offset: int, write: bool) -> None:
            with mmap.mmap(fd, chunk, offset=offset,
                           access=mmap.ACCESS_WRITE if write else mmap.ACCESS_READ) as m:
                if write:
                    np.frombuffer(m, np.float32)[:] = data
                else:
                    pages = np.frombuffer(m, np.uint8)[::mmap.PAGESIZE]
                    int(pages.sum())  # each page faulted in, nothing copied
                    del pages

        timed("new pages: pwrite", lambda offset: os.pwrite(fd, view, offset), rounds=1)
        timed("rewrite: pwrite", lambda offset: os.pwrite(fd, view, offset))
        timed("rewrite: pwrite, 2 threads", lambda offset: os.pwrite(fd, view, offset), 2)
        timed("rewrite: mapped, 2 threads", lambda offset: mapped(offset, True), 2)
        timed("read: preadv", lambda offset: os.preadv(fd, [back(offset)], offset))
        timed("read: preadv, 2 threads", lambda offset: os.preadv(fd, [back(offset)], offset), 2)
        timed("read: mapped, faults only", lambda offset: mapped(offset, False))
    timed("anonymous copy", lambda offset: np.copyto(into[0], data))
    return rates


def dirty_limit_bytes() -> int:
    """Dirty page-cache bytes past which the kernel makes a writer wait on the disk: vm.dirty_bytes,
    else vm.dirty_ratio percent of the memory available (roughly the kernel's own base)."""
    vm = Path("/proc/sys/vm")
    try:
        if int((vm / "dirty_bytes").read_text()):
            return int((vm / "dirty_bytes").read_text())
        ratio = int((vm / "dirty_ratio").read_text())
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(info["MemAvailable"].split()[0]) * 1024 * ratio // 100
    except (OSError, KeyError, ValueError):
        return 0


def one_mp_seconds_per_mp(model, runs: int = 3) -> float:
    """Best of ``runs`` whole requests (JPEG in and out) at 1 MP, exact, in this process."""
    import pandas as pd

    from neuralstyle.builder.samples import encode, mosaic

    frame = pd.DataFrame({"image": [base64.b64encode(encode(mosaic(*ONE_MP, seed=1), "JPEG")).decode()],
                          "style": ["7"]})
    params = {"max_size": 0, "precision": "exact"}
    model.predict(frame, params=params)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        model.predict(frame, params=params)
        best = min(best, time.perf_counter() - started)
    return best / (ONE_MP[0] * ONE_MP[1] / 1e6)


def resident_mb() -> float:
    """This process's resident memory now, MB."""
    from neuralstyle.run.serving import rss_bytes

    return rss_bytes(os.getpid()) / 2**20


def measure(model, one_s_per_mp: float | None = None, after_load_mb: float | None = None,
            size: tuple[int, int] = CAMERA, actual_s: float | None = None) -> dict:
    """The floor of an exact tiled run at ``size`` against the bar; ``one_s_per_mp`` is the
    1 MP request's seconds per MP (measured here when not given), ``after_load_mb`` the
    process's resident memory with the model loaded (what the bound leaves for kept tensors;
    this process's now when not given),
    ``actual_s`` what a real request of that size took (bench/fullres.py), where known."""
    from neuralstyle.model import tiling

    if after_load_mb is None:
        after_load_mb = resident_mb()  # before this function's own runs add their buffers
    served = model.unwrap_python_model().engine.exact[None]
    plan = served.plan()
    width, height = size
    padded = -(-height // tiling.GRID) * tiling.GRID
    mp = width * height / 1e6
    conv = first_convolution_ms(served.whole, {key[0] for key in plan.recomputed})
    if one_s_per_mp is None:
        one_s_per_mp = one_mp_seconds_per_mp(model)
    kept = crossing_bytes(plan, padded, width)
    first_bytes = sum(plan.tensors[key].shape[1] * padded * width * 4 for key in plan.recomputed)
    leave = max(0, kept - (BOUND_BYTES - int(after_load_mb * 2**20)))
    cores = tiling.bands(padded, width)
    core_rows = max(stop - start for start, stop in cores)
    halo = statistics.mean(min(padded, core_rows + 2 * p.halo) / core_rows - 1
                           for p in plan.pieces)
    rates = page_cache_rates(os.environ.get(tiling.SPILL_ENV))
    write = max(v for k, v in rates.items() if k.startswith("rewrite"))
    read = max(v for k, v in rates.items() if k.startswith("read"))
    one = one_s_per_mp * mp
    recompute = conv["first_ms_per_mp"] * mp / 1e3
    spill_first = first_bytes / 2**30 / write + first_bytes / 2**30 / read
    move = leave / 2**30 / write + leave / 2**30 / read
    dirty = dirty_limit_bytes()
    # Spilled, the first convolution's output is one tensor in flight at once: past the dirty
    # limit its writes wait on the disk (the section above: spilling it lost), so only under it
    # may the floor count it at the rewrite rate.
    first = min(recompute, spill_first) if first_bytes < dirty else recompute
    floor = one + first + move
    return {"size": size, "mp": mp, "one_s_per_mp": one_s_per_mp, "one_s": one, **conv,
            "recompute_s": recompute, "spill_first_s": spill_first,
            "first_s": first, "first_gib": first_bytes / 2**30, "dirty_gib": dirty / 2**30,
            "kept_gib": kept / 2**30, "leave_gib": leave / 2**30, "rates": rates,
            "write": write, "read": read, "move_s": move, "floor_s": floor,
            "ratio": floor / one, "bar_s": BAR * one, "after_load_mb": after_load_mb,
            "actual_s": actual_s, "bands": len(cores), "core_rows": core_rows, "halo": halo}


def report(f: dict) -> list[str]:
    """Markdown lines for bench/results/fullres.md."""
    w, h = f["size"]
    rates = ", ".join(f"{name} {value:.1f}" for name, value in f["rates"].items())
    lines = [
        f"## The floor under the linear-time bar (exact, {w}x{h}, this machine)", "",
        "What an exact tiled run must pay beyond the one-piece work, at the best speeds measured "
        "here, and nothing else: no halo rows, layout reorders, statistics pass, copies into or "
        "out of the runtime's buffers, waiting, or writeback to the disk; every kept byte "
        "rewrites a page already in the page cache, as a run's reused spill ranges do, so "
        "what is in flight at once stays under the kernel's dirty limit "
        "(`bench/fullres_floor.py`).", "",
        "| term | measured | s at 45 MP |", "|---|---|---|",
        f"| one-piece work (the bar's unit) | 1 MP request {f['one_s_per_mp']:.3f} s/MP x "
        f"{f['mp']:.1f} MP | {f['one_s']:.2f} |",
        f"| the first normalisation's statistics before any band can go on: its convolution "
        f"once more, or its output ({f['first_gib']:.1f} GiB) spilled and read back, whichever "
        f"is less | convolution {f['first_ms_per_mp']:.0f} of {f['whole_ms_per_mp']:.0f} ms/MP "
        f"of the one-piece network (OpenVINO's counters at 1 MP, `{f['kernel']}`): "
        f"{f['recompute_s']:.2f} s; spilled at the rates below {f['spill_first_s']:.2f} s, "
        f"but only while its {f['first_gib']:.1f} GiB stay under the kernel's dirty limit "
        f"({f['dirty_gib']:.1f} GiB here) | {f['first_s']:.2f} |",
        f"| the other kept tensors out of the process and back | {f['kept_gib']:.2f} GiB cross "
        f"pieces; {f['leave_gib']:.2f} GiB beyond what 2 GiB less the loaded model "
        f"({f['after_load_mb']:.0f} MB) could hold; written at {f['write']:.1f}, read at "
        f"{f['read']:.1f} GiB/s | {f['move_s']:.2f} |",
        f"| **floor** | {f['ratio']:.2f}x the one-piece work (bar: {BAR}x, {f['bar_s']:.1f} s) "
        f"| **{f['floor_s']:.2f}** |", ""]
    if f.get("actual_s"):
        lines += [
            f"This run's 45 MP exact request took {f['actual_s']:.1f} s "
            f"({f['actual_s'] / f['one_s']:.2f}x): **{f['actual_s'] - f['floor_s']:.1f} s above "
            f"the floor**, where the bar leaves {f['bar_s'] - f['floor_s']:.1f} s for all the "
            f"floor does not count: halo rows ({f['halo']:.0%} more rows per piece on average, "
            f"{f['bands']} bands of {f['core_rows']} rows), layout reorders at every piece's "
            "ends, the other normalisations' statistics in NumPy, copies into and out of the "
            "runtime's buffers, new pages and the disk's writeback (the first convolution's "
            "output spilled through today's path costs far more than its floor: the section "
            "above).", ""]
    lines += [f"Rates here, GiB/s: {rates}.", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    import mlflow
    from serve_latency import add_model_flags, registry

    from neuralstyle import config

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, REPO / "bench" / "results" / "fullres.md")
    args = parser.parse_args(argv)
    with registry(args.tracking_uri) as uri, config.mlflow_scope(uri):
        model = mlflow.pyfunc.load_model(args.model_uri)
        print("\n".join(report(measure(model))))


if __name__ == "__main__":
    main()

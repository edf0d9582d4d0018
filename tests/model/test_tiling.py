"""Tiled inference (``neuralstyle.model.tiling``): the same picture as a one-piece run, for every
kind of network the model serves, at both precisions, in bounded memory.

Bands are forced small here (``tile_pixels``) so photos CI can afford run in 3-6 bands; the
bench (bench/fullres.py) runs the real sizes, 1 to 45 MP.
"""

from __future__ import annotations

import base64
import io
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from loadcheck import Overlap
from oracle import PIXEL_TOLERANCE, oracle_uint8, psnr_and_mean
from PIL import Image

from neuralstyle.builder.samples import encode, sample_painting, sample_rgb
from neuralstyle.model import imaging, runtime, tiling
from neuralstyle.model.pyfunc_model import SIZE_MULTIPLE, pad_to_multiple
from neuralstyle.model.styles import ARBITRARY

pytestmark = pytest.mark.slow

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
FAST_MIN_PSNR_DB, FAST_MAX_MEAN_LEVELS = 40.0, 1.5  # the fast bound packaging checks


def family(seed: int, count: int = 3) -> list[np.ndarray]:
    """Seeded crops of the bundled photos, sides 260..520 px (mostly not multiples of 4)."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        rgb = sample_rgb(PHOTOS[(seed + i) % len(PHOTOS)])
        h, w = (int(rng.integers(260, min(520, s) + 1)) for s in rgb.shape[:2])
        y, x = int(rng.integers(0, rgb.shape[0] - h + 1)), int(rng.integers(0, rgb.shape[1] - w + 1))
        crops.append(np.ascontiguousarray(rgb[y:y + h, x:x + w]))
    return crops


@pytest.fixture(scope="module")
def engine(model):
    return model.unwrap_python_model().engine


@pytest.fixture(scope="module")
def checkpoint_network(tmp_path_factory):
    """A pytorch/examples checkpoint (seeded weights), exported as packaging exports it."""
    import torch
    from upstream import make_upstream_checkpoint

    from neuralstyle.builder.export import export_onnx
    from neuralstyle.builder.networks import UnitRangeTransformerNet, load_transformer_checkpoint

    folder = tmp_path_factory.mktemp("checkpoint")
    make_upstream_checkpoint(folder / "seeded.pth", seed=3)
    module = UnitRangeTransformerNet(load_transformer_checkpoint(folder / "seeded.pth")).eval()
    export_onnx(module, (torch.rand(1, 3, 64, 96),), folder / "seeded.onnx", ["image"])
    return folder / "seeded.onnx"


def style_feeds(engine, kind: str) -> dict[str, np.ndarray]:
    if kind == "multistyle":
        return {"style_weights": engine.catalog.resolve("19").weights}
    if kind == "arbitrary":
        vector = engine.style_vector(np.asarray(
            imaging.centre_square(Image.fromarray(sample_painting("hubble_deep_field")), 256),
            np.float32) / 255)
        return {"style_vector": vector.reshape(1, -1)}
    return {}


def whole_network(engine, checkpoint_network, kind: str, precision: str) -> runtime.Network:
    if kind == "checkpoint":
        return runtime.compile_network(checkpoint_network, precision, pixels_input="image")
    key = {"multistyle": None, "arbitrary": ARBITRARY}[kind]
    return (engine.exact if precision == "exact" else engine.fast)[key].whole


def run_both(whole: runtime.Network, rgb: np.ndarray, extra: dict, tile_pixels: int):
    x = np.ascontiguousarray(pad_to_multiple(rgb, SIZE_MULTIPLE)[None])
    feeds = {"image": x, **extra}
    tiled = tiling.TiledNetwork(whole, tile_pixels=tile_pixels)
    cores = tiling.bands(x.shape[1], x.shape[2], tile_pixels)
    crop = (slice(0, rgb.shape[0]), slice(0, rgb.shape[1]))
    return whole.run(feeds)[0][0][crop], tiled.run(feeds)[0][crop], cores


def levels(rgb: np.ndarray) -> np.ndarray:
    return imaging.to_uint8(rgb).astype(np.int16)


@pytest.mark.parametrize("kind", ["multistyle", "arbitrary", "checkpoint"])
def test_tiled_is_the_one_piece_picture_at_exact(engine, checkpoint_network, kind) -> None:
    """At most one 8-bit level anywhere, and no seam: rows beside band borders differ no more
    than the rest of the picture does (a seam would be tens of levels there)."""
    whole = whole_network(engine, checkpoint_network, kind, "exact")
    extra = style_feeds(engine, kind)
    worst, border_worst, inner_worst = [], [], []
    for rgb in family(seed=len(kind)):
        tile_pixels = rgb.shape[0] * rgb.shape[1] // 4
        one, tiled, cores = run_both(whole, rgb, extra, tile_pixels)
        assert len(cores) >= 3
        diff = np.abs(one - tiled).max(axis=2)
        near = np.zeros(diff.shape[0], bool)
        for start, _ in cores[1:]:
            near[max(0, start - 8):start + 8] = True
        near = near[:diff.shape[0]]
        worst.append(int(np.abs(levels(one) - levels(tiled)).max()))
        border_worst.append(float(diff[near].max()) * 255)
        inner_worst.append(float(diff[~near].max()) * 255)
        print(f"{kind} {rgb.shape[1]}x{rgb.shape[0]} in {len(cores)} bands: 8-bit max "
              f"{worst[-1]}, float max near borders {border_worst[-1]:.4f} / elsewhere "
              f"{inner_worst[-1]:.4f} levels")
    print(f"{kind}: worst 8-bit difference min {min(worst)} median {np.median(worst)} max {max(worst)}")
    assert max(worst) <= 1
    assert max(border_worst) <= max(0.25, 2 * max(inner_worst))


@pytest.mark.parametrize("height, width", [(70, 1500), (133, 1999), (1500, 70), (65, 260)])
def test_panoramas_and_strips_in_bands_are_the_one_piece_picture(engine, height, width) -> None:
    """Extreme shapes: a panorama a few bands tall (the thinnest band, ``MIN_BAND_ROWS``, at
    the bottom), a strip 70 px wide (reflect padding at both true sides of every band), a photo
    just over the minimum: at most one 8-bit level from the one-piece run."""
    whole = engine.exact[None].whole
    rgb = np.asarray(Image.fromarray(sample_rgb("astronaut")).resize((width, height)))
    padded = pad_to_multiple(rgb, SIZE_MULTIPLE).shape
    tile_pixels = padded[0] * padded[1] // 4
    one, tiled, cores = run_both(whole, rgb, style_feeds(engine, "multistyle"), tile_pixels)
    worst = int(np.abs(levels(one) - levels(tiled)).max())
    print(f"{width}x{height} in {len(cores)} bands {cores}: 8-bit max {worst}")
    assert len(cores) >= 2
    assert worst <= 1


@pytest.mark.parametrize("kind", ["multistyle", "arbitrary"])
def test_tiled_fast_meets_the_fast_bound(engine, checkpoint_network, kind) -> None:
    """``fast`` (bf16 where this CPU has it) in bands: within the bound packaging checks for
    fast, against the exact one-piece picture, like the one-piece fast run."""
    extra = style_feeds(engine, kind)
    exact = whole_network(engine, checkpoint_network, kind, "exact")
    fast = whole_network(engine, checkpoint_network, kind, "fast")
    for rgb in family(seed=7, count=2):
        tile_pixels = rgb.shape[0] * rgb.shape[1] // 3
        one_fast, tiled_fast, _ = run_both(fast, rgb, extra, tile_pixels)
        reference = exact.run({"image": np.ascontiguousarray(
            pad_to_multiple(rgb, SIZE_MULTIPLE)[None]), **extra})[0][0][:rgb.shape[0], :rgb.shape[1]]
        psnr, mean = psnr_and_mean(imaging.to_uint8(tiled_fast), imaging.to_uint8(reference))
        psnr_one, mean_one = psnr_and_mean(imaging.to_uint8(one_fast), imaging.to_uint8(reference))
        print(f"{kind} {fast.precision} {rgb.shape[1]}x{rgb.shape[0]}: tiled vs exact PSNR {psnr:.1f} "
              f"dB mean {mean:.3f}; one piece vs exact {psnr_one:.1f} dB mean {mean_one:.3f}")
        assert psnr >= min(FAST_MIN_PSNR_DB, psnr_one - 1.0)
        assert mean <= max(FAST_MAX_MEAN_LEVELS, mean_one + 0.25)


def test_spilled_bands_give_the_same_bits_and_leave_no_file(engine, tmp_path, monkeypatch) -> None:
    """Everything kept between pieces goes through temporary files: same array, nothing left."""
    whole = engine.exact[None].whole
    rgb = family(seed=11, count=1)[0]
    extra = style_feeds(engine, "multistyle")
    tile_pixels = rgb.shape[0] * rgb.shape[1] // 3
    _, in_memory, _ = run_both(whole, rgb, extra, tile_pixels)
    monkeypatch.setattr(tiling, "KEEP_BYTES", 0)
    monkeypatch.setenv(tiling.SPILL_ENV, str(tmp_path))
    _, spilled, _ = run_both(whole, rgb, extra, tile_pixels)
    assert np.array_equal(in_memory, spilled)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tiles", [1, 4])
def test_eight_bit_band_by_band_is_the_float_result_rounded(engine, tiles) -> None:
    """``Engine.run(..., eight_bit=True)`` rounds each band as it comes (the float output never
    exists whole: 545 MB at 45 MP): the same bytes as rounding the whole float result, in one
    band and in several, and a uint8 array of the photo's size (not the padded one)."""
    rgb = family(seed=14, count=1)[0]
    style = engine.catalog.resolve("7")
    network = engine.exact[None]
    old = network.tile_pixels
    network.tile_pixels = rgb.shape[0] * rgb.shape[1] // tiles + 1
    try:
        floats, _ = engine.run(rgb, style, "exact")
        eight, _ = engine.run(rgb, style, "exact", eight_bit=True)
    finally:
        network.tile_pixels = old
    assert floats.dtype == np.float32 and eight.dtype == np.uint8
    assert eight.shape == rgb.shape
    assert np.array_equal(imaging.to_uint8(eight), imaging.to_uint8(floats))
    assert imaging.to_uint8(eight).flags.c_contiguous


def test_recomputing_the_first_convolution_gives_the_spilled_bits(engine, monkeypatch,
                                                                  tmp_path) -> None:
    """The default (``tiling.RECOMPUTE``: the piece after the first normalisation runs the first
    convolution again on its rows of the photo) and its measured alternative (``STYLIZE_RECOMPUTE=0``:
    that output spilled too): the same array."""
    monkeypatch.setattr(tiling, "KEEP_BYTES", 0)
    monkeypatch.setenv(tiling.SPILL_ENV, str(tmp_path))
    whole = engine.exact[None].whole
    rgb = family(seed=12, count=1)[0]
    x = np.ascontiguousarray(pad_to_multiple(rgb, SIZE_MULTIPLE)[None])
    feeds = {"image": x, **style_feeds(engine, "multistyle")}
    tile_pixels = x.shape[1] * x.shape[2] // 4
    outs = []
    for recompute in (False, True):
        plan = tiling.split(whole.model, "image", recompute=recompute)
        assert bool(plan.recomputed) == recompute
        tiled = tiling.TiledNetwork(whole, tile_pixels=tile_pixels)
        for piece in plan.pieces:
            piece.network = whole.compile_piece(piece.model)
        tiled._plan = plan
        outs.append(tiled.run(feeds))
    assert np.array_equal(outs[0], outs[1])
    assert list(tmp_path.iterdir()) == []


def test_memory_is_a_few_bands_not_the_photo(engine, monkeypatch, tmp_path) -> None:
    """A 3 MP photo in 12 bands, every kept tensor spilled (as at 45 MP): the arrays alive at
    once stay far below one full-size activation (32 channels of float32: what a one-piece run
    holds, several times over)."""
    monkeypatch.setattr(tiling, "KEEP_BYTES", 0)
    monkeypatch.setenv(tiling.SPILL_ENV, str(tmp_path))
    rgb = np.asarray(Image.fromarray(sample_rgb("astronaut")).resize((2048, 1536)))
    x = np.ascontiguousarray(rgb[None])
    tiled = tiling.TiledNetwork(engine.exact[None].whole, tile_pixels=256 * 1024)
    tiled.plan()
    tracemalloc.start()
    try:
        out = tiled.run({"image": x, **style_feeds(engine, "multistyle")})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    activation = 32 * rgb.shape[0] * rgb.shape[1] * 4
    print(f"3 MP in {len(tiling.bands(1536, 2048, 256 * 1024))} bands: peak NumPy memory "
          f"{peak / 2**20:.0f} MB (one activation {activation / 2**20:.0f} MB, the result "
          f"{out.nbytes / 2**20:.0f} MB)")
    assert peak < activation / 2


def test_a_photo_above_one_megapixel_matches_the_original_graph(model, monkeypatch) -> None:
    """The whole path (bytes in, PNG out) at the photo's own size (max_size=0), run in bands
    (above 1 MP here: the served default is 4 MP, too slow for CI), against the original graph
    run by onnxruntime on the whole photo."""
    for network in model.unwrap_python_model().engine.exact.values():
        monkeypatch.setattr(network, "tile_pixels", 1024 * 1024)
    rgb = np.asarray(Image.fromarray(sample_rgb("coffee")).resize((1250, 1003)))
    data = encode(rgb)
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode()], "style": ["7"]})
    out = model.predict(frame, params={"format": "png", "precision": "exact", "max_size": 0})
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(out.loc[0, "image"]))).convert("RGB"))
    assert got.shape == rgb.shape and len(tiling.bands(1004, 1252, 1024 * 1024)) >= 2
    diff = int(np.abs(got.astype(int) - oracle_uint8(rgb, "7")).max())
    print(f"served 1250x1003 in bands vs the original graph in one piece: max {diff} level(s)")
    assert diff <= PIXEL_TOLERANCE


def test_a_forked_child_runs_a_large_photo_without_compiling_pieces(engine, tmp_path) -> None:
    """luigi's workers are forks, where OpenVINO cannot compile: pieces the parent had not made
    are not made there; the photo runs in one piece (the picture within one level)."""
    import os
    import signal
    import time

    whole = engine.exact[None].whole
    rgb = family(seed=13, count=1)[0]
    extra = style_feeds(engine, "multistyle")
    x = np.ascontiguousarray(pad_to_multiple(rgb, SIZE_MULTIPLE)[None])
    fresh = tiling.TiledNetwork(whole, tile_pixels=x.shape[1] * x.shape[2] // 3)
    path = tmp_path / "child.npy"
    pid = os.fork()
    if pid == 0:
        try:
            np.save(path, fresh.run({"image": x, **extra}))
        finally:
            os._exit(0)
    deadline = time.monotonic() + 120
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("a forked child running a tiled photo did not finish in 120 s")
        time.sleep(0.1)
    child = np.load(path)
    assert fresh._plan is None  # the parent made no pieces either
    tiled = fresh.run({"image": x, **extra})
    assert np.abs(levels(child) - levels(tiled)).max() <= 1


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_a_tiled_run_starts_with_no_static_buffers_held(engine) -> None:
    """A one-piece size above 1 MP holds its buffers between runs (``runtime.HOLD_S``), smaller
    ones keep theirs (a served model warms six); a photo run in bands hands them all back
    first, so its memory bound holds whatever ran before it (the serving image's server peaked
    at 2.3 GB on a 45 MP photo before: 1.4 GB of it was there when it became ready)."""
    whole = whole_network(engine, None, "multistyle", "exact")
    extra = style_feeds(engine, "multistyle")
    large = np.ascontiguousarray(np.tile(sample_rgb("coffee"), (3, 2, 1))[None, :1024, :1088])
    whole.run({"image": large, **extra})
    held = _rss_mb()
    rgb = sample_rgb("coffee")[:128, :192]
    run_both(whole, rgb, extra, tile_pixels=rgb.size // 3 // 3)
    assert _rss_mb() < held - 200, f"RSS {_rss_mb():.0f} MB after a tiled run, {held:.0f} before"


def test_two_photos_tiled_at_once_both_come_back_whole(engine, monkeypatch) -> None:
    """Two requests in bands at once (a server runs STYLIZE_PARALLEL_PHOTOS=2) share each piece's
    compile, and take turns: one photo's bands at a time (two 45 MP photos at once peaked at
    2.07 GB, one after the other at 1.65 GB). Both results equal the photo run alone."""
    from concurrent.futures import ThreadPoolExecutor

    counted = Overlap(tiling.run_tiled)
    monkeypatch.setattr(tiling, "run_tiled", counted)
    whole = whole_network(engine, None, "multistyle", "exact")
    extra = style_feeds(engine, "multistyle")
    photos = [np.ascontiguousarray(pad_to_multiple(sample_rgb(name)[:160, :240], SIZE_MULTIPLE)[None])
              for name in ("coffee", "chelsea")]
    tiled = tiling.TiledNetwork(whole, tile_pixels=photos[0].shape[1] * photos[0].shape[2] // 4)
    alone = [tiled.run({"image": x, **extra}) for x in photos]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(lambda x: tiled.run({"image": x, **extra}), photos * 2))
            for got, want in zip(together, alone * 2, strict=True):
                np.testing.assert_array_equal(got, want)
    assert counted.most == 1, f"{counted.most} photos ran in bands at once"


def test_a_photo_waiting_for_its_turn_hands_its_slot_to_small_photos() -> None:
    """Two photo slots, two large photos: one runs in bands, the other waits for its turn without
    its slot, so a small photo is still served meanwhile; the waiting one then gets its turn and
    its slot back, and the counters end where they began."""
    import threading

    from neuralstyle.model import stats

    slots, turn = threading.BoundedSemaphore(2), stats.Turn()
    first_in, first_go, second_in = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []
    before = stats.COUNTERS.snapshot()

    def large(name: str, entered: threading.Event, go: threading.Event | None) -> None:
        with stats.photo_slot(slots), turn.hold(exclusive=True):
            order.append(name)
            entered.set()
            if go is not None:
                go.wait(60)

    first = threading.Thread(target=large, args=("first", first_in, first_go))
    first.start()
    assert first_in.wait(10)
    second = threading.Thread(target=large, args=("second", second_in, None))
    second.start()
    try:
        deadline = 30
        while stats.COUNTERS.snapshot()["photos_waiting"] == before["photos_waiting"] and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        assert slots.acquire(timeout=2), "the waiting photo kept its slot: a small photo cannot run"
        slots.release()
        assert not second_in.is_set()
    finally:
        first_go.set()
        first.join(10)
        second.join(10)
    assert order == ["first", "second"]
    assert stats.COUNTERS.snapshot() == before


def test_large_one_piece_photos_run_together_and_a_photo_in_bands_alone() -> None:
    """The turn's rules: large one-piece photos share it (two 2048 px photos at once); a photo
    in bands waits for them to finish, and once it waits a new one-piece photo waits behind it
    (no starving); it then runs alone, and the one-piece photo after it."""
    import threading

    from neuralstyle.model import stats

    turn = stats.Turn()
    inside: list[str] = []
    events = {name: (threading.Event(), threading.Event()) for name in "ABXC"}

    def photo(name: str, exclusive: bool) -> None:
        entered, leave = events[name]
        with turn.hold(exclusive=exclusive):
            inside.append(name)
            entered.set()
            assert leave.wait(30)
            inside.remove(name)

    def start(name: str, exclusive: bool = False) -> threading.Thread:
        thread = threading.Thread(target=photo, args=(name, exclusive))
        thread.start()
        return thread

    threads = [start("A"), start("B")]
    try:
        assert events["A"][0].wait(10) and events["B"][0].wait(10), "two shared photos did not run together"
        threads.append(start("X", exclusive=True))
        deadline = time.monotonic() + 10
        while not turn._exclusive_waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        threads.append(start("C"))
        assert not events["X"][0].wait(0.3), "the photo in bands ran beside one-piece photos"
        assert not events["C"][0].is_set(), "a new one-piece photo overtook the waiting photo in bands"
        events["A"][1].set()
        events["B"][1].set()
        assert events["X"][0].wait(10)
        assert not events["C"][0].wait(0.3) and inside == ["X"], inside
        events["X"][1].set()
        assert events["C"][0].wait(10)
    finally:
        for _, leave in events.values():
            leave.set()
        for thread in threads:
            thread.join(10)
    assert not inside


def test_a_one_piece_photo_with_large_buffers_never_runs_beside_one_in_bands(engine, monkeypatch) -> None:
    """Through ``TiledNetwork.run``: photos in bands and one-piece photos above the line that may
    run beside them (lowered here to this test's sizes) from four threads at once; no run in
    bands overlaps any other run, and every result equals the photo run alone."""
    from concurrent.futures import ThreadPoolExecutor

    intervals: list[tuple[str, float, float]] = []
    real = tiling.run_tiled

    def recorded(plan, feeds, cores, *args, **kwargs):
        started = time.monotonic()
        time.sleep(0.05)  # threads that could overlap do
        try:
            return real(plan, feeds, cores, *args, **kwargs)
        finally:
            intervals.append(("bands" if len(cores) > 1 else "one", started, time.monotonic()))

    monkeypatch.setattr(tiling, "run_tiled", recorded)
    whole = whole_network(engine, None, "multistyle", "exact")
    extra = style_feeds(engine, "multistyle")
    photos = [np.ascontiguousarray(pad_to_multiple(sample_rgb(name)[:160, :240], SIZE_MULTIPLE)[None])
              for name in ("coffee", "chelsea")]
    pixels = photos[0].shape[1] * photos[0].shape[2]
    monkeypatch.setattr(tiling, "BESIDE_BANDS_PIXELS", pixels // 2)
    in_bands = tiling.TiledNetwork(whole, tile_pixels=pixels // 4)
    one_piece = tiling.TiledNetwork(whole)
    jobs = [(in_bands, photos[0]), (one_piece, photos[1]), (one_piece, photos[0]), (in_bands, photos[1])]
    alone = [net.run({"image": x, **extra}) for net, x in jobs]
    intervals.clear()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(lambda job: job[0].run({"image": job[1], **extra}), jobs))
            for got, want in zip(together, alone, strict=True):
                np.testing.assert_array_equal(got, want)
    banded = [i for i in intervals if i[0] == "bands"]
    assert len(banded) == 6 and len(intervals) == 12
    for kind, start, stop in banded:
        beside = [other for other in intervals if other != (kind, start, stop)
                  and other[1] < stop and start < other[2]]
        assert not beside, f"a photo in bands ran beside {beside}"

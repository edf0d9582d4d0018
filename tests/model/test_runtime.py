"""The runtime's per-size static compiles (``runtime.Network``): same pixels, bounded, thread-safe.

Run on the original ``multistyle26.onnx`` compiled by OpenVINO, against onnxruntime on the same
graph (the tests' oracle), at sizes that are not the ones other tests use.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from oracle import oracle_float

from neuralstyle.builder.samples import sample_rgb
from neuralstyle.builder.weights import MULTISTYLE26, locate
from neuralstyle.model import runtime
from neuralstyle.model.styles import Catalog


@pytest.fixture(scope="module")
def exact() -> runtime.Network:
    return runtime.compile_network(locate(MULTISTYLE26), "exact", pixels_input="image")


def feeds(height: int, width: int, style: str = "7") -> dict[str, np.ndarray]:
    rgb = np.ascontiguousarray(sample_rgb("coffee")[:height, :width])
    return {"image": rgb[None], "style_weights": Catalog().resolve(style).weights}


def test_a_size_seen_twice_gets_a_static_compile_with_the_same_pixels(exact) -> None:
    x = feeds(100, 132)
    want = oracle_float(x["image"][0], "7")
    runs = [exact.run(x)[0][0] for _ in range(3)]  # dynamic, then static (compiled), static
    sizes = exact.static_sizes
    assert [dict(shapes)["image"] for shapes in sizes] == [(1, 100, 132, 3)]
    for out in runs:
        assert np.abs(out - want).max() < 1e-4  # the parity bound, 0..1
    print(f"static vs dynamic compile at 100x132: max {np.abs(runs[2] - runs[0]).max():.2e}")


def test_static_compiles_are_bounded_and_large_runs_stay_dynamic(monkeypatch) -> None:
    network = runtime.compile_network(locate(MULTISTYLE26), "exact", pixels_input="image")
    for side in range(36, 36 + 4 * (runtime.STATIC_SHAPES + 2), 4):
        for _ in range(runtime.STATIC_AFTER_SEEN):
            network.run(feeds(side, side))
    kept = [dict(shapes)["image"][1] for shapes in network.static_sizes]
    assert len(kept) == runtime.STATIC_SHAPES and kept == sorted(kept)[-runtime.STATIC_SHAPES:]
    for _ in range(3):
        network.run(feeds(64, 64), release_memory=True)  # a run that hands its buffers back
    monkeypatch.setattr(runtime, "STATIC_MAX_ELEMENTS", 3 * 60 * 60)
    for _ in range(3):
        network.run(feeds(64, 68))
    assert all(dict(shapes)["image"][1:3] not in ((64, 64), (64, 68)) for shapes in network.static_sizes)


def test_threads_running_a_new_size_together_get_the_same_pixels(exact) -> None:
    """Eight threads, one size: the first runs are dynamic, one thread compiles, the rest keep
    running; every result is the oracle's."""
    x = feeds(76, 116, "19")
    want = oracle_float(x["image"][0], "19")
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: exact.run(x)[0][0], range(24)))
    assert max(float(np.abs(out - want).max()) for out in outs) < 1e-4
    assert any(dict(shapes)["image"] == (1, 76, 116, 3) for shapes in exact.static_sizes)


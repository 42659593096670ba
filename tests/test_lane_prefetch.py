"""Compiling a graph's lanes at compile time (``lowering/lane_prefetch``): a dry run records the
lanes' argument types without running them, children compile the signatures into the shared
kernel cache, and the first run then compiles no lane and computes what the numpy target does."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_blas, cpu_lanes, lane_prefetch
from numba.core.dispatcher import Dispatcher

import eqsat
from tests.cpu_testing import split_every_conv

F32 = np.float32


@pytest.fixture
def lanes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kernel cache, two compiling processes, and every conv split into lanes."""
    if not cpu_blas.AVAILABLE:
        pytest.skip("numpy's BLAS is not OpenBLAS: convs keep Python chunks")
    monkeypatch.setenv("EQSAT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "2")
    split_every_conv(monkeypatch)
    return tmp_path


def _two_convs(rng: np.random.Generator) -> eqsat.Graph:
    """A strided 3x3 conv and a 1x1 conv, each with an epilogue of its own (distinct lanes),
    scaled by constants drawn anew each time: kernel modules this process has not loaded."""
    scales = np.random.default_rng().random(2).astype(F32) + 0.5
    g = eqsat.Graph("convs")
    x = g.input("x", (1, 3, 12, 11))
    w1 = g.constant(rng.standard_normal((6, 3, 3, 3)).astype(F32), "w1")
    y = g.op("Conv", x, w1, strides=[2, 2], pads=[1, 1, 1, 1])
    y = g.op("Relu", g.op("Mul", y, g.constant(np.array(scales[0]), "s1")))
    w2 = g.constant(rng.standard_normal((5, 6, 1, 1)).astype(F32), "w2")
    y = g.op("Mul", g.op("Conv", y, w2), g.constant(np.array(scales[1]), "s2"))
    g.output(g.op("Sigmoid", y), "y")
    return g


def _lane_compiles() -> int:
    """Lane signatures this process has compiled itself (not loaded from Numba's cache)."""
    from eqsat.lowering import kernel_cache

    return sum(
        sum(item.stats.cache_misses.values())
        for module in list(kernel_cache._LOADED.values())
        for name, item in vars(module).items()
        if name.startswith("lane_") and isinstance(item, Dispatcher)
    )


def test_the_first_run_loads_the_lanes_children_compiled(
    lanes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []
    recorded: list[list[Any]] = []
    original, record = lane_prefetch.compile_lanes_ahead, lane_prefetch.record
    monkeypatch.setattr(
        lane_prefetch, "record", lambda run: recorded.append(record(run)) or recorded[-1]
    )
    monkeypatch.setattr(
        lane_prefetch,
        "compile_lanes_ahead",
        lambda run, count: ran.append(original(run, count)) or ran[-1],
    )
    rng = np.random.default_rng(7)
    g = _two_convs(rng)
    exe = cpu.compile(eqsat.optimize(g, target="cpu").graph, threads=2)
    assert ran == [1]  # one child beside this process
    assert {lane.py_func.__name__ for lane, _ in recorded[0]} == {"lane_wide", "lane_pointwise"}
    assert len(list(lanes.glob("*.lane"))) >= 2  # each signature marked compiled
    assert lane_prefetch.wanted(recorded[0]) == []
    before = _lane_compiles()
    feed = {"x": rng.standard_normal((1, 3, 12, 11)).astype(F32)}
    got = exe.run(feed)["y"]
    assert _lane_compiles() == before  # loaded from the cache the children wrote
    want = eqsat.compile(g, target="numpy").run(feed)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_dry_run_that_fails_records_what_it_reached() -> None:
    calls: list[str] = []

    def run() -> None:
        calls.append("ran")
        raise RuntimeError("garbage in, error out")

    assert lane_prefetch.record(run) == [] and calls == ["ran"]
    assert not cpu_lanes.RECORDING  # recording is over for this thread


def test_the_dry_run_is_quiet_on_every_thread() -> None:
    """A dry run computes on what skipped lanes left in their buffers (NaN among it): numpy's
    floating-point warnings are silenced for it, on the pool's threads as on the caller's."""

    def run() -> None:
        np.divide(np.zeros(2, np.float32), np.zeros(2, np.float32))  # 0/0: "invalid value"
        worker = threading.Thread(
            target=lambda: np.divide(np.zeros(2, np.float32), np.zeros(2, np.float32))
        )
        worker.start()
        worker.join()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lane_prefetch.record(run) == []
        np.divide(np.zeros(1, np.float32), np.zeros(1, np.float32))  # warns again after it
    assert [str(w.message) for w in caught] == ["invalid value encountered in divide"]

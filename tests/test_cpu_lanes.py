"""Native chunk loops on the pool (:mod:`eqsat.lowering.cpu_lanes`): numpy's BLAS called from
Numba (:mod:`eqsat.lowering.cpu_blas`), the atomic chunk counter shared by threads, the pool's
wait on a lane counter, and the convs and depthwise convs that run their blocks in lanes on two
threads, each against numpy and against the Python chunks they replace."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_blas, cpu_gemm, cpu_spin, cpu_threads
from numba import njit

import eqsat
from tests.cpu_testing import record_pool_maps, split_every_conv

F32 = np.float32

needs_blas = pytest.mark.skipif(
    not cpu_blas.AVAILABLE, reason="numpy's BLAS is not OpenBLAS: convs keep Python chunks"
)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(30, 40, 100), (30, 40, 1), (1, 40, 100), (1, 1, 1), (1, 40, 1), (5, 1, 7), (7, 3, 1)],
)
def test_gemm_on_slices_matches_numpy(m: int, k: int, n: int, dtype: type) -> None:
    """Views with row strides of their own (as the convs pass blocks of larger buffers) and the
    matrix-vector shapes that go to GEMV; nothing outside the output view is written."""
    rng = np.random.default_rng(m * 100 + n)
    a = rng.standard_normal((m, k + 5)).astype(dtype)[:, 2 : 2 + k]
    b = rng.standard_normal((k, 2 * n + 3)).astype(dtype)[:, 3 : 3 + n]
    c = np.full((m, 3 * n), 7, dtype)
    cpu_blas_gemm(a, b, c[:, n : 2 * n])
    np.testing.assert_allclose(c[:, n : 2 * n], a @ b, rtol=1e-5 if dtype == F32 else 1e-12)
    assert (c[:, :n] == 7).all() and (c[:, 2 * n :] == 7).all()


@needs_blas
def test_gemm_empty_and_mismatched() -> None:
    c = np.ones((3, 4), F32)
    cpu_blas_gemm(np.ones((3, 0), F32), np.ones((0, 4), F32), c)
    assert (c == 0).all()  # a product over no terms
    with pytest.raises(ValueError, match="shapes"):
        cpu_blas_gemm(np.ones((3, 2), F32), np.ones((3, 4), F32), c)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_blas_gemm(np.ones((3, 4), F32)[:, ::2], np.ones((2, 4), F32), c)


@njit(nogil=True)
def cpu_blas_gemm(a: Any, b: Any, c: Any) -> None:
    cpu_blas.gemm(a, b, c)


@njit(nogil=True)
def _claim_all(counter: Any, taken: Any, chunks: int) -> None:
    while True:
        j = cpu_blas.increment(counter, cpu_blas.CLAIMED)
        if j >= chunks:
            return
        taken[j] += 1
        cpu_blas.increment(counter, cpu_blas.FINISHED)


def test_threads_claim_every_chunk_once() -> None:
    """Four threads share one counter: every index is claimed by exactly one of them."""
    counter, taken = cpu_blas.counter(), np.zeros(200_000, np.int64)
    threads = [
        threading.Thread(target=_claim_all, args=(counter, taken, taken.size)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (taken == 1).all() and counter[cpu_blas.FINISHED] == taken.size


@njit(nogil=True)
def _claim_all_posting(counter: Any, posted: Any, wait: Any, taken: Any, chunks: int) -> None:
    """_claim_all, posting the map's job on entry as generated lanes do (cpu_lanes.lane)."""
    if wait[3] != 0:
        cpu_spin.post_from_native(posted, wait[3])
        wait[3] = 0
    _claim_all(counter, taken, chunks)


def _bound_lane(counter: np.ndarray, taken: np.ndarray, chunks: int) -> Any:
    # A worker may reach its lane after the map returned: it must see this map's counter.
    def lane(_: int, worker: int) -> None:
        posted, wait = cpu_threads.lane_wait() if worker else cpu_threads.caller_wait()
        _claim_all_posting(counter, posted, wait, taken, chunks)

    return lane


def test_pool_returns_once_every_lane_chunk_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map of lanes returns when the counter says every chunk finished (workers may still be
    on their way back to Python); many maps in a row each see all their chunks done."""
    record_pool_maps(monkeypatch)
    pool = cpu_threads.Pool(2)
    lanes = [0, 1]
    for chunks in [1, 2, 3, 7, 64, 1000] * 30:
        counter, taken = cpu_blas.counter(), np.zeros(chunks, np.int64)
        lane = _bound_lane(counter, taken, chunks)
        pool.map(lane, lanes, chunks, counter)
        assert (taken == 1).all()


def test_the_callers_lane_posts_the_job_from_native_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map of lanes is posted by the calling thread's lane once it runs without the GIL
    (marked so in the posted counter's second slot, and the workers take part), and by the map
    itself where the caller's items never reach a lane."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    pool = cpu_threads.Pool(2)
    chunks, shared = 400, 0
    for _ in range(20):
        counter, taken = cpu_blas.counter(), np.zeros(chunks, np.int64)
        pool.map(_bound_lane(counter, taken, chunks), [0, 1], chunks, counter)
        assert (taken == 1).all()
        assert cpu_threads._POSTED[0] == cpu_threads._POSTED[1]  # posted from native code
        shared += counter[cpu_blas.CLAIMED] > chunks + 1  # a worker's lane claimed too
    assert shared > 0
    assert cpu_threads.caller_wait()[1][3] == 0  # the caller's next lane posts nothing

    def python_items(_: int, worker: int) -> None:
        pass

    pool.map(python_items, [0, 1], 2, cpu_blas.counter())
    assert cpu_threads._POSTED[0] != cpu_threads._POSTED[1]  # posted by the map, from Python


@njit(nogil=True)
def _claim_all_then_poll(counter: Any, posted: Any, wait: Any, taken: Any, chunks: int) -> None:
    """_claim_all_posting, then polling for the pool's next job as generated lanes do."""
    _claim_all_posting(counter, posted, wait, taken, chunks)
    cpu_spin.spin_while(posted, 0, wait[0], wait[1], wait[2])


def test_a_worker_takes_the_job_its_lane_returned_for_without_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's lane returns once the next map is posted; the worker then goes straight to
    that job, without another poll (one that finds the job posted already)."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Quiet, "until", 0.0)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    polls: list[bool] = []  # per poll of a worker: whether the job it polls for was posted
    real = cpu_spin.store_then_spin_while_timed

    def poll(store: Any, at: int, value: int, flags: Any, index: int, seen: int, *rest: Any) -> int:
        if threading.current_thread().name.startswith("eqsat-cpu"):
            polls.append(int(flags[index]) != seen)
        return real(store, at, value, flags, index, seen, *rest)

    monkeypatch.setattr(cpu_spin, "store_then_spin_while_timed", poll)
    pool, chunks, maps, shared = cpu_threads.Pool(2), 400, 100, 0
    for _ in range(maps):
        counter, taken = cpu_blas.counter(), np.zeros(chunks, np.int64)

        def lane(_: int, worker: int, counter: Any = counter, taken: Any = taken) -> None:
            posted, wait = cpu_threads.lane_wait() if worker else cpu_threads.caller_wait()
            _claim_all_then_poll(counter, posted, wait, taken, chunks)

        pool.map(lane, [0, 1], chunks, counter)
        assert (taken == 1).all()
        shared += counter[cpu_blas.CLAIMED] > chunks + 1  # a worker's lane claimed too
    assert shared > maps // 2
    assert sum(polls) <= maps // 10, f"{sum(polls)} of {len(polls)} polls found the job posted"


def test_a_poller_does_not_settle_after_a_native_post() -> None:
    """spin_while settles (polls on) after a change posted from Python, where the poster may
    still hold the GIL, and returns at once after one posted from native code."""
    flags = np.zeros(8, np.int64)
    cpu_spin.post_from_native(flags, 5)
    assert flags[0] == flags[1] == 5
    start = time.perf_counter()
    assert cpu_spin.spin_while(flags, 0, 4, 10, 10**8) == 5  # settling: seconds
    assert time.perf_counter() - start < 0.5


@njit(nogil=True)
def _claim(counter: Any) -> int:
    return cpu_blas.increment(counter, cpu_blas.CLAIMED)


def test_pool_raises_a_lane_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lane that fails never counts its chunk: the caller stops polling, waits for the items
    and raises the error."""
    record_pool_maps(monkeypatch)
    pool = cpu_threads.Pool(2)
    counter = cpu_blas.counter()

    def lane(_: int, worker: int) -> None:
        if _claim(counter) == 0:
            raise RuntimeError("lane failed")

    with pytest.raises(RuntimeError, match="lane failed"):
        pool.map(lane, [0, 1], 4, counter)


def _conv(
    shape: tuple, m: int, kernel: tuple, attrs: dict, epilogue: str, dtype: type = F32
) -> eqsat.Graph:
    rng = np.random.default_rng(3)
    g = eqsat.Graph("lanes")
    x = g.input("x", shape, dtype)
    group = int(attrs.get("group", 1))
    w = g.constant(rng.standard_normal((m, shape[1] // group, *kernel)).astype(dtype), "w")
    b = g.constant(rng.standard_normal((m,)).astype(dtype), "b")
    y = g.op("Conv", x, w, b, **attrs)
    r = g.input("r", y.shape, dtype)
    z = g.op("FusedConv", x, w, b, r, num_base_inputs=3, epilogue=epilogue, **attrs)
    g.output(y, "y")
    g.output(z, "z")
    return g


def _lanes_and_python_chunks(
    monkeypatch: pytest.MonkeyPatch, graph: eqsat.Graph, dtype: type, tolerance: float
) -> None:
    """``graph`` on two threads in lanes (three runs) and in Python chunks, against numpy."""
    rng = np.random.default_rng(5)
    feeds = {v.name: rng.standard_normal(v.shape).astype(dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)
    in_lanes: list[bool] = []
    sizes = record_pool_maps(monkeypatch, in_lanes)
    exe = cpu.compile(graph, threads=2)
    got = [exe.run(feeds) for _ in range(3)]
    assert in_lanes and all(in_lanes) and min(sizes) > 1
    monkeypatch.setattr(cpu_blas, "AVAILABLE", False)
    in_lanes.clear()
    python = cpu.compile(graph, threads=2).run(feeds)
    assert in_lanes and not any(in_lanes)
    for name, expected in want.items():
        for run in got:
            assert run[name].dtype == expected.dtype
            np.testing.assert_allclose(run[name], expected, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(python[name], got[0][name], rtol=tolerance, atol=tolerance)


@needs_blas
@pytest.mark.parametrize("spans", [False, True], ids=["blocks", "channels"])
def test_float64_convs_in_lanes(monkeypatch: pytest.MonkeyPatch, spans: bool) -> None:
    """Lanes call BLAS's double-precision GEMM for float64 convs."""
    split_every_conv(monkeypatch, spans)
    shape, attrs = (1, 4, 9, 8), {"pads": [1, 1, 1, 1]}
    graph = _conv(shape, 40 if spans else 6, (3, 3), attrs, "({0} + {1})", np.float64)
    _lanes_and_python_chunks(monkeypatch, graph, np.float64, 1e-12)


@needs_blas
@pytest.mark.parametrize(
    ("shape", "m", "kernel", "attrs", "spans"),
    [
        ((1, 4, 12, 11), 6, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, False),
        ((1, 4, 9, 9), 6, (3, 3), {"strides": [1, 5], "pads": [2, 2, 2, 2]}, False),
        ((1, 4, 10, 10), 6, (3, 3), {"pads": [1, 1, 1, 1]}, False),
        ((1, 6, 8, 7), 4, (3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, False),
        ((1, 6, 6, 7), 4, (1, 1), {"group": 2}, False),
        ((1, 5, 9, 8), 6, (1, 1), {}, False),
        ((1, 5, 9, 8), 40, (1, 1), {}, True),
        ((1, 4, 9, 8), 40, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
        ((1, 4, 9, 8), 40, (3, 3), {"pads": [1, 1, 1, 1]}, True),
        ((1, 3, 40, 48), 6, (8, 8), {"strides": [8, 8]}, False),
        ((1, 3, 17, 18), 40, (4, 4), {"strides": [4, 4], "pads": [0, 0, 3, 2]}, True),
    ],
    ids=["split", "gather", "wide", "grouped-wide", "1x1-grouped", "1x1", "1x1-channels",
         "cols-channels", "wide-channels", "patches", "patches-channels-end-pads"],
)  # fmt: skip
def test_convs_in_lanes_on_two_threads(
    monkeypatch: pytest.MonkeyPatch, shape: tuple, m: int, kernel: tuple, attrs: dict,
    spans: bool,
) -> None:  # fmt: skip
    """Every blocked conv path, each block (or span of output channels) a chunk of two threads'
    lanes, with a fused residual epilogue: the same as numpy, and as the Python chunks."""
    split_every_conv(monkeypatch, spans)
    graph = _conv(shape, m, kernel, attrs, "max(({0} + {1}), 0)")
    _lanes_and_python_chunks(monkeypatch, graph, F32, 1e-4)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_parts_in_lanes(monkeypatch: pytest.MonkeyPatch, dtype: type) -> None:
    """GEMM steps cut by rows (96x40 by 40x24) and by columns (96x24 by 24x300) run their parts
    in lanes on two threads, and match numpy and the Python chunks. (Constant weights, which
    the packed tiles take by default, through BLAS here.)"""
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    rng = np.random.default_rng(3)
    g = eqsat.Graph("gemms")
    x = g.input("x", (96, 40), dtype)
    w1 = g.constant(rng.standard_normal((40, 24)).astype(dtype), "w1")
    w2 = g.constant(rng.standard_normal((24, 300)).astype(dtype), "w2")
    g.output(g.op("MatMul", g.op("MatMul", x, w1), w2), "y")
    _lanes_and_python_chunks(monkeypatch, g, dtype, 1e-4 if dtype == F32 else 1e-10)


@needs_blas
def test_transposed_gemm_parts_keep_python_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Gemm whose A is transposed (a view without contiguous rows) splits in Python chunks
    (constant weights through BLAS, not the packed tiles)."""
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    rng = np.random.default_rng(4)
    g = eqsat.Graph("gemm_t")
    x = g.input("x", (40, 96))
    w = g.constant(rng.standard_normal((40, 24)).astype(F32), "w")
    g.output(g.op("Gemm", x, w, transA=1), "y")
    feeds = {"x": rng.standard_normal((40, 96)).astype(F32)}
    in_lanes: list[bool] = []
    sizes = record_pool_maps(monkeypatch, in_lanes)
    got = cpu.compile(g, threads=2).run(feeds)
    assert sizes and max(sizes) > 1 and in_lanes and not any(in_lanes)
    np.testing.assert_allclose(got["y"], feeds["x"].T @ w.const, rtol=1e-4, atol=1e-4)

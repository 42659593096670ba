"""Slice, Split, Gather, Pad, reductions and Softmax on the cpu target (eqsat.lowering.cpu_small).

Each case compiles a small graph, checks which step kind ran (no numpy reference left) and compares
every output with the numpy reference target, on a fed input and on one produced by a kernel
(a planned buffer, which the steps bind once); a few are checked against onnxruntime too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_small, cpu_softmax

import eqsat
from eqsat.errors import InputError

F32 = np.float32
I64 = np.int64


def _data(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-50, 50, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def run_op(
    op: str,
    shape: tuple[int, ...],
    consts: list[np.ndarray | None],
    *,
    dtype: Any = F32,
    planned: bool = False,
    outputs: int = 1,
    fed: dict[str, np.ndarray] | None = None,
    kind: str | None = None,
    seed: int = 0,
    **attrs: Any,
) -> eqsat.Executable:
    """``op(x, *consts)`` on the cpu target against the numpy target.

    ``planned``: x is ``Relu(x0)`` (a planned buffer) rather than a feed. ``fed``: extra fed inputs
    placed after the constants.
    """
    rng = np.random.default_rng(seed)
    g = eqsat.Graph(op)
    x = g.input("x", shape, np.dtype(dtype))
    if planned:
        x = g.op("Relu", x)
    inputs = [None if c is None else g.constant(c) for c in consts]
    inputs += [g.input(name, a.shape, a.dtype) for name, a in (fed or {}).items()]
    result = g.op(op, x, *inputs, outputs=outputs, **attrs)
    results = result if isinstance(result, tuple) else (result,)
    for k, value in enumerate(results):
        g.output(value, f"out{k}")
    feeds = {"x": _data(rng, shape, dtype), **(fed or {})}
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    if kind is not None:
        assert {s.kind for s in exe.steps if s.node.startswith(op)} == {kind}
    for _ in range(2):
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype and got[name].shape == expected.shape
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    return exe


def ints(*values: int) -> np.ndarray:
    return np.array(values, I64)


# ------------------------------------------------------------------ Slice / Split
@pytest.mark.parametrize("planned", [False, True])
def test_slice_views_and_copies(planned: bool) -> None:
    shape = (4, 6, 5)
    # Leading-axis ranges of a C-contiguous array are views; anything else is copied.
    run_op("Slice", shape, [ints(1), ints(3)], planned=planned, kind="view")
    run_op("Slice", (1, 258, 4), [ints(0, 2), ints(129, 4), ints(1, 2)], planned=planned)
    run_op("Slice", shape, [ints(1, -1), ints(4, 1000), ints(1, 2), ints(2, 1)], planned=planned)
    run_op("Slice", shape, [ints(-1), ints(-1000), ints(0), ints(-2)], kind="copy")
    run_op("Slice", shape, [ints(5, 0), ints(-7, 6), ints(-1, 1), ints(-1, 3)], planned=planned)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int64, np.int8, np.bool_])
def test_slice_and_split_dtypes(dtype: Any) -> None:
    run_op("Slice", (3, 8), [ints(1), ints(7), ints(1), ints(3)], dtype=dtype, kind="copy")
    run_op("Split", (3, 8), [ints(3, 5)], dtype=dtype, outputs=2, axis=1, kind="copy")


def test_split() -> None:
    run_op("Split", (1, 82, 21), [ints(64, 18)], outputs=2, axis=1, kind="view")
    run_op("Split", (6, 4), [], outputs=3, kind="view")
    run_op("Split", (2, 7, 3), [], outputs=3, axis=-2, num_outputs=3, planned=True, kind="copy")


@pytest.mark.parametrize("planned", [False, True])
def test_concat_of_constants_feeds_and_planned_buffers(planned: bool) -> None:
    fed = {"f": np.arange(8, dtype=F32).reshape(2, 4)}
    run_op("Concat", (2, 3), [np.ones((2, 2), F32)], fed=fed, axis=1, planned=planned, kind="copy")
    run_op("Concat", (1, 1, 5), [np.ones((1, 1, 5), F32)], axis=0, planned=planned, kind="copy")


def test_concat_starting_with_a_constant() -> None:
    """A ViT's class token (a constant) before its patches: a copy step, not the reference."""
    g = eqsat.Graph("cls")
    token = g.constant(np.arange(4, dtype=F32).reshape(1, 1, 4))
    patches = g.op("Relu", g.input("x", (1, 3, 4)))
    g.output(g.op("Concat", token, patches, axis=1), "y")
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    x = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(F32)
    want = np.concatenate([np.arange(4, dtype=F32).reshape(1, 1, 4), np.maximum(x, 0)], 1)
    np.testing.assert_array_equal(exe.run({"x": x})["y"], want)


# ------------------------------------------------------------------ Gather
@pytest.mark.parametrize("planned", [False, True])
def test_gather_constant_indices(planned: bool) -> None:
    shape = (2, 5, 3)
    run_op("Gather", shape, [np.array(1, I64)], planned=planned, kind="view")
    run_op("Gather", shape, [np.array(-1, I64)], axis=1, planned=planned, kind="copy")
    run_op("Gather", (1, 128, 1), [np.array(0, I64)], axis=2, planned=planned, kind="view")
    run_op("Gather", shape, [ints(1, 3)], axis=1, planned=planned, kind="copy")
    run_op("Gather", shape, [ints(4, -5, 2, 2)], axis=1, planned=planned, kind="copy")
    run_op("Gather", shape, [np.array([[2, 0], [-1, 1]], np.int32)], axis=-1, planned=planned)


@pytest.mark.parametrize("dtype", [F32, np.int32, np.float16])
def test_gather_fed_indices(dtype: Any) -> None:
    for axis, index in [(0, np.array(-2, I64)), (1, np.array([[4, -5], [0, 1]], np.int32))]:
        run_op("Gather", (3, 5, 2), [], dtype=dtype, fed={"i": index}, axis=axis, kind="copy")


def test_gather_bad_fed_index_is_an_input_error() -> None:
    g = eqsat.Graph("gather")
    x = g.input("x", (3, 4), np.dtype(F32))
    i = g.input("i", (2,), np.dtype(I64))
    g.output(g.op("Gather", x, i, axis=1), "y")
    exe = eqsat.compile(g, target="cpu")
    with pytest.raises(InputError, match="index 4 is out of range"):
        exe.run({"x": np.zeros((3, 4), F32), "i": np.array([0, 4], I64)})


# ------------------------------------------------------------------ Pad
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("planned", [False, True])
def test_pad_modes(mode: str, planned: bool) -> None:
    run_op("Pad", (1, 576), [ints(0, 32, 0, 32)], mode=mode, planned=planned, kind="copy")
    run_op("Pad", (2, 3, 4, 5), [ints(0, 1, 2, 3, 0, 2, 1, 4)], mode=mode, planned=planned)
    run_op("Pad", (7,), [ints(3, 0)], mode=mode, planned=planned)


def test_pad_crops_axes_and_values() -> None:
    run_op("Pad", (4, 6), [ints(-1, 2, 1, -3)], mode="constant")
    run_op("Pad", (4, 6), [ints(-1, 2, 1, -3)], mode="reflect")
    run_op("Pad", (2, 3, 5), [ints(2, 1), np.array(1.5, F32), ints(-1)], mode="constant")
    run_op("Pad", (2, 3, 5), [ints(1, 0, 2, 2), None, ints(0, 2)], mode="edge")
    run_op("Pad", (3, 4), [ints(1, 1, 1, 1), np.array(7, np.int32)], dtype=np.int32)
    run_op("Pad", (3, 4), [ints(0, 2, 1, 0)], dtype=np.float16, mode="reflect")


def test_pad_maps_follow_numpy() -> None:
    maps = cpu_small.pad_maps((4,), [(2, -1)], "constant")
    assert maps[0].tolist() == [-1, -1, 0, 1, 2]
    assert cpu_small.pad_maps((3,), [(2, 2)], "reflect")[0].tolist() == [2, 1, 0, 1, 2, 1, 0]


# ------------------------------------------------------------------ reductions / Softmax
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions(op: str, keepdims: int) -> None:
    shape = (2, 3, 4, 5)
    for axes in ([1], [-1], [1, 2], [0], [2, 3]):
        run_op(op, shape, [ints(*axes)], keepdims=keepdims, kind="kernel")
    run_op(op, shape, [], keepdims=keepdims, planned=True, kind="kernel")
    run_op(op, (1, 1), [ints(1)], keepdims=keepdims, kind="kernel")
    run_op(op, (3, 1, 4), [ints(0, 1)], keepdims=keepdims, dtype=np.float64, kind="kernel")
    # Long innermost runs: the sums take the vectorized row sum.
    run_op(op, (2, 7, 9, 80), [ints(2, 3)], keepdims=keepdims, planned=True, kind="kernel")
    run_op(op, (3, 1000), [ints(-1)], keepdims=keepdims, dtype=np.float64, kind="kernel")


def test_reduction_edge_cases() -> None:
    # No axes with noop_with_empty_axes: the input itself.
    run_op("ReduceSum", (2, 3), [], noop_with_empty_axes=1, kind="view")
    # Axes interleaved with kept ones: numpy's reduction (the reference) runs them.
    g = eqsat.Graph("r")
    x = g.input("x", (2, 3, 4), np.dtype(F32))
    g.output(g.op("ReduceMax", x, g.constant(ints(0, 2))), "y")
    assert eqsat.compile(g, target="cpu").report["reference_ops"] == {"ReduceMax": 1}
    # NaN propagates through max/min as in numpy.
    g = eqsat.Graph("nan")
    x = g.input("x", (2, 4), np.dtype(F32))
    g.output(g.op("ReduceMax", x, g.constant(ints(1)), keepdims=0), "max")
    g.output(g.op("ReduceMin", x, g.constant(ints(0)), keepdims=0), "min")
    data = np.array([[1, np.nan, 3, 0], [2, 5, -1, 4]], F32)
    got = eqsat.compile(g, target="cpu").run({"x": data})
    np.testing.assert_array_equal(got["max"], [np.nan, 5])
    np.testing.assert_array_equal(got["min"], [1, np.nan, -1, 0])


@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_softmax_over_a_middle_axis(dtype: Any) -> None:
    run_op("Softmax", (1, 16, 4, 21), [], dtype=dtype, axis=1, kind="kernel")
    run_op("Softmax", (3, 5, 2), [], dtype=dtype, axis=0, planned=True, kind="kernel")


def test_softmax_rows_f32() -> None:
    run_op("Softmax", (2, 40, 1871), [], axis=-1, kind="kernel")
    run_op("Softmax", (7, 3), [], axis=1, planned=True, kind="kernel")
    # A row holding NaN or +inf comes out all NaN, as in the reference; the others are intact.
    x = np.random.default_rng(1).standard_normal((4, 37)).astype(F32) * 20
    x[1, 5], x[2, 36] = np.nan, np.inf
    out = np.empty_like(x)
    cpu_softmax.softmax_rows_f32(x, out)
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    e = np.exp(x[[0, 3]].astype(np.float64) - x[[0, 3]].max(1, keepdims=True))
    np.testing.assert_allclose(out[[0, 3]], e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_log_softmax_rows(dtype: Any) -> None:
    run_op("LogSoftmax", (1, 50, 30), [], dtype=dtype, axis=-1, kind="kernel")  # a CTC head
    run_op("LogSoftmax", (6, 9, 1), [], dtype=dtype, axis=1, planned=True, kind="kernel")
    # NaN and +inf rows come out NaN, as in the reference; the others are intact.
    x = np.random.default_rng(2).standard_normal((3, 33)).astype(dtype) * 30
    x[1, 4], x[2, 0] = np.nan, np.inf
    out = np.empty_like(x)
    kernel = cpu_softmax.log_softmax_rows_f32 if dtype == F32 else cpu_softmax.log_softmax_rows
    kernel(x, out)
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    row = x[0].astype(np.float64)
    want = row - row.max() - np.log(np.exp(row - row.max()).sum())
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)


def test_log_softmax_over_a_middle_axis_stays_on_the_reference() -> None:
    g = eqsat.Graph("lsm")
    g.output(g.op("LogSoftmax", g.input("x", (2, 5, 3)), axis=1), "y")
    assert eqsat.compile(g, target="cpu").report["reference_ops"] == {"LogSoftmax": 1}


@pytest.mark.parametrize("dtype", [F32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 10), (1, 2, 3, 4, 5)])
def test_instance_normalization(dtype: Any, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    c = shape[1]
    scale, bias = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    run_op("InstanceNormalization", shape, [scale, bias], dtype=dtype, epsilon=1e-3, kind="kernel")


# ------------------------------------------------------------------ against onnxruntime
def test_pad_and_gather_match_onnxruntime() -> None:
    from onnx import TensorProto as T
    from onnx import helper as h

    from tests.onnx_testing import init, model, ort_run, vi

    constants = {"pads": (0, 4, 0, 3), "s": (-2,), "e": (0,), "a": (1,), "st": (-3,)}
    nodes = [
        h.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
        h.make_node("Gather", ["p", "i"], ["y"], axis=1),
        h.make_node("Slice", ["p", "s", "e", "a", "st"], ["z"]),
    ]
    proto = model(
        nodes,
        [vi("x", [2, 9]), vi("i", [3], T.INT64)],
        [vi("y", None), vi("z", None)],
        [init(name, ints(*values)) for name, values in constants.items()],
    )
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 9)).astype(F32), "i": ints(-1, 0, 7)}
    exe = eqsat.compile(eqsat.load(proto), target="cpu")
    assert exe.report["reference_ops"] == {}
    got = exe.run(feeds)
    for name, want in zip(("y", "z"), ort_run(proto, feeds), strict=True):
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_gather_constant_table_fed_indices(index_dtype: Any) -> None:
    # An embedding: a constant table gathered by indices fed at run time takes the kernel.
    g = eqsat.Graph("embed")
    table = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
    ids = g.input("I", (3, 4), index_dtype)
    g.output(g.op("Gather", g.constant(table, "T"), ids, axis=0), "Y")
    feeds = {"I": np.array([[1, 2, -1, 0], [9, 3, 3, 4], [0, 0, 5, -10]], index_dtype)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    np.testing.assert_array_equal(exe.run(feeds)["Y"], want["Y"])
    with pytest.raises(InputError, match="Gather"):
        exe.run({"I": np.full((3, 4), 10, index_dtype)})


@pytest.mark.parametrize(
    ("shape", "target"),
    [((1, 5, 1), (1, 5, 1)), ((3, 1), (2, 3, 4)), ((1, 1, 40), (2, 3, 40)), ((4,), (4,))],
)
def test_expand(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    g = eqsat.Graph("expand")
    x = g.input("X", shape, np.float32)
    y = g.op("Expand", x, g.constant(np.array(target, np.int64), "shape"))
    g.output(g.op("Add", y, y), "Y")  # a consumer: the expanded value is read from its buffer
    feeds = {"X": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    for _ in range(2):
        np.testing.assert_array_equal(exe.run(feeds)["Y"], want["Y"])


@pytest.mark.parametrize("dtype", [F32, np.int64, np.bool_, np.float16])
def test_gather_elements_and_nd_by_constant_indices(dtype: Any) -> None:
    """One take of positions found at compile time (cpu_moves.constant_select), negative
    indices, batch_dims and a GatherND listing every element in order (a copy) included."""
    rng = np.random.default_rng(1)
    index = rng.integers(-5, 5, (3, 4, 6))
    run_op("GatherElements", (3, 5, 6), [index], dtype=dtype, axis=1, kind="copy")
    run_op("GatherElements", (3, 5, 6), [index[..., :2]], dtype=dtype, axis=-1, kind="copy")
    every = np.stack(np.meshgrid(np.arange(1), np.arange(8), indexing="ij"), -1)
    run_op("GatherND", (1, 8), [every.reshape(1, 1, 1, 8, 2)], dtype=dtype, kind="copy")
    pairs = np.array([[[0, 1], [1, -1]], [[2, 0], [0, 0]]])
    run_op("GatherND", (3, 4, 5), [pairs], dtype=dtype, planned=dtype == F32, kind="copy")
    run_op(
        "GatherND", (3, 4, 5), [np.array([[1], [3], [0]])], dtype=dtype, batch_dims=1, kind="copy"
    )


def test_gather_elements_bad_constant_index_is_reported_by_the_reference() -> None:
    g = eqsat.Graph("bad")
    g.output(g.op("GatherElements", g.input("x", (2, 3)), g.constant(np.array([[0, 7]])), axis=1))
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {"GatherElements": 1}
    with pytest.raises(eqsat.EqsatError, match="GatherElements"):
        exe.run({"x": np.zeros((2, 3), F32)})

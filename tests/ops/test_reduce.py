"""Reductions and ArgMax/ArgMin against onnxruntime on one-node models, plus their error cases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import eqsat
from eqsat import ops

REDUCE_OPS = [
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
]  # fmt: skip


def run_ort(op: str, arrays: Sequence[np.ndarray | None], dtypes: list[np.dtype], **attrs: Any):
    """Run one ``op`` node in onnxruntime; every present input is fed."""
    names = ["" if a is None else f"in{i}" for i, a in enumerate(arrays)]
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, arrays, strict=True)
        if a is not None
    ]
    outs = [f"out{i}" for i in range(len(dtypes))]
    outputs = [
        helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(d), None)
        for o, d in zip(outs, dtypes, strict=True)
    ]
    node = helper.make_node(op, names, outs, **attrs)
    model = helper.make_model(
        helper.make_graph([node], "t", inputs, outputs), opset_imports=[helper.make_opsetid("", 21)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: a for n, a in zip(names, arrays, strict=True) if a is not None}
    return session.run(None, feeds)


def run_eqsat(op: str, data: np.ndarray, axes: np.ndarray | None, **attrs: Any) -> list:
    g = eqsat.Graph(op)
    x = g.input("x", data.shape, data.dtype)
    a = None if axes is None else g.constant(axes, "axes")
    result = g.op(op, x, a, **attrs) if a is not None else g.op(op, x, **attrs)
    g.output(result, "y")
    return [eqsat.compile(g).run({"x": data})["y"]]


def check(op: str, data: np.ndarray, axes: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    (got,) = run_eqsat(op, data, axes, **attrs)
    inputs = [data] if axes is None else [data, axes]
    (want,) = run_ort(op, inputs, [got.dtype], **attrs)
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)
    return got


AXES_CASES = [
    pytest.param(None, {}, id="all"),
    pytest.param(np.array([1], np.int64), {}, id="axis1"),
    pytest.param(np.array([-1, 0], np.int64), {"keepdims": 0}, id="neg-nokeep"),
    pytest.param(np.array([], np.int64), {}, id="empty-axes"),
    pytest.param(np.array([], np.int64), {"noop_with_empty_axes": 1}, id="empty-noop"),
    pytest.param(None, {"noop_with_empty_axes": 1, "keepdims": 0}, id="none-noop"),
    pytest.param(np.array([0, 2], np.int64), {"keepdims": 0}, id="two-nokeep"),
]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize(("axes", "attrs"), AXES_CASES)
def test_reductions_match_onnxruntime(
    op: str, axes: np.ndarray | None, attrs: dict, rng: np.random.Generator
) -> None:
    data = rng.uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32)
    if op in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMax", "ReduceMin"):
        data -= 1.25  # signs matter for these
    check(op, data, axes, **attrs)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceMean"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_reductions(op: str, dtype: type, rng: np.random.Generator) -> None:
    data = rng.integers(-7, 8, (3, 5)).astype(dtype)
    check(op, data, np.array([1], np.int64))
    check(op, data, None, keepdims=0)


@pytest.mark.parametrize(
    ("op", "identity"),
    [
        ("ReduceSum", 0.0),
        ("ReduceProd", 1.0),
        ("ReduceMax", -np.inf),
        ("ReduceMin", np.inf),
        ("ReduceLogSumExp", -np.inf),
        ("ReduceSumSquare", 0.0),
        ("ReduceL2", 0.0),
    ],
)
def test_empty_extent_gives_identity(op: str, identity: float) -> None:
    data = np.zeros((2, 0, 3), np.float32)
    (got,) = run_eqsat(op, data, np.array([1], np.int64), keepdims=0)
    np.testing.assert_array_equal(got, np.full((2, 3), identity, np.float32))


def test_mean_of_empty_extent_is_nan() -> None:
    (got,) = run_eqsat("ReduceMean", np.zeros((0, 2), np.float32), np.array([0], np.int64))
    assert got.shape == (1, 2) and np.isnan(got).all()


def test_reduce_max_of_bool() -> None:
    data = np.array([[True, False], [False, False]])
    (got,) = run_eqsat("ReduceMax", data, np.array([1], np.int64), keepdims=0)
    np.testing.assert_array_equal(got, [True, False])


def test_log_sum_exp_is_stable_for_large_inputs() -> None:
    data = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]], np.float32)
    (got,) = run_eqsat("ReduceLogSumExp", data, np.array([1], np.int64), keepdims=0)
    np.testing.assert_allclose(got, [1000 + np.log(2), -1000 + np.log(2)], rtol=1e-6)


def test_float16_sum_accumulates_in_float32() -> None:
    data = np.full(4096, 1.0, np.float16)  # float16 counts exactly only up to 2048
    (got,) = run_eqsat("ReduceSum", data, None, keepdims=0)
    assert got.dtype == np.float16 and float(got) == 4096.0


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"axis": 1, "keepdims": 0},
        {"axis": -1, "select_last_index": 1},
        {"axis": 0, "keepdims": 0, "select_last_index": 1},
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_arg_extremes_with_ties(op: str, attrs: dict, dtype: type) -> None:
    # Many ties, so first and last index differ.
    data = np.array([[1, 3, 3, 0], [2, 2, 0, 0], [3, 1, 3, 1]], dtype)
    g = eqsat.Graph("arg")
    x = g.input("x", data.shape, data.dtype)
    g.output(g.op(op, x, **attrs), "y")
    got = eqsat.compile(g).run({"x": data})["y"]
    (want,) = run_ort(op, [data], [np.dtype(np.int64)], **attrs)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_reduction_folds_on_constant_input() -> None:
    g = eqsat.Graph("fold")
    c = g.constant(np.arange(6, dtype=np.int64).reshape(2, 3))
    y = g.op("ReduceSum", c, g.constant(np.array([0], np.int64)), keepdims=0)
    np.testing.assert_array_equal(y.const, [3, 5, 7])


def test_reduce_cost_counts_one_flop_per_input_element() -> None:
    g = eqsat.Graph("cost")
    x = g.input("x", (8, 16))
    y = g.op("ReduceMean", x, g.constant(np.array([1], np.int64)))
    node = y.producer
    cost = ops.get("ReduceMean").cost(node.inputs, node.outputs, node.attrs)
    assert cost.flops == 128 and cost.bytes_written == 8 * 4
    l2 = g.op("ReduceL2", x)
    assert ops.get("ReduceL2").cost(l2.producer.inputs, [l2], l2.producer.attrs).flops == 256


# ------------------------------------------------------------------ errors
def test_non_constant_axes_are_rejected() -> None:
    g = eqsat.Graph("bad")
    x = g.input("x", (2, 3))
    axes = g.input("axes", (1,), np.int64)
    with pytest.raises(eqsat.ShapeError, match=r"input 'axes'.*compile time"):
        g.op("ReduceSum", x, axes)


@pytest.mark.parametrize(
    ("op", "axes", "attrs", "message"),
    [
        ("ReduceSum", [2], {}, "out of range"),
        ("ReduceMax", [0, -2], {}, "repeat"),
        ("ReduceLogSumExp", None, {}, "does not accept dtype int32"),
        ("ArgMax", None, {"axis": 3}, "out of range"),
    ],
)
def test_bad_reductions(op: str, axes: list | None, attrs: dict, message: str) -> None:
    g = eqsat.Graph("bad")
    x = g.input("x", (2, 3), np.int32 if "LogSum" in op else np.float32)
    extra = [] if axes is None else [g.constant(np.array(axes, np.int64))]
    with pytest.raises(eqsat.ShapeError, match=message):
        g.op(op, x, *extra, **attrs)


def test_unknown_attribute_is_rejected() -> None:
    g = eqsat.Graph("bad")
    x = g.input("x", (2, 3))
    with pytest.raises(eqsat.UnsupportedOperatorError, match="axes"):
        g.op("ReduceSum", x, axes=[0])  # the opset<13 attribute form is the importer's job

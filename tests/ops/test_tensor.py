"""Data-movement, shape-arithmetic, indexing and If ops against onnxruntime and numpy.

Each op is built through the builder API and compared with onnxruntime running the same one-node
model; ``test_onnx_node_conformance`` runs the official ONNX backend node tests for these ops.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import eqsat
from eqsat import ops
from tests.onnx_testing import one_node_graph

I64 = np.int64


def i64(*values: int) -> np.ndarray:
    return np.array(values, I64)


def run_ort(op: str, arrays: Sequence[np.ndarray | None], dtypes: list, **attrs: Any) -> list:
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
    attrs = {
        k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
        for k, v in attrs.items()
        if v is not None
    }
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "t", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, arrays, strict=True) if a is not None})


build = one_node_graph


def check(op: str, *arrays: np.ndarray | None, const: Sequence[int] = (), n: int = 1, **attrs):
    """Build and run ``op`` in eqsat and in onnxruntime; assert equal results, return eqsat's."""
    g, results, feeds = build(op, arrays, const, n, **attrs)
    got = eqsat.compile(g).run(feeds)
    want = run_ort(op, arrays, [v.dtype for v in results], **attrs)
    for k, expected in enumerate(want):
        actual = got[f"out{k}"]
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        assert actual.dtype == expected.dtype
        if actual.dtype.kind == "f":
            np.testing.assert_allclose(actual, expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(actual, expected)
    return [got[f"out{k}"] for k in range(len(results))]


X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


# ------------------------------------------------------------------ reshapes
@pytest.mark.parametrize(
    ("shape", "allowzero"),
    [((0, -1), 0), ((-1,), 0), ((4, 0, 2), 0), ((2, 0, 2, -1), 0), ((6, 4), 1), ((1, -1, 1), 0)],
)
def test_reshape(shape: tuple, allowzero: int) -> None:
    check("Reshape", X, i64(*shape), const=(1,), allowzero=allowzero)


def test_reshape_allowzero_keeps_zero() -> None:
    empty = np.zeros((0, 3), np.float32)
    (y,) = check("Reshape", empty, i64(3, 0), const=(1,), allowzero=1)
    assert y.shape == (3, 0)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis: int) -> None:
    check("Flatten", X, axis=axis)


@pytest.mark.parametrize("perm", [None, [1, 0, 2], [2, 0, 1]])
def test_transpose(perm: list | None) -> None:
    check("Transpose", X, perm=perm)


def test_squeeze_and_unsqueeze() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 3, 1, 2)
    check("Squeeze", x)
    check("Squeeze", x, i64(-2), const=(1,))
    check("Squeeze", x, i64(), const=(1,))
    check("Unsqueeze", X, i64(0, -1), const=(1,))
    (y,) = check("Unsqueeze", X, i64(3, 1), const=(1,))
    assert y.shape == (2, 1, 3, 1, 4)


# ------------------------------------------------------------------ concat / split
def test_concat_with_empty_input() -> None:
    a, b = X, np.ones((2, 3, 1), np.float32)
    check("Concat", a, np.zeros((2, 3, 0), np.float32), b, axis=-1)
    check("Concat", np.ones((1, 2), I64), np.zeros((3, 2), I64), axis=0)


@pytest.mark.parametrize(
    ("dim", "n", "split", "attrs"),
    [
        (7, 3, None, {"num_outputs": 3}),  # uneven: 3, 3, 1
        (8, 3, None, {"num_outputs": 3}),  # 3, 3, 2
        (7, 2, i64(2, 5), {}),
    ],
)
def test_split(dim: int, n: int, split: np.ndarray | None, attrs: dict) -> None:
    x = np.arange(2 * dim, dtype=np.float32).reshape(2, dim)
    outs = check("Split", x, split, const=(1,), n=n, axis=1, **attrs)
    np.testing.assert_array_equal(np.concatenate(outs, axis=1), x)


def test_split_without_sizes_takes_equal_parts() -> None:
    # Opset 18 wants split or num_outputs; the older form (equal parts) is accepted too, so
    # upgraded opset-13 nodes need no rewriting.
    g, _, feeds = build("Split", [X], (), 2, axis=-1)
    got = eqsat.compile(g).run(feeds)
    np.testing.assert_array_equal(got["out1"], X[..., 2:])
    with pytest.raises(eqsat.ShapeError, match="evenly"):
        build("Split", [X], (), 3, axis=-1)


# ------------------------------------------------------------------ slice
BIG = np.iinfo(np.int64).max
SLICES = [
    ((0, 1), (2, 3), None, None),
    ((-1,), (-BIG,), (1,), (-1,)),  # reverse one axis through the INT64_MIN-like end
    ((BIG,), (0,), (2,), (-1,)),  # start clamped to the last element, end excludes index 0
    ((10, -100), (-100, 10), (-1, 0), (-2, 1)),  # clamping on both sides
    ((3,), (-5,), (2,), (-2,)),
    ((1, 0), (1000, 3), (0, 1), (1, 2)),
    ((-3,), (BIG,), (-1,), (1,)),
    ((2,), (1,), (2,), (1,)),  # empty result
]


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), SLICES)
@pytest.mark.parametrize("index_type", [np.int64, np.int32])
def test_slice(starts: tuple, ends: tuple, axes: tuple | None, steps: tuple | None, index_type):
    if index_type == np.int32:
        starts, ends = (
            tuple(int(np.clip(v, -(2**31), 2**31 - 1)) for v in t) for t in (starts, ends)
        )
    arrays = [
        np.array(v, index_type) if v is not None else None for v in (starts, ends, axes, steps)
    ]
    check("Slice", X, *arrays, const=(1, 2, 3, 4))


# ------------------------------------------------------------------ gather family
@pytest.mark.parametrize("index_type", [np.int32, np.int64])
def test_gather_negative_indices(index_type: type) -> None:
    check("Gather", X, np.array([[-1, 0], [1, -2]], index_type), axis=1)
    check("Gather", X, np.array(-1, index_type), axis=-1)
    check("Gather", X, np.array([1, -2], index_type))


def test_gather_elements_and_gather_nd() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    check("GatherElements", x, np.array([[0, -1], [2, 1]], np.int64), axis=1)
    check("GatherElements", x, np.array([[2, -3, 0, 1]], np.int32), axis=0)
    check("GatherND", X, np.array([[0, 1], [1, -1]], np.int64))
    check("GatherND", X, np.array([[[1]], [[2]]], np.int64), batch_dims=1)


def test_scatter() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    upd = np.full((2, 4), -1.0, np.float32)
    check("ScatterND", x, np.array([[2], [0]], np.int64), upd)
    check("ScatterND", x, np.array([[1, -1], [0, 0]], np.int64), np.array([7, 8], np.float32))
    check("ScatterND", x, np.array([[1], [1]], np.int64), upd, reduction="add")
    idx = np.array([[1, -1], [0, 2]], np.int64)
    check("ScatterElements", x, idx, np.ones((2, 2), np.float32), axis=1)
    check("ScatterElements", x, idx, np.ones((2, 2), np.float32), axis=1, reduction="mul")


def test_onehot() -> None:
    values = np.array([0.5, 2.0], np.float32)
    check("OneHot", np.array([[0, -1], [5, 2]], np.int64), i64(4), values, const=(1,))
    check("OneHot", np.array([1, 3], np.int64), i64(3), values, const=(1,), axis=0)


# ------------------------------------------------------------------ expand / tile / pad
def test_expand_and_tile() -> None:
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    check("Expand", x, i64(2, 1, 4), const=(1,))
    check("Expand", x, i64(1), const=(1,))  # bidirectional: the target may be smaller
    check("Tile", x, i64(2, 3), const=(1,))
    check("Tile", x.astype(np.int32), i64(1, 0), const=(1,))


PADS = [
    ("constant", (1, 0, 2, 1), None),
    ("constant", (-1, 2, 0, -2), None),
    ("reflect", (2, 1, 1, 3), None),
    ("reflect", (-1, 2, 0, 0), None),
    ("edge", (3, 0, -1, 2), None),
    ("wrap", (1, 5, 2, 0), None),
    ("wrap", (0, 2), (-1,)),
    ("edge", (2, -1), (0,)),
]


@pytest.mark.parametrize(("mode", "pads", "axes"), PADS)
def test_pad(mode: str, pads: tuple, axes: tuple | None) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    value = np.array(-7.5, np.float32) if mode == "constant" else None
    axes_array = None if axes is None else i64(*axes)
    check("Pad", x, i64(*pads), value, axes_array, const=(1, 3), mode=mode)


def test_pad_default_value_and_ints() -> None:
    check("Pad", np.arange(4, dtype=np.int32).reshape(2, 2), i64(1, 1, 0, 1), const=(1,))


def test_depth_space() -> None:
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float32).reshape(2, 8, 2, 3)
    for mode in ("DCR", "CRD"):
        (y,) = check("DepthToSpace", x, blocksize=2, mode=mode)
        g, _, feeds = build("SpaceToDepth", [y], (), 1, blocksize=2, mode=mode)
        np.testing.assert_array_equal(eqsat.compile(g).run(feeds)["out0"], x)
    check("SpaceToDepth", np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4), blocksize=2)


# ------------------------------------------------------------------ shape arithmetic
@pytest.mark.parametrize(
    "attrs", [{}, {"start": 1}, {"end": -1}, {"start": -2, "end": 10}, {"start": 5}]
)
def test_shape_and_size(attrs: dict) -> None:
    check("Shape", X, **attrs)
    check("Size", X)


def test_constant_of_shape() -> None:
    check("ConstantOfShape", i64(2, 3), const=(0,))
    check("ConstantOfShape", i64(2, 0), const=(0,), value=np.array([5], np.int64))
    (y,) = check("ConstantOfShape", i64(), const=(0,), value=np.array([1.5], np.float32))
    assert y.shape == ()


@pytest.mark.parametrize(
    ("start", "limit", "delta"),
    [(0, 10, 3), (10, 0, -3), (5, 5, 1), (5, 1, 2), (1.0, 2.0, 0.25), (2.5, -1.0, -0.75)],
)
def test_range(start: float, limit: float, delta: float) -> None:
    dtype = np.float32 if isinstance(start, float) else np.int64
    check("Range", *(np.array(v, dtype) for v in (start, limit, delta)), const=(0, 1, 2))
    if dtype == np.int64:
        check("Range", *(np.array(v, np.int32) for v in (start, limit, delta)), const=(0, 1, 2))


def test_shape_chain_folds_to_constants_at_build_time() -> None:
    g = eqsat.Graph("chain")
    x = g.input("x", (2, 3, 4))
    shape = g.op("Shape", x)
    batch = g.op("Gather", shape, g.constant(np.array(0, I64)))
    dims = g.op("Unsqueeze", batch, g.constant(i64(0)))
    target = g.op("Concat", dims, g.constant(i64(-1)), axis=0)
    y = g.op("Reshape", x, target)
    g.output(y, "y")
    assert shape.const.dtype == I64 and list(shape.const) == [2, 3, 4]
    assert target.const.tolist() == [2, -1] and y.shape == (2, 12)
    size = g.op("Size", x)
    ones = g.op("ConstantOfShape", g.op("Unsqueeze", size, g.constant(i64(0))))
    steps = g.op("Range", g.constant(np.array(0, I64)), size, g.constant(np.array(5, I64)))
    assert int(size.const) == 24 and ones.shape == (24,) and ones.const is not None
    assert steps.const.tolist() == [0, 5, 10, 15, 20]
    g.fold_constants()
    assert [n.op for n in g.nodes] == ["Reshape", "Identity"]
    out = eqsat.compile(g).run({"x": X})["y"]
    np.testing.assert_array_equal(out, X.reshape(2, 12))


# ------------------------------------------------------------------ topk / cumsum / nonzero
@pytest.mark.parametrize("attrs", [{}, {"largest": 0}, {"axis": 0}, {"axis": 1, "largest": 0}])
def test_topk_with_ties(attrs: dict) -> None:
    x = np.array([[3, 1, 3, 2], [0, 0, 5, 0], [1, 1, 1, 1]], np.float32)
    check("TopK", x, i64(2), const=(1,), n=2, **attrs)
    check("TopK", x.astype(np.int64), i64(3), const=(1,), n=2, **attrs)


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int) -> None:
    check("CumSum", X, np.array(1, np.int32), const=(1,), exclusive=exclusive, reverse=reverse)
    ints = np.arange(6, dtype=np.int64).reshape(2, 3)
    check("CumSum", ints, np.array(-1, I64), const=(1,), exclusive=exclusive, reverse=reverse)


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("axis", [0, -1])
def test_cumprod_matches_onnxruntime(exclusive: int, reverse: int, axis: int) -> None:
    """CumProd (opset 26): the running product, its exclusive form starting from 1."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(10 + axis + 2 * exclusive + 4 * reverse)
    for x in ((rng.standard_normal((3, 5)) * 2).astype(np.float32), rng.integers(-3, 4, (3, 5))):
        node = helper.make_node("CumProd", ["x", "a"], ["y"], exclusive=exclusive, reverse=reverse)
        tp = helper.np_dtype_to_tensor_dtype(x.dtype)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", tp, x.shape)],
            [helper.make_tensor_value_info("y", tp, None)],
            [numpy_helper.from_array(np.array(axis, I64), "a")],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        for target in ("numpy", "cpu"):
            got = eqsat.compile(eqsat.load(model), target=target).run({"x": x})["y"]
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_nonzero_needs_a_constant_input() -> None:
    g = eqsat.Graph("nz")
    data = np.array([[1, 0, 2], [0, 3, 0]], np.float32)
    y = g.op("NonZero", g.constant(data))
    np.testing.assert_array_equal(y.const, np.array(np.nonzero(data)))
    with pytest.raises(eqsat.ShapeError, match=r"NonZero of the run-time value 'x'.*static shapes"):
        g.op("NonZero", g.input("x", (2, 3)))


# ------------------------------------------------------------------ If
def _if_graph(cond_const: bool | None, x_const: bool):
    g = eqsat.Graph("if")
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = g.constant(data, "x") if x_const else g.input("x", (2, 3))
    cond = g.input("c", (), bool) if cond_const is None else g.constant(np.array(cond_const))
    then_branch = eqsat.Graph("then", outer=g)
    then_branch.output(then_branch.op("Relu", then_branch.op("Neg", x)))
    else_branch = eqsat.Graph("else", outer=g)
    else_branch.output(else_branch.op("Add", x, else_branch.constant(np.float32(1))))
    y = g.op("If", cond, then_branch=then_branch, else_branch=else_branch)
    g.output(y, "y")
    return g, y, data


def test_if_runs_the_chosen_branch() -> None:
    g, _, data = _if_graph(None, x_const=False)
    run = eqsat.compile(g).run
    np.testing.assert_array_equal(run({"c": np.array(True), "x": data})["y"], np.zeros((2, 3)))
    np.testing.assert_array_equal(run({"c": np.array(False), "x": data})["y"], data + 1)


@pytest.mark.parametrize("cond", [True, False])
def test_if_folds_when_everything_it_reads_is_constant(cond: bool) -> None:
    _, y, data = _if_graph(cond, x_const=True)
    np.testing.assert_array_equal(y.const, np.maximum(-data, 0) if cond else data + 1)
    _, y, _ = _if_graph(cond, x_const=False)  # branch reads a fed input: no folding
    assert y.const is None


def test_if_branches_must_agree_unless_the_condition_is_known() -> None:
    g = eqsat.Graph("if")
    x = g.input("x", (2, 3))
    then_branch = eqsat.Graph("then", outer=g)
    then_branch.output(then_branch.op("Relu", x))
    else_branch = eqsat.Graph("else", outer=g)
    else_branch.output(else_branch.constant(np.zeros(3, np.float32)))
    branches = {"then_branch": then_branch, "else_branch": else_branch}
    with pytest.raises(eqsat.ShapeError, match="dynamic shapes are unsupported"):
        g.op("If", g.input("c", (1,), bool), **branches)
    assert g.op("If", g.constant(np.array(False)), **branches).shape == (3,)
    with pytest.raises(eqsat.ShapeError, match="single bool"):
        g.op("If", g.input("c2", (2,), bool), **branches)


# ------------------------------------------------------------------ errors and costs
def _graph_x() -> tuple[eqsat.Graph, eqsat.Value]:
    g = eqsat.Graph("bad")
    return g, g.input("x", (2, 3, 4))


@pytest.mark.parametrize(
    ("op", "consts", "attrs", "message"),
    [
        ("Reshape", [i64(5, -1)], {}, "cannot reshape"),
        ("Reshape", [i64(-1, -1)], {}, "more than one -1"),
        ("Reshape", [i64(0, 0, 0, 0)], {}, "copies no input dim"),
        ("Transpose", [], {"perm": [0, 0, 1]}, "not a permutation"),
        ("Slice", [i64(0), i64(1), i64(0), i64(0)], {}, "step cannot be 0"),
        ("Slice", [i64(0), i64(1), i64(3)], {}, "out of range"),
        ("Squeeze", [i64(1)], {}, "cannot squeeze"),
        ("Split", [i64(1, 1)], {}, "does not divide"),
        ("Tile", [i64(2, 2)], {}, "repeats"),
        ("Expand", [i64(3, 1, 1)], {}, "do not broadcast"),
        ("Pad", [i64(0, 0, 4, 0, 0, 0)], {"mode": "reflect"}, "exceed"),
        ("Pad", [i64(0, 0, -5, 0, 0, 0)], {}, "crop more"),
        ("Pad", [i64(1, 1)], {"mode": "mirror"}, "unknown pad mode"),
        ("TopK", [i64(5)], {}, "exceeds extent"),
        ("Gather", [np.array([0.0])], {}, "int32 or int64"),
        ("DepthToSpace", [], {"blocksize": 2}, "rank-4"),
    ],
)
def test_shape_errors(op: str, consts: list, attrs: dict, message: str) -> None:
    g, x = _graph_x()
    with pytest.raises(eqsat.ShapeError, match=message):
        g.op(op, x, *[g.constant(c) for c in consts], outputs=2 if op == "TopK" else 1, **attrs)


@pytest.mark.parametrize(
    ("op", "name"), [("Reshape", "shape"), ("Slice", "starts"), ("Tile", "repeats")]
)
def test_unknown_shape_inputs_are_named(op: str, name: str) -> None:
    g, x = _graph_x()
    extra = [g.constant(i64(0))] if op == "Slice" else []
    with pytest.raises(eqsat.ShapeError, match=rf"input '{name}'.*compile time"):
        g.op(op, x, g.input("s", (3,), I64), *extra)


def test_concat_mismatch_and_runtime_index_errors() -> None:
    g, x = _graph_x()
    with pytest.raises(eqsat.ShapeError, match="differ outside"):
        g.op("Concat", x, g.input("z", (2, 4, 4)), axis=2)
    g, x = _graph_x()
    idx = g.input("i", (1,), np.int32)
    g.output(g.op("Gather", x, idx, axis=1), "y")
    with pytest.raises(eqsat.EqsatError, match="out of range"):
        eqsat.compile(g).run({"x": X, "i": np.array([3], np.int32)})


def test_costs() -> None:
    g, x = _graph_x()
    reshaped = g.op("Reshape", x, g.constant(i64(6, 4)))
    sliced = g.op("Slice", x, g.constant(i64(0)), g.constant(i64(1)))
    shape = g.op("Shape", x)

    def cost(v: eqsat.Value) -> ops.Cost:
        node = v.producer
        return ops.get(node.op).cost(node.inputs, node.outputs, node.attrs)

    assert cost(reshaped) == ops.Cost(0.0, 0.0, 0.0)
    assert cost(sliced).bytes_written == 48 and cost(sliced).bytes_read == 48 + 16
    assert cost(shape) == ops.Cost(0.0, 0.0, 24.0)


# ------------------------------------------------------------------ ONNX backend node tests
OWN_OPS = {
    "ArgMax", "ArgMin", "Concat", "ConstantOfShape", "CumProd", "CumSum", "DepthToSpace", "Expand",
    "Flatten", "Gather", "GatherElements", "GatherND", "If", "NonZero", "OneHot", "Pad", "Range",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Reshape", "ScatterElements",
    "ScatterND", "Shape", "Size", "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile", "TopK",
    "Transpose", "Unsqueeze",
}  # fmt: skip
CASE_MODULES = [
    "argmax", "argmin", "concat", "constantofshape", "cumprod", "cumsum", "depthtospace", "expand",
    "flatten", "gather", "gatherelements", "gathernd", "if_", "nonzero", "onehot", "pad",
    "rangeop", "reduce_log_sum", "reduce_log_sum_exp", "reducel1", "reducel2", "reducemax",
    "reducemean", "reducemin", "reduceprod", "reducesum", "reducesumsquare", "reshape",
    "scatterelements", "scatternd", "shape", "size", "slice", "spacetodepth", "split",
    "squeeze", "tile", "topk", "transpose", "unsqueeze",
]  # fmt: skip
# Inputs that are data (fed at run time); all others are bound as constants, as the shape rules
# need (or, for ConstantOfShape/Range/NonZero, fold). None: every input is data.
DATA_INPUTS: dict[str, set[int] | None] = {
    "Concat": None, "Gather": {0, 1}, "GatherElements": {0, 1}, "GatherND": {0, 1},
    "ScatterND": {0, 1, 2}, "ScatterElements": {0, 1, 2}, "Pad": {0, 2}, "OneHot": {0, 2},
    "ConstantOfShape": set(), "Range": set(), "NonZero": set(),
}  # fmt: skip
SKIP = {
    "test_range_bfloat16_type_positive_delta": "bfloat16 has no numpy dtype",
    "test_if_seq": "branches return sequences, which eqsat does not model",
    "test_if_opt": "branches return optionals, which eqsat does not model",
}


def _node_cases() -> list:
    # onnx ships the generators of its node tests, not the data directories: importing a
    # case module runs its exporters, which record the cases in memory.
    from onnx.backend.test.case import node as cases

    with np.errstate(all="ignore"):  # the generators compute -inf expectations by dividing by 0
        for name in CASE_MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
    selected = [
        c
        for c in cases._NodeTestCases
        if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OWN_OPS
    ]
    return sorted({c.name: c for c in selected}.values(), key=lambda c: c.name)


def _attr(attribute: onnx.AttributeProto, graph: eqsat.Graph) -> Any:
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.GraphProto):
        return _subgraph(value, graph)
    return value


def _subgraph(proto: onnx.GraphProto, outer: eqsat.Graph) -> eqsat.Graph:
    sub = eqsat.Graph(proto.name, outer=outer)
    for node in proto.node:
        attrs = {a.name: _attr(a, sub) for a in node.attribute}
        if node.op_type == "Constant":
            sub.constant(attrs["value"], node.output[0])
        else:
            sub.op(node.op_type, *[sub[n] for n in node.input], outputs=list(node.output), **attrs)
    for out in proto.output:
        sub.output(sub[out.name])
    return sub


NODE_CASES = _node_cases()


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_onnx_node_conformance(case: Any) -> None:
    if case.name in SKIP:
        pytest.skip(SKIP[case.name])
    node = case.model.graph.node[0]
    inputs, expected = case.data_sets[0]
    data = DATA_INPUTS.get(node.op_type, {0})
    g = eqsat.Graph(case.name)
    values, feeds, arrays = [], {}, iter(inputs)
    for i, name in enumerate(node.input):
        if not name:
            values.append(None)
            continue
        array = next(arrays)
        if data is None or i in data:
            values.append(g.input(name, array.shape, array.dtype))
            feeds[name] = array
        else:
            values.append(g.constant(array, name))
    attrs = {a.name: _attr(a, g) for a in node.attribute}
    result = g.op(node.op_type, *values, outputs=list(node.output), **attrs)
    for value in result if isinstance(result, tuple) else (result,):
        g.output(value)
    got = eqsat.compile(g).run(feeds)
    for name, want in zip(node.output, expected, strict=True):
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=case.rtol, atol=case.atol)

"""ONNX Scan (opset 9 on), unrolled at import (``eqsat.onnx_loop.unroll_scan``): states and
scan inputs of run-time values, scan axes and directions, a long Scan that runs in the run-time
tail, a Scan over constants that folds away, and the errors; every result against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import F, init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import ShapeError, UnsupportedOperatorError


def _running_sum_body(constant_node: bool = False) -> onnx.GraphProto:
    """state' = state + x_t; scans out state' * 2 and x_t - state. ``constant_node``: the 2 comes
    from a Constant node, as IR version 3 (opset 8) wants, not from a body initializer."""
    two = np.array(2.0, F)
    nodes = [h.make_node("Constant", [], ["two"], value=onnx.numpy_helper.from_array(two))]
    nodes = (nodes if constant_node else []) + [
        h.make_node("Add", ["state", "x_t"], ["state_out"]),
        h.make_node("Mul", ["state_out", "two"], ["doubled"]),
        h.make_node("Sub", ["x_t", "state"], ["diff"]),
    ]
    return h.make_graph(
        nodes, "body", [vi("state", [3]), vi("x_t", [3])],
        [vi("state_out", [3]), vi("doubled", [3]), vi("diff", [3])],
        [] if constant_node else [init("two", two)],
    )  # fmt: skip


def _scan_model(steps: int, **attrs: object) -> onnx.ModelProto:
    scan = h.make_node(
        "Scan", ["start", "x"], ["final", "doubled", "diffs"], num_scan_inputs=1,
        body=_running_sum_body(), name="running_sum", **attrs,
    )  # fmt: skip
    axes = attrs.get("scan_input_axes", [0])
    x_shape = [steps, 3] if axes == [0] else [3, steps]
    outs = [vi("final", None), vi("doubled", None), vi("diffs", None)]
    return model([scan], [vi("start", [3]), vi("x", x_shape)], outs, opset=17)


def _same(graph: eqsat.Graph, proto: onnx.ModelProto, feeds: dict, target: str) -> None:
    got = eqsat.compile(graph, target=target).run(feeds)
    for name, want in zip([o.name for o in proto.graph.output], ort_run(proto, feeds), strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"scan_input_directions": [1], "scan_output_directions": [1, 0]},
        {"scan_input_axes": [1], "scan_output_axes": [1, -1]},
    ],
    ids=["forward", "reversed", "axis-1"],
)
def test_scan_over_run_time_values_unrolls(
    rng: np.random.Generator, target: str, attrs: dict
) -> None:
    proto = _scan_model(5, **attrs)
    graph = eqsat.load(proto)
    assert graph.tail is None and "Scan" not in graph.op_counts()
    if target == "cpu":
        graph = eqsat.optimize(graph, target="cpu").graph
    shape = (5, 3) if "scan_input_axes" not in attrs else (3, 5)
    _same(graph, proto, {"start": randn(rng, 3), "x": randn(rng, *shape)}, target)


def test_long_scan_over_run_time_values_runs_in_the_tail(rng: np.random.Generator) -> None:
    from eqsat.onnx_loop import unroll_limit

    scan = next(n for n in _scan_model(1).graph.node if n.op_type == "Scan")
    steps = unroll_limit(scan.attribute[0].g) + 1
    proto = _scan_model(steps)
    graph = eqsat.load(proto)
    assert graph.tail is not None and "running_sum" in graph.tail.first
    _same(graph, proto, {"start": randn(rng, 3), "x": randn(rng, steps, 3)}, "cpu")


def test_scan_over_constants_folds(rng: np.random.Generator) -> None:
    proto = _scan_model(5)
    x = randn(rng, 5, 3)
    graph = eqsat.load(proto, constants={"x": x})
    assert graph.tail is None and all(n.op != "Scan" for n in graph.nodes)
    feeds = {"start": randn(rng, 3)}
    got = eqsat.compile(graph).run(feeds)
    want = ort_run(proto, {**feeds, "x": x})
    for name, w in zip(["final", "doubled", "diffs"], want, strict=True):
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5)


def test_two_scan_inputs_of_different_axes(rng: np.random.Generator) -> None:
    body = h.make_graph(
        [h.make_node("Mul", ["a_t", "b_t"], ["p"]), h.make_node("Add", ["acc", "p"], ["acc_out"])],
        "body", [vi("acc", [4]), vi("a_t", [4]), vi("b_t", [4])],
        [vi("acc_out", [4]), vi("p", [4])],
    )  # fmt: skip
    scan = h.make_node(
        "Scan", ["acc0", "a", "b"], ["acc", "products"], num_scan_inputs=2, body=body,
        scan_input_axes=[0, 1], scan_input_directions=[0, 1],
    )  # fmt: skip
    proto = model(
        [scan], [vi("acc0", [4]), vi("a", [6, 4]), vi("b", [4, 6])],
        [vi("acc", None), vi("products", None)], opset=17,
    )  # fmt: skip
    feeds = {"acc0": randn(rng, 4), "a": randn(rng, 6, 4), "b": randn(rng, 4, 6)}
    _same(eqsat.load(proto), proto, feeds, "numpy")


@pytest.mark.parametrize("lengths", [None, "full"])
def test_scan_8_runs_once_per_batch_entry(rng: np.random.Generator, lengths: str | None) -> None:
    """Scan-8 (opset 8): states (B, ...), scan inputs (B, T, ...), an optional sequence_lens."""
    scan = h.make_node(
        "Scan", ["" if lengths is None else "lens", "start", "x"], ["final", "doubled", "diffs"],
        num_scan_inputs=1, body=_running_sum_body(constant_node=True), directions=[1],
    )  # fmt: skip
    inits = [] if lengths is None else [init("lens", np.array([4, 4], np.int64))]
    outs = [vi("final", None), vi("doubled", None), vi("diffs", None)]
    proto = model([scan], [vi("start", [2, 3]), vi("x", [2, 4, 3])], outs, inits, opset=8)
    graph = eqsat.load(proto)
    assert graph.tail is None and "Scan" not in graph.op_counts()
    _same(graph, proto, {"start": randn(rng, 2, 3), "x": randn(rng, 2, 4, 3)}, "numpy")


def test_scan_errors_name_the_node() -> None:
    scan = h.make_node(
        "Scan", ["lens", "start", "x"], ["final", "d", "e"], num_scan_inputs=1,
        body=_running_sum_body(constant_node=True), name="ragged",
    )  # fmt: skip
    ins = [vi("start", [2, 3]), vi("x", [2, 4, 3])]
    outs = [vi("final", None), vi("d", None), vi("e", None)]
    short = [init("lens", np.array([4, 2], np.int64))]
    with pytest.raises(UnsupportedOperatorError, match=r"ragged.*sequence_lens \[4, 2\]"):
        eqsat.load(model([scan], ins, outs, short, opset=8))
    body = _running_sum_body()
    scan = h.make_node(
        "Scan", ["start", "x", "y"], ["final", "d", "e"], num_scan_inputs=2, body=body,
        name="mismatched",
    )  # fmt: skip
    ins = [vi("start", [3]), vi("x", [5, 3]), vi("y", [4, 3])]
    outs = [vi("final", None), vi("d", None), vi("e", None)]
    with pytest.raises(ShapeError, match="mismatched"):
        eqsat.load(model([scan], ins, outs, opset=17))
    scan = h.make_node(
        "Scan", ["start", "x"], ["final", "d", "e"], num_scan_inputs=1, body=body,
        scan_input_axes=[2], name="bad_axis",
    )  # fmt: skip
    with pytest.raises(ShapeError, match=r"bad_axis.*scan_input_axes 2"):
        eqsat.load(model([scan], ins[:2], outs, opset=17))


def test_scan_input_type_of_a_state_is_int(rng: np.random.Generator) -> None:
    """A counter state of int64 beside a float scan: dtypes carry through the unrolled body."""
    body = h.make_graph(
        [h.make_node("Add", ["n", "one"], ["n_out"]), h.make_node("Neg", ["x_t"], ["y_t"])],
        "body", [vi("n", [], T.INT64), vi("x_t", [2])], [vi("n_out", [], T.INT64), vi("y_t", [2])],
        [init("one", np.array(1, np.int64))],
    )  # fmt: skip
    scan = h.make_node("Scan", ["n0", "x"], ["n", "y"], num_scan_inputs=1, body=body)
    proto = model(
        [scan], [vi("n0", [], T.INT64), vi("x", [3, 2])], [vi("n", None, T.INT64), vi("y", None)],
        opset=17,
    )  # fmt: skip
    _same(eqsat.load(proto), proto, {"n0": np.array(5, np.int64), "x": randn(rng, 3, 2)}, "cpu")


def test_body_values_do_not_take_the_names_of_the_model_outputs(
    rng: np.random.Generator,
) -> None:
    """A Loop body naming its values like the model's outputs ("total", "steps"): unrolled, the
    outputs still come out under their names (the body's values are prefixed with the node's)."""
    body = h.make_graph(
        [
            h.make_node("Add", ["acc", "x"], ["total"]),
            h.make_node("Identity", ["cond"], ["cond_out"]),
            h.make_node("Mul", ["total", "total"], ["steps"]),
        ],
        "body",
        [vi("i", [], T.INT64), vi("cond", [], T.BOOL), vi("acc", [2])],
        [vi("cond_out", [], T.BOOL), vi("total", [2]), vi("steps", [2])],
    )
    loop = h.make_node("Loop", ["three", "", "zero"], ["total", "steps"], body=body, name="lp")
    inits = [init("three", np.array(3, np.int64)), init("zero", np.zeros(2, F))]
    proto = model([loop], [vi("x", [2])], [vi("total", None), vi("steps", None)], inits, opset=17)
    graph = eqsat.load(proto)
    assert [v.name for v in graph.outputs] == ["total", "steps"]
    _same(graph, proto, {"x": randn(rng, 2)}, "cpu")

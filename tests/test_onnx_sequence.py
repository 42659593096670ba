"""Sequences inside a model (``eqsat.onnx_sequence``): built, read and joined at import as lists
of values, in straight-line code and carried by a Loop (tf2onnx's TensorArray pattern); every
result against onnxruntime, on the numpy and cpu targets; and the refusals, naming the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError


def _same(proto: onnx.ModelProto, feeds: dict, target: str) -> eqsat.Graph:
    graph = eqsat.load(proto)
    assert not any(n.op.startswith("Sequence") for n in graph.nodes)
    if target == "cpu":
        graph = eqsat.optimize(graph, target="cpu").graph
    got = eqsat.compile(graph, target=target).run(feeds)
    for name, want in zip([o.name for o in proto.graph.output], ort_run(proto, feeds), strict=True):
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
    return graph


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_split_read_and_join(rng: np.random.Generator, target: str) -> None:
    nodes = [
        h.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),  # 4 rows of (3,)
        h.make_node("SequenceAt", ["rows", "minus_one"], ["last"]),
        h.make_node("SequenceLength", ["rows"], ["count"]),
        h.make_node("ConcatFromSequence", ["rows"], ["stacked"], axis=1, new_axis=1),  # x.T
        h.make_node("SplitToSequence", ["x", "two"], ["pairs"], axis=1),  # widths 2, 1
        h.make_node("ConcatFromSequence", ["pairs"], ["joined"], axis=-1),
        h.make_node("SplitToSequence", ["x", "sizes"], ["parts"], axis=0),  # 1 + 3 rows
        h.make_node("SequenceAt", ["parts", "one"], ["tail"]),
    ]
    inits = [
        init("minus_one", np.array(-1, np.int64)), init("two", np.array(2, np.int64)),
        init("sizes", np.array([1, 3], np.int64)), init("one", np.array(1, np.int64)),
    ]  # fmt: skip
    outs = [vi("last", None), vi("count", None, T.INT64), vi("stacked", None)]
    outs += [vi("joined", None), vi("tail", None)]
    proto = model(nodes, [vi("x", [4, 3])], outs, inits, opset=17)
    _same(proto, {"x": randn(rng, 4, 3)}, target)


def test_construct_insert_erase(rng: np.random.Generator) -> None:
    nodes = [
        h.make_node("SequenceConstruct", ["a", "b", "c"], ["abc"]),
        h.make_node("SequenceInsert", ["abc", "d", "one"], ["adbc"]),
        h.make_node("SequenceErase", ["adbc", "zero"], ["dbc"]),
        h.make_node("SequenceErase", ["dbc"], ["db"]),  # no position: the last
        h.make_node("SequenceInsert", ["db", "a"], ["dba"]),  # no position: at the end
        h.make_node("ConcatFromSequence", ["dba"], ["y"], axis=0),
        h.make_node("SequenceEmpty", [], ["empty"], dtype=T.FLOAT),
        h.make_node("SequenceInsert", ["empty", "c"], ["just_c"]),
        h.make_node("ConcatFromSequence", ["just_c"], ["z"], axis=0, new_axis=1),
    ]
    inits = [init("one", np.array(1, np.int64)), init("zero", np.array(0, np.int64))]
    ins = [vi(n, [2, 2]) for n in "abcd"]
    proto = model(nodes, ins, [vi("y", None), vi("z", None)], inits, opset=17)
    _same(proto, {n: randn(rng, 2, 2) for n in "abcd"}, "numpy")


def test_loop_carries_a_sequence(rng: np.random.Generator) -> None:
    """tf2onnx's TensorArray: a Loop appends one row per iteration to a carried sequence, which
    is stacked after the loop."""
    seq_type = h.make_tensor_sequence_value_info
    body = h.make_graph(
        [
            h.make_node("Identity", ["cond"], ["cond_out"]),
            h.make_node("Gather", ["x", "i"], ["row"], axis=0),
            h.make_node("Mul", ["row", "row"], ["sq"]),
            h.make_node("SequenceInsert", ["acc", "sq"], ["acc_out"]),
        ],
        "body",
        [vi("i", [], T.INT64), vi("cond", [], T.BOOL), seq_type("acc", T.FLOAT, None)],
        [vi("cond_out", [], T.BOOL), seq_type("acc_out", T.FLOAT, None)],
    )
    nodes = [
        h.make_node("SequenceEmpty", [], ["start"], dtype=T.FLOAT),
        h.make_node("Loop", ["three", "", "start"], ["rows"], body=body),
        h.make_node("ConcatFromSequence", ["rows"], ["y"], axis=0, new_axis=1),
    ]
    proto = model(nodes, [vi("x", [3, 4])], [vi("y", None)], [init("three", np.array(3))], opset=17)
    graph = _same(proto, {"x": randn(rng, 3, 4)}, "cpu")
    assert graph.tail is None


def test_sequences_are_refused_where_they_cannot_go() -> None:
    split = h.make_node("SplitToSequence", ["x"], ["s"], name="cut")
    with pytest.raises(UnsupportedOperatorError, match=r"'s'.*sequence"):
        eqsat.load(model([split], [vi("x", [2, 2])], [vi("s", None)], opset=17))
    nodes = [split, h.make_node("Identity", ["s"], ["y"], name="copy")]
    with pytest.raises(UnsupportedOperatorError, match=r"copy.*reads a sequence"):
        eqsat.load(model(nodes, [vi("x", [2, 2])], [vi("y", None)], opset=17))
    nodes = [split, h.make_node("SequenceAt", ["s", "k"], ["y"], name="pick")]
    ins = [vi("x", [2, 2]), vi("k", [], T.INT64)]
    with pytest.raises(UnsupportedOperatorError, match=r"pick.*run time"):
        eqsat.load(model(nodes, ins, [vi("y", None)], opset=17))
    with pytest.raises(ShapeError, match=r"pick.*position 5"):
        eqsat.load(model(nodes, ins[:1], [vi("y", None)], [init("k", np.array(5))], opset=17))


def test_a_sequence_cannot_cross_into_the_run_time_tail() -> None:
    """NonZero's output has a data-dependent shape, so the SequenceInsert that reads it starts
    the run-time tail; the sequence it inserts into was built before and cannot be handed on."""
    nodes = [
        h.make_node("SplitToSequence", ["x"], ["rows"], axis=0),
        h.make_node("NonZero", ["x"], ["where"]),
        h.make_node("Cast", ["where"], ["found"], to=T.FLOAT),
        h.make_node("SequenceInsert", ["rows", "found"], ["more"], name="late_insert"),
        h.make_node("SequenceLength", ["more"], ["y"]),
    ]
    proto = model(nodes, [vi("x", [2, 3])], [vi("y", None, T.INT64)], opset=17)
    with pytest.raises(UnsupportedOperatorError, match=r"late_insert.*'rows'.*run-time tail"):
        eqsat.load(proto)


def test_malformed_sequence_nodes_name_the_node() -> None:
    empty = h.make_node("SequenceEmpty", [], ["e"], dtype=T.FLOAT)
    erase = h.make_node("SequenceErase", ["e"], ["f"], name="erase_nothing")
    length = h.make_node("SequenceLength", ["f"], ["y"])
    proto = model([empty, erase, length], [], [vi("y", None, T.INT64)], opset=17)
    with pytest.raises(ShapeError, match=r"erase_nothing.*position -1.*0 place"):
        eqsat.load(proto)
    insert = h.make_node("SequenceInsert", ["e"], ["f"], name="insert_nothing")
    proto = model([empty, insert, length], [], [vi("y", None, T.INT64)], opset=17)
    with pytest.raises(ModelLoadError, match=r"insert_nothing.*1 tensor"):
        eqsat.load(proto)
    at = h.make_node("SequenceAt", ["e"], ["z"], name="at_nowhere")
    proto = model([empty, at], [], [vi("z", None)], opset=17)
    with pytest.raises(ModelLoadError, match=r"at_nowhere.*position input is missing"):
        eqsat.load(proto)

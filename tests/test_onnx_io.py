"""ONNX import and export against onnxruntime: specialization, folding, If, names, export.

Each model is a tiny ``onnx.helper`` graph. The oracle is onnxruntime run on the original model;
eqsat's numpy reference must match it, and the model eqsat exports must pass the checker and give
the same outputs under onnxruntime. Opset upgrades are in test_onnx_upgrade.py, bad input in
test_onnx_errors.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import F, check, init, model, ort_run, randn, vi

import eqsat
from eqsat.errors import EqsatError


def test_symbolic_dims_shape_folding_and_dim_params(rng: np.random.Generator) -> None:
    # y = Reshape(x, [batch, -1]) with the shape computed by Shape/Gather/Unsqueeze/Concat, plus a
    # mask input whose symbolic 'batch' is resolved from x's given shape.
    nodes = [
        h.make_node("Shape", ["x"], ["shape"]),
        h.make_node("Gather", ["shape", "zero"], ["b"], axis=0),
        h.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        h.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        h.make_node("Reshape", ["x", "target"], ["flat"]),
        h.make_node(
            "ConstantOfShape",
            ["target_pos"],
            ["ones"],
            value=h.make_tensor("v", T.FLOAT, [1], [2.0]),
        ),
        h.make_node("Range", ["start", "b", "one"], ["r"]),
        h.make_node("Mul", ["flat", "m"], ["y"]),
    ]
    inits = [
        init("zero", np.array(0, np.int64)),
        init("axes", np.array([0], np.int64)),
        init("minus1", np.array([-1], np.int64)),
        init("target_pos", np.array([2, 3], np.int64)),
        init("start", np.array(0, np.int64)),
        init("one", np.array(1, np.int64)),
    ]
    proto = model(
        nodes,
        [vi("x", ["batch", 3, "h"]), vi("m", ["batch", 1])],
        [vi("y", None), vi("ones", None), vi("r", None, T.INT64)],
        inits,
    )
    feeds = {"x": randn(rng, 2, 3, 5), "m": randn(rng, 2, 1)}
    graph = check(proto, feeds, input_shapes={"x": (2, 3, 5)})
    assert graph.op_counts() == {"Mul": 1, "Reshape": 1}
    assert [v.shape for v in graph.inputs] == [(2, 3, 5), (2, 1)]


def test_constants_fold_an_if() -> None:
    then = h.make_graph([h.make_node("Neg", ["x"], ["t"])], "then", [], [vi("t", [2])])
    other = h.make_graph([h.make_node("Relu", ["x"], ["e"])], "else", [], [vi("e", [2])])
    nodes = [
        h.make_node("Greater", ["flag", "zero"], ["cond"]),
        h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    proto = model(
        nodes, [vi("x", [2]), vi("flag", [], T.INT64)], [vi("y", [2])], [init("zero", np.array(0))]
    )
    x = np.array([-1.0, 2.0], F)
    for flag, op in ((1, "Neg"), (0, "Relu")):
        graph = check(proto, {"x": x}, constants={"flag": np.array(flag)})
        assert graph.op_counts() == {op: 1}
        assert [v.name for v in graph.outputs] == ["y"]


def test_constant_node_forms_and_local_function(rng: np.random.Generator) -> None:
    fn = h.make_function(
        "local", "AddTwice", ["a", "b"], ["c"],
        [h.make_node("Add", ["a", "b"], ["t"]), h.make_node("Add", ["t", "b"], ["c"])],
        opset_imports=[h.make_opsetid("", 18)],
    )  # fmt: skip
    nodes = [
        h.make_node("Constant", [], ["k"], value_float=0.5),
        h.make_node("Constant", [], ["ks"], value_floats=[1.0, 2.0, 3.0]),
        h.make_node("AddTwice", ["x", "k"], ["s"], domain="local"),
        h.make_node("Mul", ["s", "ks"], ["y"]),
    ]
    graph = h.make_graph(nodes, "fn", [vi("x", [2, 3])], [vi("y", None)])
    proto = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", 18), h.make_opsetid("local", 1)],
        functions=[fn],
        ir_version=9,
    )
    check(proto, {"x": randn(rng, 2, 3)})


def test_unsorted_nodes_and_duplicate_node_names(rng: np.random.Generator) -> None:
    # onnxruntime refuses both; eqsat sorts the nodes and renames the second "n".
    nodes = [
        h.make_node("Relu", ["a"], ["y"], name="n"),
        h.make_node("Neg", ["x"], ["a"], name="n"),
    ]
    graph = eqsat.load(model(nodes, [vi("x", [3])], [vi("y", None)]))
    assert [n.op for n in graph.nodes] == ["Neg", "Relu"]
    assert len({n.name for n in graph.nodes}) == 2
    x = randn(rng, 3)
    np.testing.assert_array_equal(eqsat.compile(graph).run({"x": x})["y"], np.maximum(-x, 0))
    np.testing.assert_array_equal(ort_run(eqsat.to_onnx(graph), {"x": x})[0], np.maximum(-x, 0))


def test_helper_names_do_not_clash_with_model_names(rng: np.random.Generator) -> None:
    # The upgrade of the opset-11 Squeeze makes an axes constant; the model already uses the name
    # an unthinking importer would give it.
    nodes = [
        h.make_node("Squeeze", ["x"], ["s"], axes=[0], name="sq"),
        h.make_node("Neg", ["s"], ["sq_axes"]),
    ]
    proto = model(nodes, [vi("x", [1, 3])], [vi("sq_axes", None)], opset=11)
    check(proto, {"x": randn(rng, 1, 3)})


def test_graph_outputs_that_are_inputs_or_initializers() -> None:
    proto = model(
        [h.make_node("Neg", ["x"], ["y"])],
        [vi("x", [2])],
        [vi("y", None), vi("x", None), vi("c", None)],
        [init("c", np.arange(3, dtype=F))],
    )
    check(proto, {"x": np.array([1.0, -2.0], F)})


# ------------------------------------------------------------------------------------ export
def _if_model() -> onnx.ModelProto:
    """An If with a runtime condition whose branches read outer values and outer constants."""
    then = h.make_graph(
        [h.make_node("Add", ["x", "w"], ["t0"]), h.make_node("Mul", ["t0", "k"], ["t"])],
        "then",
        [],
        [vi("t", [2, 3])],
        initializer=[init("k", np.array(2.0, F))],
    )
    other = h.make_graph([h.make_node("Sub", ["x", "w"], ["e"])], "else", [], [vi("e", [2, 3])])
    nodes = [
        h.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        h.make_node("Greater", ["total", "zero"], ["cond"]),
        h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        h.make_node("Split", ["y"], ["a", "b"], axis=1, num_outputs=2),
    ]
    inits = [init("w", np.full((2, 3), 0.5, F)), init("zero", np.array(0.0, F))]
    return model(
        nodes, [vi("x", [2, 4 - 1])], [vi("y", None), vi("a", None), vi("b", None)], inits, opset=18
    )


def test_export_unfolded_if_with_outer_reads() -> None:
    proto = _if_model()
    for sign in (1.0, -1.0):
        x = np.full((2, 3), sign, F)
        graph = check(proto, {"x": x})
        # A run-time If runs in the tail (compiled per condition value), and exports from there.
        assert graph.tail is not None and graph.tail.ops.get("If") == 1


def test_export_python_graph_if_split_constants_and_inputs() -> None:
    g = eqsat.Graph("built")
    x = g.input("x", (2, 4))
    flag = g.input("flag", (), np.bool_)
    w = g.constant(np.arange(8, dtype=F).reshape(2, 4), "w")
    then = eqsat.Graph("then", outer=g)
    then.output(then.op("Add", x, w))
    other = eqsat.Graph("else", outer=g)
    c = other.constant(np.full((2, 4), 3.0, F), "c")
    other.output(other.op("Mul", x, c))
    y = g.op("If", flag, then_branch=then, else_branch=other)
    # Omitted optional output (the values of TopK), and a Split with several outputs.
    _, idx = g.op("TopK", y, g.constant(np.array([2], np.int64)), outputs=["", "idx"], axis=1)
    a, b = g.op("Split", y, outputs=2, axis=1, num_outputs=2)
    g.output(idx)
    g.output(a, "a")
    g.output(b, "b")
    g.output(x)  # an input as output
    g.output(w)  # a constant as output
    exported = eqsat.to_onnx(g)
    onnx.checker.check_model(exported, full_check=True)
    xs = np.random.default_rng(1).standard_normal((2, 4)).astype(F)
    for cond in (True, False):
        feeds = {"x": xs, "flag": np.array(cond)}
        want = eqsat.compile(g).run(feeds)
        got = ort_run(exported, feeds)
        assert [o.name for o in exported.graph.output] == list(want)
        for key, array in zip(want, got, strict=True):
            np.testing.assert_allclose(array, want[key], rtol=1e-6, err_msg=key)


def test_export_renames_shadowed_names_and_outer_outputs() -> None:
    g = eqsat.Graph("shadow")
    x = g.input("x", (3,))
    flag = g.input("flag", (), np.bool_)
    then = eqsat.Graph("then", outer=g)
    then.output(x)  # a branch returning an outer value directly
    other = eqsat.Graph("else", outer=g)
    other.output(other.op("Neg", x, outputs=["t"]))
    y = g.op("If", flag, then_branch=then, else_branch=other)
    g.output(g.op("Relu", y, outputs=["t"]))  # the same name as the else branch's value
    exported = eqsat.to_onnx(g)
    onnx.checker.check_model(exported, full_check=True)
    xs = np.array([-1.0, 0.5, 2.0], F)
    for cond in (True, False):
        got = ort_run(exported, {"x": xs, "flag": np.array(cond)})[0]
        np.testing.assert_array_equal(got, np.maximum(xs if cond else -xs, 0))


def test_save_writes_a_loadable_model(tmp_path: Path) -> None:
    proto = _if_model()
    path = tmp_path / "out.onnx"
    eqsat.save(eqsat.load(proto), path)
    again = eqsat.load(path)
    x = np.ones((2, 3), F)
    np.testing.assert_allclose(eqsat.compile(again).run({"x": x})["y"], ort_run(proto, {"x": x})[0])
    with pytest.raises(EqsatError, match="cannot write"):
        eqsat.save(eqsat.load(proto), tmp_path / "missing" / "dir" / "out.onnx")


def test_export_types_attributes_as_the_schema_does() -> None:
    g = eqsat.Graph("attrs")
    x = g.input("x", (2, 3))
    y = g.op("LeakyRelu", x, alpha=1)  # an int where ONNX wants a float
    g.output(g.op("Transpose", y, perm=[np.int64(1), np.int64(0)]), "y")
    exported = eqsat.to_onnx(g)
    xs = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], F)
    np.testing.assert_array_equal(ort_run(exported, {"x": xs})[0], xs.T)


def test_eqsat_domain_ops_round_trip() -> None:
    g = eqsat.Graph("fused")
    x = g.input("x", (2, 3))
    silu = "({0} / (1 + exp(-{0})))"
    g.output(g.op("FusedElementwise", x, outputs=["y"], body=silu, dtype="float32", domain="eqsat"))
    exported = eqsat.to_onnx(g)
    assert ("eqsat", 1) in [(o.domain, o.version) for o in exported.opset_import]
    again = eqsat.load(exported)
    assert [(n.op, n.domain) for n in again.nodes] == [("FusedElementwise", "eqsat")]
    xs = np.linspace(-3, 3, 6, dtype=F).reshape(2, 3)
    np.testing.assert_allclose(
        eqsat.compile(again).run({"x": xs})["y"], xs / (1 + np.exp(-xs)), rtol=1e-6
    )

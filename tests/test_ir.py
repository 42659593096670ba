"""The graph IR built from Python: shape inference at build time, folding, dead code, subgraphs."""

from __future__ import annotations

import numpy as np
import pytest

import eqsat
from eqsat.errors import EqsatError, ShapeError, UnsupportedOperatorError

F = np.float32


def mlp(rng: np.random.Generator) -> tuple[eqsat.Graph, dict[str, np.ndarray]]:
    g = eqsat.Graph("mlp")
    x = g.input("x", (8, 16))
    w1 = g.constant(rng.standard_normal((16, 32)).astype(F), "w1")
    b1 = g.constant(rng.standard_normal(32).astype(F), "b1")
    w2 = g.constant(rng.standard_normal((32, 4)).astype(F), "w2")
    h = g.op("Relu", g.op("Add", g.op("MatMul", x, w1), b1))
    g.output(g.op("MatMul", h, w2), "y")
    return g, {"w1": w1.const, "b1": b1.const, "w2": w2.const}


def test_mlp_builds_runs_and_reports(rng: np.random.Generator) -> None:
    g, params = mlp(rng)
    x = rng.standard_normal((8, 16)).astype(F)
    y = eqsat.compile(g).run({"x": x})["y"]
    want = np.maximum(x @ params["w1"] + params["b1"], 0) @ params["w2"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert g.op_counts() == {"Add": 1, "Identity": 1, "MatMul": 2, "Relu": 1}
    assert [v.name for v in g.outputs] == ["y"] and g["y"].shape == (8, 4)
    text = g.summary()
    assert text.splitlines()[:3] == [
        "graph mlp",
        "  input  x: float32[8, 16]",
        "  output y: float32[8, 4]",
    ]
    assert "= MatMul(x, w1)" in text and "y: float32[8, 4] = Identity(" in text
    assert set(g.initializers) == {"w1", "b1", "w2"}
    assert repr(g).startswith("Graph('mlp', inputs=['x'], outputs=['y']")
    assert "float32" in repr(g["x"]) and "MatMul" in repr(g.nodes[0])


def test_shape_errors_name_the_node() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2, 3))
    w = g.constant(np.ones((4, 5), F), "w")
    with pytest.raises(ShapeError, match=r"node 'proj' \(MatMul\)"):
        g.op("MatMul", x, w, name="proj")
    with pytest.raises(ShapeError, match=r"node 'Add_\d+' \(Add\).*broadcast"):
        g.op("Add", x, g.constant(np.ones(4, F)))
    with pytest.raises(ShapeError, match=r"takes .* inputs, got 3"):
        g.op("Relu", x, x, x)
    with pytest.raises(UnsupportedOperatorError, match="NoSuchOp"):
        g.op("NoSuchOp", x)
    with pytest.raises(UnsupportedOperatorError, match="bogus"):
        g.op("Relu", x, bogus=1)
    with pytest.raises(ShapeError, match="negative dimension"):
        g.input("neg", (2, -1))
    with pytest.raises(ShapeError, match=r"input .s.: dtype <U0 is not supported"):
        g.input("s", (2,), np.str_)
    with pytest.raises(ShapeError, match="not supported"):
        g.constant(np.array(["a", "b"]))
    # A failed node leaves the graph as it was.
    assert [n.op for n in g.nodes] == [] and set(g.values) >= {"x", "w"}


def test_output_names_must_be_free() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2,))
    with pytest.raises(EqsatError, match=r"\['x'\]"):
        g.op("Neg", x, outputs=["x"])
    with pytest.raises(EqsatError, match=r"\['a'\]"):
        g.op("Split", x, outputs=["a", "a"], num_outputs=2)
    assert "a" not in g.values and g.nodes == []
    with pytest.raises(EqsatError, match="already has a value named 'x'"):
        g.input("x", (3,))


def test_fresh_names() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2,))
    a = g.constant(np.ones(2, F), "c")
    b = g.constant(np.ones(2, F), "c")
    assert a.name == "c" and b.name != "c" and b.name.startswith("c_")
    n1 = g.op("Neg", x)
    n2 = g.op("Neg", x)
    assert n1.name != n2.name
    assert len({node.name for node in g.nodes}) == 2
    assert g.fresh_name("x") != "x" and g.fresh_name("unused") == "unused"
    # Nodes added behind add_node's back still count as taken.
    g.nodes.append(eqsat.Node("Neg", [x], [], {}, "Neg_99"))
    assert all(g.fresh_node_name("Neg") != "Neg_99" for _ in range(120))


def test_fold_constants_and_remove_dead() -> None:
    g = eqsat.Graph("fold")
    x = g.input("x", (2, 3))
    c = g.constant(np.arange(6, dtype=F).reshape(2, 3), "c")
    folded = g.op("Mul", g.op("Add", c, c), c)  # known at build time: folds at once
    np.testing.assert_array_equal(folded.const, (2 * c.const) * c.const)
    shape = g.op("Shape", x)  # depends only on x's static shape
    assert shape.const.tolist() == [2, 3]
    y = g.op("Add", x, folded)
    g.op("Neg", x)  # dead
    g.output(y, "y")
    assert g.op_counts() == {"Add": 2, "Identity": 1, "Mul": 1, "Neg": 1, "Shape": 1}
    g.fold_constants()
    assert g.op_counts() == {"Add": 1, "Identity": 1}
    assert set(g.values) == {"x", folded.name, y.name, "y"}
    assert folded.producer is None and folded.name in g.initializers
    out = eqsat.compile(g).run({"x": np.ones((2, 3), F)})["y"]
    np.testing.assert_array_equal(out, 1 + 2 * c.const * c.const)


def test_remove_dead_keeps_inputs_and_values_read_by_branches() -> None:
    g = eqsat.Graph("branches")
    x = g.input("x", (3,))
    unused = g.input("unused", (1,))
    flag = g.input("flag", (), np.bool_)
    k = g.constant(np.full(3, 2.0, F), "k")
    then = eqsat.Graph("then", outer=g)
    dead_in_branch = then.op("Neg", x)
    then.output(then.op("Mul", x, k))
    other = eqsat.Graph("else", outer=g)
    other.output(other.op("Sub", x, k))
    g.output(g.op("If", flag, then_branch=then, else_branch=other), "y")
    text = g.summary()
    assert "    then_branch:\n      graph then\n" in text and "= Sub(x, k)" in text
    g.remove_dead()
    assert unused in g.inputs and "k" in g.values
    assert [n.op for n in then.nodes] == ["Mul"] and dead_in_branch.name not in then.values
    exe = eqsat.compile(g)
    xs = np.array([1.0, 2.0, 3.0], F)
    for cond, want in ((True, xs * 2), (False, xs - 2)):
        feeds = {"x": xs, "unused": np.zeros(1, F), "flag": np.array(cond)}
        np.testing.assert_array_equal(exe.run(feeds)["y"], want)


def test_outer_lookups() -> None:
    g = eqsat.Graph("outer")
    x = g.input("x", (2,))
    sub = eqsat.Graph("inner", outer=g)
    assert sub.lookup("x") is x and sub["x"] is x
    assert sub.lookup("missing") is None
    with pytest.raises(KeyError, match="missing"):
        sub["missing"]
    # Names the enclosing graph has are not handed out again inside.
    assert sub.fresh_name("x") != "x"
    inner = sub.op("Neg", x)
    assert g.lookup(inner.name) is None  # the outer graph does not see inside
    assert list(sub.free_values()) == [x]
    other = eqsat.Graph("other")
    y = other.input("y", (2,))
    with pytest.raises(EqsatError, match="'y' is not in this graph"):
        g.op("Neg", y)


def test_if_with_known_condition_folds() -> None:
    g = eqsat.Graph()
    k = g.constant(np.array([1.0, 2.0], F), "k")
    then = eqsat.Graph("then", outer=g)
    then.output(then.op("Neg", k))
    other = eqsat.Graph("else", outer=g)
    other.output(other.op("Relu", k))
    out = g.op("If", g.constant(np.array(True)), then_branch=then, else_branch=other)
    assert out.const.tolist() == [-1.0, -2.0]


def test_outputs_do_not_alias_feeds_or_constants() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2, 2))
    g.output(x)
    g.output(g.op("Reshape", x, g.constant(np.array([4], np.int64))), "flat")
    g.output(g.constant(np.zeros(2, F), "zeros"))
    feed = np.ones((2, 2), F)
    exe = eqsat.compile(g)
    out = exe.run({"x": feed})
    for array in out.values():
        array[...] = 7
    assert feed.tolist() == [[1, 1], [1, 1]] and g["zeros"].const.tolist() == [0, 0]
    assert exe.run({"x": feed})["zeros"].tolist() == [0, 0]

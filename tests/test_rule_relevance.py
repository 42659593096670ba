"""Only the rules that can fire on a graph run on it (``eqsat.rules.relevant``), and deferred
rules are built only for the ops a graph can hold; optimizing finds the same graph either way."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.rules import Family, families, relevant, resolve, rule_ops

from eqsat import ops
from eqsat.egraph import E, T
from eqsat.ir import Graph
from eqsat.optimize import optimize


def _named(rules: list[Any], name: str) -> Any:
    return {r.name: r for r in rules}[name]


def test_rule_ops_reads_pattern_and_action() -> None:
    rules = resolve("algebraic")[0]
    assert rule_ops(_named(rules, "algebraic/add-zero"), ops.OPS) == ({"Add"}, set())
    needs, builds = rule_ops(_named(rules, "algebraic/matmul-add-as-gemm"), ops.OPS)
    assert needs == {"MatMul", "Add"} and builds == {"Gemm"}


def test_rules_of_absent_ops_are_dropped() -> None:
    rules = relevant(resolve(None, deferred=False)[0], {"MatMul", "Relu"}, None)
    names = {r.name for r in rules}
    assert "fusion-elementwise/Relu-t" in names
    assert "algebraic/mul-one" not in names  # no Mul, and nothing here builds one
    assert not any(n.startswith("fusion-elementwise/Sigmoid") for n in names)
    assert all(rule_ops(r, ops.OPS)[0] <= {"MatMul", "Relu", "FusedElementwise", *_built(rules)}
               for r in rules)  # fmt: skip


def _built(rules: list[Any]) -> set[str]:
    return set().union(*(rule_ops(r, ops.OPS)[1] for r in rules))


def test_ops_that_rules_build_keep_the_rules_matching_them() -> None:
    chain = Family("chain")

    @chain.rewrite("relu-as-abs", caveat="exact")
    def _(x: T) -> Any:
        return E.Relu(x), E.Abs(x)

    @chain.rewrite("abs-abs", caveat="exact")
    def _(x: T) -> Any:
        return E.Abs(E.Abs(x)), E.Abs(x)

    assert {r.name for r in relevant(chain.rules, {"Relu"})} == {
        "chain/relu-as-abs",
        "chain/abs-abs",
    }
    assert relevant(chain.rules, {"Sigmoid"}) == []


def test_deferred_rules_are_built_for_reachable_ops_only() -> None:
    built: list[str] = []
    lazy = Family("lazy")

    def declare(op: str) -> None:
        built.append(op)

        @lazy.rewrite(f"{op}-twice", caveat="exact")
        def _(x: T) -> Any:
            return getattr(E, op)(getattr(E, op)(x)), getattr(E, op)(x)

    for op in ("Relu", "Tanh"):
        lazy.defer(op, lambda op=op: declare(op))
    rules = relevant([], {"Tanh"}, [lazy])
    assert built == ["Tanh"] and [r.name for r in rules] == ["lazy/Tanh-twice"]
    assert families([lazy]) == [lazy]
    assert {r.name for r in resolve([lazy])[0]} == {"lazy/Tanh-twice", "lazy/Relu-twice"}
    assert built == ["Tanh", "Relu"]


def _model(rng: np.random.Generator) -> Graph:
    g = Graph("mixed")
    x = g.input("x", (1, 4, 6, 6))
    w = g.constant(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    scale, bias, mean = (g.constant(rng.random(8).astype(np.float32) + 0.5, n) for n in "sbm")
    var = g.constant(rng.random(8).astype(np.float32) + 0.5, "v")
    y = g.op("Conv", x, w, pads=[1, 1, 1, 1])
    y = g.op("BatchNormalization", y, scale, bias, mean, var)
    y = g.op("Mul", y, g.op("Sigmoid", y))
    y = g.op("Add", y, g.constant(np.float32(0.0), "zero"))
    y = g.op("Reshape", y, g.constant(np.array([1, 8, 36]), "shape"))
    y = g.op("Softmax", g.op("Div", y, g.constant(np.float32(2.0), "two")), axis=-1)
    g.output(y, "y")
    return g


def test_optimizing_with_every_rule_finds_the_same_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    pruned = optimize(_model(np.random.default_rng(0)), target="cpu", verify=True)

    def every_rule(rules: list[Any], graph_ops: Any, spec: Any = ()) -> list[Any]:
        return resolve(spec)[0]

    monkeypatch.setattr("eqsat.rules.relevant", every_rule)
    full = optimize(_model(np.random.default_rng(0)), target="cpu")
    assert sorted(n.op for n in pruned.graph.nodes) == sorted(n.op for n in full.graph.nodes)
    assert pruned.report.cost_after == pytest.approx(full.report.cost_after)
    assert full.report.matches == pruned.report.matches and pruned.report.matches

"""Horizontal fusion: sibling Conv/MatMul/Gemm merged over concatenated weights, then split."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest
from eqsat.rules import horizontal as hz

from eqsat.decode import View, prune
from eqsat.egraph import Limits, encode, saturate
from eqsat.ir import Graph, Value
from eqsat.optimize import compare, optimize
from eqsat.rulecheck import RuleCheck, _check_instance

RNG = np.random.default_rng(1)
RULES = {r.name: r for r in hz.horizontal.rules}


def _rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _graph() -> Graph:
    g = Graph("siblings")
    # Decoding names new nodes from a fresh counter; numbering from 100 keeps them off the
    # outputs' names (a decode naming clash, not a rule problem).
    g._names = itertools.count(100)
    return g


def _assert_sound(name: str, build: Any, k: int) -> None:
    """The rule fires, and the graph with every sibling read from the merged op's Split matches.

    (``rulecheck._check_instance`` swaps one root at a time, which mixes the merged op with the
    originals; decoding names the Split's outputs after all the siblings, so that mix clashes.)
    """
    g = Graph("siblings")
    for y in build(g):
        g.output(y)
    enc = encode(g)
    assert saturate(enc, [RULES[name]], Limits(iterations=1)).matches.get(name)
    view = View(prune(json.loads(enc.egraph._serialize().to_json())), enc)
    # New e-classes (the merged op, concatenated weights) have one e-node each.
    choices = {c: nodes[0] for c, nodes in view.classes.items()} | view.original_choices()
    roots = view.roots()
    # For each root, its projections out of each Split: {Split e-class: out e-node}.
    outs = [
        {view.nodes[n].inputs[0]: n for n in view.classes[c] if view.nodes[n].kind == "out"}
        for c in roots
    ]
    common = set.intersection(*(set(o) for o in outs))
    for split in sorted(common):  # type: ignore[type-var]
        picks = {c: o[split] for c, o in zip(roots, outs, strict=True)}
        decoded = view.decode({**choices, **picks})
        assert decoded.op_counts().get("Split") == 1, decoded.summary()
        assert len(decoded.nodes) == 2  # the merged op and its Split
        ok, err = compare(g, decoded)
        assert ok, (name, err)
    merged = len(common)
    assert merged, f"{name}: no consistent merged alternative"


def _matmuls(g: Graph, k: int) -> list[Value]:
    x = g.input("x", (2, 3, 8))
    return [g.op("MatMul", x, g.constant(_rand(8, 5))) for _ in range(k)]


def _gemms(g: Graph, k: int, trans_b: int, bias: bool) -> list[Value]:
    x = g.input("x", (4, 6))
    outs = []
    for _ in range(k):
        w = g.constant(_rand(5, 6) if trans_b else _rand(6, 5))
        c = g.constant(_rand(5)) if bias else None
        outs.append(g.op("Gemm", x, w, c, alpha=0.5, transB=trans_b))
    return outs


def _convs(g: Graph, k: int, bias: bool) -> list[Value]:
    x = g.input("x", (1, 3, 7, 7))
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    return [
        g.op(
            "Conv",
            x,
            g.constant(_rand(4, 3, 3, 3)),
            g.constant(_rand(4)) if bias else None,
            **attrs,
        )
        for _ in range(k)
    ]


CASES = [
    ("horizontal/matmul-2", lambda g: _matmuls(g, 2), 2),
    ("horizontal/matmul-3", lambda g: _matmuls(g, 3), 3),
    ("horizontal/gemm-2", lambda g: _gemms(g, 2, 0, False), 2),
    ("horizontal/gemm-2-bias", lambda g: _gemms(g, 2, 1, True), 2),
    ("horizontal/gemm-3-bias", lambda g: _gemms(g, 3, 0, True), 3),
    ("horizontal/conv-2", lambda g: _convs(g, 2, False), 2),
    ("horizontal/conv-3-bias", lambda g: _convs(g, 3, True), 3),
]


@pytest.mark.parametrize(("name", "build", "k"), CASES, ids=[c[0] for c in CASES])
def test_merge_rules_are_sound(name: str, build: Any, k: int) -> None:
    # check-rules instantiates one pattern at random; a merge needs k siblings, built here.
    _assert_sound(name, build, k)


def test_split_hoist_and_concat_of_split_are_sound() -> None:
    g = _graph()
    z = g.input("z", (2, 6))
    _, b = g.op("Split", z, axis=1, num_outputs=2, outputs=2)
    g.output(g.op("LeakyRelu", b, alpha=0.2))
    check = RuleCheck("horizontal/split-hoist-LeakyRelu", "")
    assert _check_instance(RULES[check.name], g, check) == ""
    assert check.fired == 1 and check.compared == 1
    g = _graph()
    z = g.input("z", (2, 3, 4))
    parts = g.op("Split", z, axis=-2, num_outputs=3, outputs=3)
    g.output(g.op("Concat", *parts, axis=1))
    check = RuleCheck("horizontal/concat-of-split-3", "")
    assert _check_instance(RULES[check.name], g, check) == ""
    assert check.fired == 1 and check.compared == 1


def _qkv() -> Graph:
    g = Graph("qkv")
    x = g.input("x", (2, 16))
    for i in range(3):
        g.output(g.op("Relu", g.op("MatMul", x, g.constant(_rand(16, 16)))), f"y{i}")
    return g


def test_small_siblings_merge_into_one_kernel_where_cheaper() -> None:
    # Launch-bound MatMuls: one merged MatMul with the Relu epilogue, then one Split.
    g = _qkv()
    result = optimize(
        g, rules=["fusion", hz.horizontal], target="numpy", extractor="ilp", verify=True
    )
    assert result.report.verified
    assert result.graph.op_counts() == {"FusedMatMul": 1, "Identity": 3, "Split": 1}
    assert result.report.matches.get("horizontal/matmul-3", 0) > 0


def test_merged_branches_that_are_concatenated_need_no_split() -> None:
    g = Graph("inception")
    x = g.input("x", (1, 8, 6, 6))
    ys = [g.op("Conv", x, g.constant(_rand(4, 8, 1, 1)), g.constant(_rand(4))) for _ in range(2)]
    g.output(g.op("Concat", *ys, axis=1), "y")
    result = optimize(g, rules=[hz.horizontal], target="cpu", verify=True)
    assert result.report.verified
    assert result.graph.op_counts() == {"Conv": 1, "Identity": 1}


def test_big_siblings_stay_apart_under_the_cost_model() -> None:
    # Compute-bound MatMuls gain nothing from merging, and the Split would cost a copy.
    g = Graph("big")
    x = g.input("x", (256, 256))
    for i in range(2):
        g.output(g.op("MatMul", x, g.constant(_rand(256, 256))), f"y{i}")
    result = optimize(g, rules=[hz.horizontal], target="cpu", verify=True)
    assert result.report.matches.get("horizontal/matmul-2", 0) > 0
    assert result.graph.op_counts().get("MatMul") == 2


def test_zoo_transformer_qkv_siblings_are_found_and_outputs_match() -> None:
    from bench import models as zoo
    from eqsat.onnx_io import load

    entry = zoo.get("transformer_encoder")
    g = load(entry.model(), input_shapes=entry.input_shapes)
    result = optimize(g, rules=[hz.horizontal], target="cpu")
    assert result.report.matches.get("horizontal/matmul-3", 0) >= 1
    assert compare(g, result.graph)[0]

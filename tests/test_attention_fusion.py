"""Attention fusion on the patterns exporters write: eager (scores / c, scores * c), SDPA (q and kT
each scaled by sqrt(c), the Where(IsNaN(p), 0, p) guard after the softmax), with and without an
additive mask; each one fuses to an Attention node and the CPU target matches onnxruntime, fully
masked rows (NaN without the guard, 0 with it) and causal masks included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as h

import eqsat
from tests.onnx_testing import init, model, ort_run, vi

B, H, S, L, D, DV = 2, 3, 5, 6, 8, 4
RNG = np.random.default_rng(7)


def _attention_model(form: str, mask: str, guard: bool) -> Any:
    """q [B,H,S,D], k [B,H,L,D] (transposed in the graph, as exporters do), v [B,H,L,DV]; ``mask``
    is "none", "input" (a float [B,1,S,L] input) or "bool" (a bool input made -inf / 0 by Where,
    as the torch exports build it)."""
    c = 1.0 / math.sqrt(D)
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    inits = []
    if form == "split":
        inits.append(init("r", np.array(math.sqrt(c), np.float32)))
        nodes += [h.make_node("Mul", ["q", "r"], ["qs"]), h.make_node("Mul", ["kt", "r"], ["ks"])]
        nodes.append(h.make_node("MatMul", ["qs", "ks"], ["scores"]))
    else:
        inits.append(init("c", np.array(1.0 / c if form == "div" else c, np.float32)))
        nodes.append(h.make_node("MatMul", ["q", "kt"], ["qk"]))
        nodes.append(h.make_node("Div" if form == "div" else "Mul", ["qk", "c"], ["scores"]))
    inputs = [vi("q", [B, H, S, D]), vi("k", [B, H, L, D]), vi("v", [B, H, L, DV])]
    logits = "scores"
    if mask != "none":
        if mask == "bool":
            inits += [init("zero", np.float32(0)), init("ninf", np.float32(-np.inf))]
            nodes.append(h.make_node("Where", ["keep", "zero", "ninf"], ["m"]))
            inputs.append(vi("keep", [B, 1, S, L], TensorProto.BOOL))
        else:
            inputs.append(vi("m", [B, 1, S, L]))
        nodes.append(h.make_node("Add", ["scores", "m"], ["masked"]))
        logits = "masked"
    nodes.append(h.make_node("Softmax", [logits], ["p"], axis=-1))
    probs = "p"
    if guard:
        inits.append(init("z", np.float32(0)))
        nodes.append(h.make_node("IsNaN", ["p"], ["nan"]))
        nodes.append(h.make_node("Where", ["nan", "z", "p"], ["pg"]))
        probs = "pg"
    nodes.append(h.make_node("MatMul", [probs, "v"], ["y"]))
    return model(nodes, inputs, [vi("y", [B, H, S, DV])], inits, opset=17)


def _feeds(mask: str, masked_rows: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {
        "q": RNG.standard_normal((B, H, S, D)).astype(np.float32),
        "k": RNG.standard_normal((B, H, L, D)).astype(np.float32),
        "v": RNG.standard_normal((B, H, L, DV)).astype(np.float32),
    }
    keep = masked_rows
    if mask == "bool":
        feeds["keep"] = keep
    elif mask == "input":
        feeds["m"] = np.where(keep, 0.0, -np.inf).astype(np.float32)
    return feeds


def _causal(fully_masked_row: bool) -> np.ndarray:
    """A causal mask (query i sees keys <= i + L - S), batch 1 with query row 2 fully masked."""
    keep = np.tril(np.ones((S, L), bool), k=L - S)
    keep = np.broadcast_to(keep, (B, 1, S, L)).copy()
    if fully_masked_row:
        keep[1, 0, 2, :] = False
    return keep


def _optimize_and_run(proto: Any, feeds: dict[str, np.ndarray]) -> tuple[Any, np.ndarray]:
    shapes = {k: v.shape for k, v in feeds.items()}
    res = eqsat.optimize(proto, ["algebraic", "fusion"], target="cpu", input_shapes=shapes)
    exe = eqsat.compile(res.graph, target="cpu")
    return res, np.asarray(exe.run(feeds)["y"])


CASES = [
    (form, mask, guard)
    for form in ("div", "mul", "split")
    for mask in ("none", "input", "bool")
    for guard in (False, True)
]


@pytest.mark.parametrize(("form", "mask", "guard"), CASES)
def test_pattern_fuses_and_matches_onnxruntime(form: str, mask: str, guard: bool) -> None:
    proto = _attention_model(form, mask, guard)
    feeds = _feeds(mask, _causal(fully_masked_row=True))
    res, got = _optimize_and_run(proto, feeds)
    attention = [n for n in res.graph.nodes if n.op == "Attention"]
    assert len(attention) == 1, res.graph.op_counts()
    assert "Softmax" not in res.graph.op_counts()
    (node,) = attention
    assert node.attrs["nan_to_zero"] == int(guard)
    assert math.isclose(node.attrs["scale"], 1.0 / math.sqrt(D), rel_tol=1e-6)
    (want,) = ort_run(proto, feeds)
    if mask != "none":
        # The fully masked row: NaN from a plain softmax (as onnxruntime), 0 with the guard.
        row = got[1, :, 2]
        assert np.all(row == 0) if guard else np.all(np.isnan(row)), row
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # NaN where want is NaN


@pytest.mark.parametrize("guard", [False, True])
def test_large_negative_padding_mask(guard: bool) -> None:
    """torch's finfo.min mask instead of -inf: a fully masked row is uniform, never NaN."""
    proto = _attention_model("split", "input", guard)
    feeds = _feeds("input", _causal(fully_masked_row=True))
    feeds["m"] = np.where(np.isinf(feeds["m"]), np.finfo(np.float32).min, 0).astype(np.float32)
    res, got = _optimize_and_run(proto, feeds)
    assert res.graph.op_counts().get("Attention") == 1
    (want,) = ort_run(proto, feeds)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_split_scale_needs_scalars() -> None:
    """q * a @ kT * b is (q @ kT) * ab only for scalar a and b: a per-feature scale stays."""
    proto = _attention_model("split", "none", False)
    r = next(t for t in proto.graph.initializer if t.name == "r")
    per_feature = np.linspace(0.2, 0.5, D).astype(np.float32).reshape(D, 1)
    r.CopyFrom(init("r", per_feature))  # Mul(kT [..., D, L], r [D, 1]): scales rows of kT
    proto.graph.node[1].input[1] = "r1"  # q * [1] scalar, kT * per-feature
    proto.graph.initializer.append(init("r1", np.float32(0.5)))
    feeds = _feeds("none", _causal(False))
    res, got = _optimize_and_run(proto, feeds)
    assert "Attention" not in res.graph.op_counts()
    (want,) = ort_run(proto, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reference_guard_semantics() -> None:
    """The numpy reference of Attention: nan_to_zero turns exactly the NaN rows into zeros."""
    from eqsat.ir import Graph
    from eqsat.ops import OPS

    q, k, v = (RNG.standard_normal(s).astype(np.float32) for s in ((1, 2, 3), (1, 4, 3), (1, 4, 2)))
    mask = np.zeros((1, 2, 4), np.float32)
    mask[0, 1] = -np.inf
    for flag in (0, 1):
        g = Graph("t")
        ins = [g.input(n, a.shape) for n, a in zip("qkvm", (q, k, v, mask), strict=True)]
        out = g.op("Attention", *ins, scale=0.5, nan_to_zero=flag)
        (got,) = OPS["Attention"].evaluate(out.producer, [q, k, v, mask])
        assert not np.isnan(got[0, 0]).any()
        assert np.all(got[0, 1] == 0) if flag else np.all(np.isnan(got[0, 1]))

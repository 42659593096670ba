"""Conv taps that only read padding are dropped before lowering (:mod:`eqsat.lowering.cpu_taps`):
the kernel shrinks, the numbers stay the numpy reference's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_taps

import eqsat
from eqsat.ir import Graph


def _conv(rng: np.random.Generator, x_shape: tuple, kernel: tuple, attrs: dict) -> Graph:
    g = Graph("dilated")
    x = g.input("x", x_shape)
    w = g.constant(rng.standard_normal((6, x_shape[1], *kernel)).astype(np.float32), "w")
    b = g.constant(rng.standard_normal(6).astype(np.float32), "b")
    g.output(g.op("Sigmoid", g.op("Conv", x, w, b, **attrs)), "y")
    return g


@pytest.mark.parametrize(
    ("x_shape", "kernel", "attrs", "live"),
    [
        # ASPP: dilation past the map, only the centre tap reads the input.
        ((1, 5, 9, 9), (3, 3), {"dilations": [12, 12], "pads": [12, 12, 12, 12]}, (1, 1)),
        # Partly live corner taps: nothing to drop.
        ((1, 5, 9, 9), (3, 3), {"dilations": [6, 6], "pads": [6, 6, 6, 6]}, (3, 3)),
        # One end dead along H only, asymmetric pads, stride 2.
        (
            (1, 3, 10, 11),
            (3, 3),
            {"dilations": [7, 1], "pads": [7, 1, 0, 1], "strides": [2, 2]},
            (2, 3),
        ),
        # A 1-D conv.
        ((2, 4, 10), (5,), {"dilations": [11], "pads": [22, 22]}, (1,)),
        # SAME padding written as auto_pad.
        ((1, 2, 4, 4), (3, 3), {"dilations": [5, 5], "auto_pad": "SAME_UPPER"}, (1, 1)),
    ],
    ids=["centre-only", "all-live", "one-end-strided", "conv1d", "auto-pad"],
)
def test_dead_taps_are_dropped_and_results_kept(
    rng: np.random.Generator, x_shape: tuple, kernel: tuple, attrs: dict, live: tuple
) -> None:
    g = _conv(rng, x_shape, kernel, attrs)
    pruned = cpu_taps.prune(g)
    (conv,) = [n for n in pruned.nodes if n.op == "Conv"]
    assert tuple(conv.inputs[1].shape[2:]) == live
    assert (pruned is g) == (live == kernel)
    assert tuple(g.nodes[0].inputs[1].shape[2:]) == kernel  # the input graph is unchanged
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    for graph in (g, eqsat.optimize(g, target="cpu").graph):
        got = eqsat.compile(graph, target="cpu").run(feeds)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_conv_keeps_its_bias_and_epilogue(rng: np.random.Generator) -> None:
    g = _conv(rng, (1, 4, 7, 7), (3, 3), {"dilations": [8, 8], "pads": [8, 8, 8, 8]})
    y = g.outputs[0]
    g.outputs[0] = g.op("Add", y, g.input("r", (1, 6, 7, 7)))
    graph = eqsat.optimize(g, target="cpu").graph
    assert any(n.op == "FusedConv" for n in graph.nodes)
    fused: Any = next(n for n in cpu_taps.prune(graph).nodes if n.op == "FusedConv")
    assert fused.inputs[1].shape[2:] == (1, 1)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in
             [("x", (1, 4, 7, 7)), ("r", (1, 6, 7, 7))]}  # fmt: skip
    want = eqsat.compile(g, target="numpy").run(feeds)
    got = eqsat.compile(graph, target="cpu").run(feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)

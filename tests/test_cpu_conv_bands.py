"""Convs whose taps read padding for many outputs are computed band by band
(:mod:`eqsat.lowering.cpu_conv_bands`): the bands are those of the geometry, the split is taken
where the roofline says it pays, and the numbers stay the numpy reference's."""

from __future__ import annotations

import numpy as np
import pytest
from eqsat.lowering import cpu_conv_bands
from eqsat.lowering.cpu_conv_bands import Band

import eqsat
from eqsat.ir import Graph


def test_bands_of_a_dilated_axis() -> None:
    # ASPP's 3x3 dilated by 12 on 16 positions: the outer taps read the input for 4 outputs each.
    assert cpu_conv_bands.bands(16, 16, 3, 1, 12, 12) == [
        Band(0, 4, range(1, 3)),
        Band(4, 12, range(1, 2)),
        Band(12, 16, range(0, 2)),
    ]
    # A plain 3x3 with padding 1: the first and last outputs miss one tap.
    assert cpu_conv_bands.bands(5, 5, 3, 1, 1, 1) == [
        Band(0, 1, range(1, 3)),
        Band(1, 4, range(0, 3)),
        Band(4, 5, range(0, 2)),
    ]


def _conv(rng: np.random.Generator, x_shape: tuple, w_shape: tuple, attrs: dict) -> Graph:
    g = Graph("banded")
    x = g.input("x", x_shape)
    w = g.constant((rng.standard_normal(w_shape) * 0.1).astype(np.float32), "w")
    b = g.constant(rng.standard_normal(w_shape[0]).astype(np.float32), "b")
    g.output(g.op("Relu", g.op("Conv", x, w, b, **attrs)), "y")
    return g


def test_the_roofline_splits_aspp_but_not_ordinary_convs(rng: np.random.Generator) -> None:
    def chosen(x_shape: tuple, w_shape: tuple, attrs: dict) -> bool:
        node = _conv(rng, x_shape, w_shape, attrs).nodes[0]
        return cpu_conv_bands.worth_splitting(node) is not None

    aspp = {"dilations": [12, 12], "pads": [12] * 4}
    assert chosen((1, 960, 16, 16), (256, 960, 3, 3), aspp)
    assert not chosen((1, 64, 56, 56), (64, 64, 3, 3), {"pads": [1] * 4})
    # A 2x2 map: 4 taps of 9 live per output, but each region reads its weights again.
    assert not chosen((1, 512, 2, 2), (512, 512, 3, 3), {"pads": [1] * 4})
    # Too small to pay for the regions' steps.
    assert not chosen((1, 8, 16, 16), (8, 8, 3, 3), aspp)


@pytest.fixture
def always_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split every conv with more than one band, however small."""
    monkeypatch.setattr(cpu_conv_bands, "SECONDS_PER_REGION", 0.0)
    monkeypatch.setattr(cpu_conv_bands, "WEIGHT_BYTES_PER_SECOND", float("inf"))
    monkeypatch.setattr(cpu_conv_bands, "SPLIT_GAIN", 1.0)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "regions"),
    [
        ((1, 6, 16, 16), (5, 6, 3, 3), {"dilations": [12, 12], "pads": [12] * 4}, 9),
        ((2, 4, 9, 13), (3, 4, 3, 3), {"dilations": [5, 4], "pads": [5, 4, 5, 4]}, 9),
        # Stride 2, asymmetric padding, a 5-wide kernel: strided tap crops.
        ((1, 3, 11, 12), (4, 3, 3, 5), {"strides": [2, 2], "pads": [1, 2, 2, 1]}, 9),
        # Groups keep the sub-conv form (their channels cannot be stacked across taps).
        ((1, 6, 10, 10), (6, 3, 3, 3), {"group": 2, "dilations": [6, 6], "pads": [6] * 4}, 9),
        ((2, 4, 20), (3, 4, 5), {"dilations": [7], "pads": [14, 14]}, 5),
        ((1, 4, 4, 4), (3, 4, 3, 3), {"auto_pad": "SAME_UPPER", "dilations": [3, 3]}, 9),
    ],
    ids=["aspp", "batch-2", "strided", "grouped", "conv1d", "auto-pad"],
)
@pytest.mark.usefixtures("always_split")
def test_split_convs_match_the_reference(
    rng: np.random.Generator, x_shape: tuple, w_shape: tuple, attrs: dict, regions: int
) -> None:
    g = _conv(rng, x_shape, w_shape, attrs)
    split, count = cpu_conv_bands.split(g)
    assert count == 1 and split is not g and g.nodes[0].op == "Conv"
    convs = [n for n in split.nodes if n.op == "Conv"]
    assert len(convs) == regions
    assert all(n.attrs["pads"] == [0] * (2 * (len(x_shape) - 2)) for n in convs)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    exe = eqsat.compile(eqsat.optimize(g, target="cpu").graph, target="cpu")
    assert exe.report["banded_convs"] == 1
    np.testing.assert_allclose(exe.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("always_split")
def test_epilogue_operands_are_cropped_with_their_region(rng: np.random.Generator) -> None:
    g = _conv(rng, (1, 4, 12, 12), (6, 4, 3, 3), {"dilations": [8, 8], "pads": [8] * 4})
    y = g.outputs[0]
    residual = g.input("r", (1, 6, 12, 12))
    row = g.input("row", (12, 1))  # broadcasts along W only: cropped along H alone
    g.outputs[0] = g.op("Add", g.op("Mul", y, row), residual)
    graph = eqsat.optimize(g, target="cpu").graph
    assert any(n.op == "FusedConv" and len(n.inputs) > 3 for n in graph.nodes)
    feeds = {
        "x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32),
        "r": rng.standard_normal((1, 6, 12, 12)).astype(np.float32),
        "row": rng.standard_normal((12, 1)).astype(np.float32),
    }
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    assert exe.report["banded_convs"] == 1
    got = exe.run(feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)

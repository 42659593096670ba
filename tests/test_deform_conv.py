"""DeformConv (:mod:`eqsat.ops.deform`) against onnxruntime on both targets: offsets that move the
taps off the grid and out of the image, groups, offset groups, strides, dilations, asymmetric
pads, masks and biases; and the refusals, naming the node."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import eqsat
from eqsat.errors import ShapeError, UnsupportedOperatorError

ort = pytest.importorskip("onnxruntime")
F32 = np.float32


def _case(
    x: tuple[int, int, int, int], m: int, kernel: tuple[int, int], attrs: dict,
    mask: bool = False, bias: bool = False,
) -> tuple[bytes, dict[str, np.ndarray]]:  # fmt: skip
    rng = np.random.default_rng(sum(x) + m)
    n, c, h, w = x
    (kh, kw), group = kernel, attrs.get("group", 1)
    groups_off = attrs.get("offset_group", 1)
    s, d = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    oh = (h + p[0] + p[2] - ((kh - 1) * d[0] + 1)) // s[0] + 1
    ow = (w + p[1] + p[3] - ((kw - 1) * d[1] + 1)) // s[1] + 1
    feeds = {
        "x": rng.standard_normal(x).astype(F32),
        "w": rng.standard_normal((m, c // group, kh, kw)).astype(F32),
        # offsets of a few pixels: taps between grid points and past the borders
        "offset": (rng.standard_normal((n, groups_off * kh * kw * 2, oh, ow)) * 2).astype(F32),
    }
    names = ["x", "w", "offset"]
    if bias or mask:
        names.append("b" if bias else "")
    if bias:
        feeds["b"] = rng.standard_normal(m).astype(F32)
    if mask:
        names.append("mask")
        feeds["mask"] = rng.random((n, groups_off * kh * kw, oh, ow)).astype(F32)
    # The filters and bias are weights (initializers); the data, offsets and mask are fed.
    weights = [numpy_helper.from_array(feeds.pop(k), k) for k in ("w", "b") if k in feeds]
    inputs = [
        helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()
    ]
    node = helper.make_node("DeformConv", names, ["y"], kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph(
        [node], "deform", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return model.SerializeToString(), feeds


@pytest.mark.parametrize(
    ("x", "m", "kernel", "attrs", "mask", "bias"),
    [
        ((1, 4, 8, 9), 6, (3, 3), {"pads": [1, 1, 1, 1]}, False, False),
        ((2, 6, 9, 7), 4, (3, 2), {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2],
                                   "group": 2, "offset_group": 3}, True, True),
        ((1, 8, 12, 12), 8, (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2], "offset_group": 2},
         True, False),
        ((1, 4, 7, 7), 4, (5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2], "group": 4,
                                   "offset_group": 4}, True, True),
    ],
    ids=["dcn-v1", "grouped-strided-dilated", "dcn-v2-dilated", "depthwise-5x5-s2"],
)  # fmt: skip
def test_matches_onnxruntime(
    x: tuple, m: int, kernel: tuple, attrs: dict, mask: bool, bias: bool
) -> None:
    model, feeds = _case(x, m, kernel, attrs, mask, bias)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for target in ("numpy", "cpu"):
        exe = eqsat.compile(eqsat.load(model), target=target)
        if target == "cpu":  # the deformable im2col kernel, not the reference
            assert exe.report["reference_ops"] == {}
        got = exe.run(feeds)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(exe.run(feeds)["y"], got)  # scratch reused cleanly


def test_zero_offsets_are_a_conv() -> None:
    """With zero offsets and no mask DeformConv is the plain Conv of the same attributes."""
    g = eqsat.Graph("deform")
    x = g.input("x", (1, 4, 6, 6))
    rng = np.random.default_rng(0)
    w = g.constant(rng.standard_normal((5, 4, 3, 3)).astype(F32), "w")
    offset = g.constant(np.zeros((1, 18, 3, 3), F32), "offset")
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    g.output(g.op("DeformConv", x, w, offset, **attrs), "y")
    g.output(g.op("Conv", x, w, **attrs), "conv")
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(F32)}
    for target in ("numpy", "cpu"):  # the cpu target with constant offsets
        out = eqsat.compile(g, target=target).run(feeds)
        np.testing.assert_allclose(out["y"], out["conv"], rtol=1e-5, atol=1e-5)


def test_a_constant_mask_scales_every_sample() -> None:
    """A mask given as a constant (reshaped once at compile time on the cpu target): with zero
    offsets and every mask entry 0.5, half the plain Conv."""
    g = eqsat.Graph("deform")
    x = g.input("x", (1, 4, 6, 6))
    rng = np.random.default_rng(1)
    w = g.constant(rng.standard_normal((5, 4, 3, 3)).astype(F32), "w")
    offset = g.constant(np.zeros((1, 18, 6, 6), F32), "offset")
    mask = g.constant(np.full((1, 9, 6, 6), 0.5, F32), "mask")
    g.output(g.op("DeformConv", x, w, offset, None, mask, pads=[1, 1, 1, 1]), "y")
    g.output(g.op("Conv", x, w, pads=[1, 1, 1, 1]), "conv")
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(F32)}
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {}
    out = exe.run(feeds)
    np.testing.assert_allclose(out["y"], 0.5 * out["conv"], rtol=1e-5, atol=1e-5)


def test_refusals_name_the_node() -> None:
    g = eqsat.Graph("deform")
    x = g.input("x", (1, 4, 6, 6))
    w = g.constant(np.ones((4, 4, 3, 3), F32), "w")
    with pytest.raises(ShapeError, match=r"'dc'.*offset must have shape \(1, 18, 4, 4\)"):
        g.op("DeformConv", x, w, g.input("bad", (1, 9, 4, 4)), name="dc")
    with pytest.raises(ShapeError, match="offset_group 3 must divide"):
        g.op("DeformConv", x, w, g.input("o3", (1, 54, 4, 4)), offset_group=3, name="dc3")
    with pytest.raises(ShapeError, match="mask must have shape"):
        offset = g.input("o", (1, 18, 4, 4))
        g.op("DeformConv", x, w, offset, None, g.input("mk", (1, 18, 4, 4)), name="dcm")
    volume = g.input("v", (1, 4, 6, 6, 6))
    w3 = g.constant(np.ones((4, 4, 3, 3, 3), F32), "w3")
    with pytest.raises(UnsupportedOperatorError, match="only 2-D") as err:
        g.op("DeformConv", volume, w3, g.input("o5", (1, 162, 4, 4, 4)), name="dc3d")
    assert err.value.unsupported[0][:2] == ("DeformConv", "dc3d")

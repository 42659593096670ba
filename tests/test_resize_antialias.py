"""Resize with ``antialias=1`` (:mod:`eqsat.ops.resize`): linear and cubic filters stretched by
1 / scale on shrinking axes, against onnxruntime on both targets, for float and integer images
(onnxruntime resamples integer images innermost axis first, rounding each pass)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import eqsat

ort = pytest.importorskip("onnxruntime")
TYPES = {np.float32: TensorProto.FLOAT, np.uint8: TensorProto.UINT8}


def _model(shape: tuple, dtype: type, mode: str, scales: list | None, sizes: list | None,
           **attrs: object) -> bytes:  # fmt: skip
    given = np.array(scales, np.float32) if scales else np.array(sizes, np.int64)
    name = "scales" if scales else "sizes"
    inputs = ["x", "", "scales"] if scales else ["x", "", "", "sizes"]
    attrs = {"antialias": 1, **attrs}
    node = helper.make_node("Resize", inputs, ["y"], mode=mode, **attrs)
    graph = helper.make_graph(
        [node], "resize", [helper.make_tensor_value_info("x", TYPES[dtype], shape)],
        [helper.make_tensor_value_info("y", TYPES[dtype], None)],
        [numpy_helper.from_array(given, name)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize(
    ("scales", "sizes", "attrs"),
    [
        (None, [1, 3, 30, 45], {}),  # torchvision-style downscale to a size
        ([1, 1, 0.6, 1.7], None, {}),  # one axis down, one up (up: the plain filter)
        ([1, 1, 0.25, 0.33], None, {"coordinate_transformation_mode": "pytorch_half_pixel"}),
        (
            None,
            [1, 3, 17, 64],
            {"exclude_outside": 1, "coordinate_transformation_mode": "asymmetric"},
        ),
        (None, [1, 3, 25, 20], {"coordinate_transformation_mode": "align_corners"}),
    ],
    ids=["sizes", "down-and-up", "quarter-pytorch", "exclude-outside-asymmetric", "align-corners"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_matches_onnxruntime(
    mode: str, scales: list | None, sizes: list | None, attrs: dict, dtype: type
) -> None:
    shape = (1, 3, 64, 64)
    model = _model(shape, dtype, mode, scales, sizes, **attrs)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype == np.uint8:
        x = rng.integers(0, 256, shape).astype(np.uint8)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for target in ("numpy", "cpu"):
        got = eqsat.compile(eqsat.load(model), target=target).run({"x": x})["y"]
        assert got.dtype == want.dtype and got.shape == want.shape
        # uint8: onnxruntime weighs in fixed point, so a value may land one step away.
        tol = 1.0 if dtype == np.uint8 else 2e-5
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


def test_shrinking_widens_the_filter_and_growing_does_not() -> None:
    """Downscaling by 4 averages a 4-wide neighbourhood (plain linear reads two samples);
    upscaling with antialias=1 is the plain filter."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 1, 16) ** 2
    down = _model((1, 1, 1, 16), np.float32, "linear", [1, 1, 1, 0.25], None)
    y = eqsat.compile(eqsat.load(down), target="numpy").run({"x": x})["y"].reshape(-1)
    plain_y = x.reshape(-1)[[1, 5, 9, 13]] / 2 + x.reshape(-1)[[2, 6, 10, 14]] / 2
    assert not np.allclose(y, plain_y)
    # Output i samples 4i + 1.5: a tent of radius 4 over positions 4i - 2 .. 4i + 5 (clamped),
    # weights 1, 3, 5, 7, 7, 5, 3, 1 over 32.
    padded = np.pad(x.reshape(-1).astype(np.float64), 2, mode="edge")
    taps = np.array([1, 3, 5, 7, 7, 5, 3, 1], np.float64) / 32
    want = [np.dot(taps, padded[4 * i : 4 * i + 8]) for i in range(4)]
    np.testing.assert_allclose(y, want, rtol=1e-6)
    up = _model((1, 1, 1, 16), np.float32, "linear", [1, 1, 1, 2.0], None)
    no_aa = _model((1, 1, 1, 16), np.float32, "linear", [1, 1, 1, 2.0], None, antialias=0)
    np.testing.assert_array_equal(
        eqsat.compile(eqsat.load(up), target="numpy").run({"x": x})["y"],
        eqsat.compile(eqsat.load(no_aa), target="numpy").run({"x": x})["y"],
    )

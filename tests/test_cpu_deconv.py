"""ConvTranspose by GEMM + col2im (:mod:`eqsat.lowering.cpu_deconv`): overlapping taps (kernel 4,
stride 2), pads (negative totals from auto_pad included), dilations, output padding, groups, 1-D,
float64 and fused epilogues, against the numpy reference and onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_deconv

import eqsat
from tests.cpu_testing import matches_numpy

F32 = np.float32


@pytest.fixture
def col2im_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = cpu_deconv.col2im

    def spy(*args: Any) -> None:
        calls.append(1)
        real(*args)

    monkeypatch.setattr(cpu_deconv, "col2im", spy)
    return calls


def _deconv(rng: np.random.Generator, x_shape: tuple, m: int, kernel: tuple, attrs: dict,
            dtype: Any = F32, bias: bool = True, fused: str = "") -> eqsat.Graph:  # fmt: skip
    g = eqsat.Graph("deconv")
    x = g.input("x", x_shape, dtype)
    group = int(attrs.get("group", 1))
    w = g.constant(rng.standard_normal((x_shape[1], m // group, *kernel)).astype(dtype), "w")
    inputs = [x, w, g.constant(rng.standard_normal((m,)).astype(dtype), "b") if bias else None]
    if fused:
        y = g.op("FusedConvTranspose", *inputs, num_base_inputs=3, epilogue=fused, **attrs)
    else:
        y = g.op("ConvTranspose", *[v for v in inputs if v is not None], **attrs)
    g.output(y, "y")
    return g


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 6, 5, 7), 4, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # decoder upsampling
        ((2, 3, 4, 4), 5, (3, 3), {"strides": [2, 2], "output_padding": [1, 1]}),
        ((1, 4, 5, 5), 4, (3, 2), {"strides": [3, 1], "dilations": [2, 1], "pads": [0, 1, 2, 0]}),
        ((1, 4, 4, 6), 6, (3, 3), {"group": 2, "strides": [2, 1], "pads": [1, 1, 1, 1]}),
        ((1, 3, 4, 4), 2, (3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ((1, 5, 9), 3, (4,), {"strides": [2], "pads": [1, 1]}),  # 1-D (vocoders)
    ],
    ids=["k4s2p1", "output-padding", "dilated-asym-pads", "grouped", "same-upper", "1d"],
)
def test_conv_transpose_matches_numpy(
    rng: np.random.Generator, col2im_calls: list, x_shape: tuple, m: int, kernel: tuple,
    attrs: dict,
) -> None:  # fmt: skip
    exe = matches_numpy(_deconv(rng, x_shape, m, kernel, attrs), rng, rtol=1e-4, atol=1e-5, runs=2)
    assert exe.report["reference_ops"] == {} and col2im_calls


def test_fused_epilogue_float64_without_bias(rng: np.random.Generator, col2im_calls: list) -> None:
    g = _deconv(rng, (1, 4, 5, 5), 3, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]},
                np.float64, bias=False, fused="max({0}, 0)")  # fmt: skip
    exe = matches_numpy(g, rng, rtol=1e-10, atol=1e-12)
    assert exe.report["reference_ops"] == {} and col2im_calls


def test_matches_onnxruntime(rng: np.random.Generator) -> None:
    ort = pytest.importorskip("onnxruntime")
    g = _deconv(rng, (1, 8, 6, 6), 4, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]})
    feeds = {"x": rng.standard_normal((1, 8, 6, 6)).astype(F32)}
    model = eqsat.to_onnx(g)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = eqsat.compile(g, target="cpu").run(feeds)["y"]
    np.testing.assert_allclose(got, want.run(None, feeds)[0], rtol=1e-4, atol=1e-5)

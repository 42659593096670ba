"""The neural-network operator family: MatMul, Gemm, Conv, ConvTranspose, pools, normalizations,
Softmax/LogSoftmax, Einsum and Resize.

Every op is built with the Graph builder, run through ``eqsat.compile(...).run`` and compared with
onnxruntime on a one-node model, over the awkward attribute combinations (groups, dilations,
asymmetric and automatic padding, ceil_mode, transposed-conv output shapes, resize coordinate modes);
then come shape errors, costs, and the official ONNX backend node tests of these ops.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import eqsat

# Imported for their registrations, in case eqsat.ops does not load these families itself.
import eqsat.ops.conv
import eqsat.ops.resize
from eqsat import ops
from eqsat.errors import ShapeError, UnsupportedOperatorError
from tests.onnx_testing import one_node_graph

ort = pytest.importorskip("onnxruntime")

F32 = np.float32


def rand(rng: np.random.Generator, *shape: int, dtype: Any = F32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def run_ort(
    op: str, inputs: list, attrs: dict, n_out: int, consts: set[int], opset: int = 21
) -> list[np.ndarray]:
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in consts:
            inits.append(numpy_helper.from_array(a, name))
        else:
            dtype = helper.np_dtype_to_tensor_dtype(a.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, dtype, a.shape))
            feeds[name] = a
    outs = [f"out{j}" for j in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def run_eqsat(op: str, inputs: list, attrs: dict, n_out: int, consts: set[int]) -> list:
    g, _, feeds = one_node_graph(op, inputs, consts, n_out, **attrs)
    out = eqsat.compile(g).run(feeds)
    return [out[f"out{j}"] for j in range(n_out)]


def check(
    op: str,
    inputs: list,
    attrs: dict | None = None,
    *,
    n_out: int = 1,
    consts: set[int] = frozenset(),
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list:
    attrs = attrs or {}
    want = run_ort(op, inputs, attrs, n_out, set(consts))
    got = run_eqsat(op, inputs, attrs, n_out, set(consts))
    for w, r in zip(want, got, strict=True):
        assert r.shape == w.shape and r.dtype == w.dtype, (r.shape, r.dtype, w.shape, w.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(r, w, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(r, w)
    return got


# ------------------------------------------------------------------------------ MatMul and Gemm
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((4,), (4, 5)),
        ((2, 3, 4), (4,)),
        ((4,), (4,)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((1, 3, 4), (2, 4, 6)),
    ],
)
def test_matmul(rng: np.random.Generator, a: tuple, b: tuple) -> None:
    check("MatMul", [rand(rng, *a), rand(rng, *b)])


def test_matmul_dtypes(rng: np.random.Generator) -> None:
    a, b = rand(rng, 3, 8), rand(rng, 8, 5)
    check("MatMul", [a.astype(np.float16), b.astype(np.float16)], rtol=1e-2, atol=1e-2)
    check("MatMul", [a.astype(np.float64), b.astype(np.float64)], rtol=1e-10, atol=1e-12)
    ints = [rng.integers(-9, 9, s).astype(np.int64) for s in ((3, 4), (2, 4, 2))]
    check("MatMul", ints)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 1), (1,), (3, 5), (1, 5), ()])
def test_gemm(rng: np.random.Generator, trans_a: int, trans_b: int, c_shape: tuple | None) -> None:
    a = rand(rng, 4, 3) if trans_a else rand(rng, 3, 4)
    b = rand(rng, 5, 4) if trans_b else rand(rng, 4, 5)
    c = None if c_shape is None else rand(rng, *c_shape)
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 0.5, "beta": 2.0}
    check("Gemm", [a, b, c] if c is not None else [a, b], attrs)


# ----------------------------------------------------------------------------------------- Conv
CONV_CASES = [
    ((1, 3, 7, 8), (4, 3, 3, 3), {}),
    ((2, 4, 9, 9), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 2, 1]}),
    ((1, 4, 9, 10), (4, 2, 3, 3), {"group": 2, "dilations": [2, 3], "pads": [2, 0, 1, 3]}),
    ((1, 4, 9, 9), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    ((2, 4, 9, 9), (8, 1, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 10, 9), (4, 1, 4, 3), {"group": 4, "auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 3, 10, 9), (5, 3, 4, 2), {"auto_pad": "SAME_UPPER", "strides": [1, 2]}),
    ((1, 3, 10, 9), (5, 3, 4, 2), {"auto_pad": "SAME_LOWER", "strides": [3, 2]}),
    ((2, 3, 11), (5, 3, 4), {"auto_pad": "VALID", "strides": [3]}),
    ((2, 3, 11), (6, 1, 3), {"group": 3, "pads": [0, 2], "dilations": [2]}),
    ((1, 2, 5, 6, 7), (3, 2, 2, 3, 2), {"pads": [0, 1, 1, 1, 0, 1], "strides": [1, 2, 1]}),
    ((1, 4, 5, 6, 4), (4, 1, 3, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER"}),
    ((1, 8, 6, 6), (16, 8, 1, 1), {"kernel_shape": [1, 1]}),
]


@pytest.mark.parametrize(("x", "w", "attrs"), CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(rng: np.random.Generator, x: tuple, w: tuple, attrs: dict, bias: bool) -> None:
    inputs = [rand(rng, *x), rand(rng, *w)] + ([rand(rng, w[0])] if bias else [])
    check("Conv", inputs, attrs)


def test_conv_dtypes(rng: np.random.Generator) -> None:
    x, w, b = rand(rng, 1, 4, 6, 6), rand(rng, 6, 2, 3, 3), rand(rng, 6)
    attrs = {"group": 2, "pads": [1, 1, 1, 1]}
    # onnxruntime has no float16/float64 Conv on CPU: compare with its float32 result.
    (want,) = run_ort("Conv", [x, w, b], attrs, 1, set())
    for dtype, tol in ((np.float16, 1e-2), (np.float64, 1e-5)):
        (got,) = run_eqsat("Conv", [a.astype(dtype) for a in (x, w, b)], attrs, 1, set())
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_conv_im2col_in_slices(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny chunk limit makes the im2col run in many row slices; the result must not change."""
    monkeypatch.setattr(eqsat.ops.conv, "IM2COL_CHUNK_ELEMENTS", 100)
    x, w = rand(rng, 2, 6, 11, 9), rand(rng, 4, 3, 3, 2)
    check("Conv", [x, w], {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 1]})


CONVT_CASES = [
    ((1, 3, 4, 5), (3, 2, 3, 3), {}),
    ((2, 4, 4, 5), (4, 3, 3, 2), {"group": 2, "strides": [2, 3], "pads": [1, 0, 0, 1]}),
    (
        (2, 4, 4, 5),
        (4, 3, 3, 2),
        dict(group=2, strides=[2, 3], output_padding=[1, 0], dilations=[1, 2]),
    ),
    ((1, 2, 5), (2, 3, 4), {"strides": [3], "output_padding": [2]}),
    ((1, 2, 5), (2, 3, 4), {"strides": [2], "pads": [1, 2]}),
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [8, 7]}),
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((1, 2, 3, 3), (2, 3, 4, 4), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 3), (2, 3, 4, 4), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "VALID"}),
    ((1, 4, 5, 5), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [0, 1, 0, 1, 0, 1]}),
]


@pytest.mark.parametrize(("x", "w", "attrs"), CONVT_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose(
    rng: np.random.Generator, x: tuple, w: tuple, attrs: dict, bias: bool
) -> None:
    m = w[1] * attrs.get("group", 1)
    inputs = [rand(rng, *x), rand(rng, *w)] + ([rand(rng, m)] if bias else [])
    check("ConvTranspose", inputs, attrs)


def test_conv_transpose_output_shape_padding_split(rng: np.random.Generator) -> None:
    """With output_shape the ONNX spec puts the odd unit of padding at the start (NOTSET)."""
    x, w = rand(rng, 1, 1, 5), rand(rng, 1, 1, 4)
    (y,) = run_eqsat("ConvTranspose", [x, w], {"output_shape": [7]}, 1, set())
    full = np.convolve(x[0, 0], w[0, 0], mode="full")  # 8 values
    np.testing.assert_allclose(y[0, 0], full[1:], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- pools
POOL_CASES = [
    ((1, 3, 7, 8), {"kernel_shape": [3, 3]}),
    ((2, 2, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ((2, 2, 9, 9), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    ((2, 2, 10, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 9, 9), {"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 2]}),
    ((1, 2, 9, 9), dict(kernel_shape=[2, 3], strides=[2, 2], dilations=[2, 1], pads=[1] * 4)),
    ((1, 2, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 8, 9), {"kernel_shape": [4, 3], "strides": [3, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 8, 9), {"kernel_shape": [4, 3], "strides": [3, 2], "auto_pad": "VALID"}),
    ((1, 2, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 2], "ceil_mode": 1}),
    ((1, 2, 5, 6, 7), {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2], "pads": [0, 1, 1] * 2}),
    ((1, 2, 6, 7, 5), {"kernel_shape": [3, 2, 2], "strides": [2, 2, 2], "ceil_mode": 1}),
]


@pytest.mark.parametrize(("x", "attrs"), POOL_CASES)
@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_with_indices(
    rng: np.random.Generator, x: tuple, attrs: dict, storage_order: int
) -> None:
    attrs = {**attrs, "storage_order": storage_order}
    check("MaxPool", [rand(rng, *x)], attrs, n_out=2)


@pytest.mark.parametrize(("x", "attrs"), POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(
    rng: np.random.Generator, x: tuple, attrs: dict, count_include_pad: int
) -> None:
    check("AveragePool", [rand(rng, *x)], {**attrs, "count_include_pad": count_include_pad})


def test_pool_dtypes(rng: np.random.Generator) -> None:
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}
    pixels = rng.integers(0, 255, (1, 2, 7, 7)).astype(np.uint8)
    check("MaxPool", [pixels], attrs)
    check("MaxPool", [(pixels.astype(np.int16) - 128).astype(np.int8)], attrs)
    check("MaxPool", [rand(rng, 1, 2, 7, 7, dtype=np.float16)], attrs, n_out=2)
    check("AveragePool", [rand(rng, 1, 2, 7, 7, dtype=np.float16)], attrs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_global_pools(rng: np.random.Generator, op: str, shape: tuple) -> None:
    check(op, [rand(rng, *shape)])


# ------------------------------------------------------------------------------ normalizations
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 7), (2, 3, 4, 5)])
def test_batch_normalization(rng: np.random.Generator, shape: tuple) -> None:
    c = shape[1]
    var = np.abs(rand(rng, c)) + 0.1
    check("BatchNormalization", [rand(rng, *shape), *(rand(rng, c) for _ in range(3)), var])
    params = [rand(rng, c), rand(rng, c), rand(rng, c), var]
    check("BatchNormalization", [rand(rng, *shape), *params], {"epsilon": 1e-2, "momentum": 0.5})


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 2, 4)])
def test_instance_normalization(rng: np.random.Generator, shape: tuple) -> None:
    inputs = [rand(rng, *shape), rand(rng, shape[1]), rand(rng, shape[1])]
    check("InstanceNormalization", inputs)
    check("InstanceNormalization", inputs, {"epsilon": 1e-2})


@pytest.mark.parametrize("axis", [-1, -2, 0, 1, 3])
def test_layer_normalization(rng: np.random.Generator, axis: int) -> None:
    x = rand(rng, 2, 3, 4, 5)
    norm = x.shape[axis % 4 :]
    check("LayerNormalization", [x, rand(rng, *norm), rand(rng, *norm)], {"axis": axis}, n_out=3)
    check("LayerNormalization", [x, rand(rng, *norm)], {"axis": axis, "epsilon": 1e-2})


def test_layer_normalization_broadcast_scale_and_float16(rng: np.random.Generator) -> None:
    x = rand(rng, 2, 3, 8)
    check("LayerNormalization", [x, rand(rng, 8), rand(rng, 1)], {"axis": 1})
    half = [a.astype(np.float16) for a in (x, rand(rng, 8), rand(rng, 8))]
    got = check("LayerNormalization", half, n_out=3, rtol=1e-2, atol=1e-2)
    assert got[1].dtype == np.float32 and got[1].shape == (2, 3, 1)
    wide = [a.astype(np.float64) for a in (x, rand(rng, 8), rand(rng, 8))]
    check("LayerNormalization", wide, n_out=3, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax(rng: np.random.Generator, op: str, axis: int) -> None:
    check(op, [rand(rng, 2, 3, 4) * 30], {"axis": axis})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_dtypes(rng: np.random.Generator, op: str) -> None:
    check(op, [rand(rng, 3, 7, dtype=np.float16)], rtol=1e-3, atol=1e-3)
    check(op, [rand(rng, 3, 7, dtype=np.float64)], {"axis": 0}, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------- Einsum
EINSUM_CASES = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 2, 3, 4), (1, 2, 4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(3, 3)]),
    ("ij->", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("ij,jk", [(3, 4), (4, 2)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("i,j->ij", [(3,), (4,)]),
    ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)]),
]


@pytest.mark.parametrize(("equation", "shapes"), EINSUM_CASES)
def test_einsum(rng: np.random.Generator, equation: str, shapes: list) -> None:
    check("Einsum", [rand(rng, *s) for s in shapes], {"equation": equation})


def test_einsum_integers_and_implicit_order() -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.arange(12, dtype=np.int64).reshape(4, 3)
    (y,) = run_eqsat("Einsum", [a, b], {"equation": "ab,Ab"}, 1, set())
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, np.einsum("ab,Ab->Aa", a, b))  # 'A' sorts before 'a'


# --------------------------------------------------------------------------------------- Resize
RESIZE_SCALES = [[1, 1, 2, 3], [1, 1, 0.5, 0.4], [1, 1, 3, 0.6], [1, 1, 0.7, 1.3]]
RESIZE_SIZES = [[1, 2, 7, 3], [1, 2, 2, 9], [1, 2, 1, 1], [1, 2, 3, 8]]
COORDINATE_MODES = [
    "half_pixel",
    "asymmetric",
    "align_corners",
    "pytorch_half_pixel",
    "half_pixel_symmetric",
]


def _whole(scales: list) -> bool:
    """onnxruntime's align_corners disagrees with the ONNX reference unless lengths are whole."""
    return all(
        float(np.float32(s) * np.float32(n)) % 1 == 0
        for s, n in zip(scales, (1, 2, 4, 5), strict=True)
    )


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("coordinates", COORDINATE_MODES)
def test_resize_modes(rng: np.random.Generator, mode: str, coordinates: str) -> None:
    x = rand(rng, 1, 2, 4, 5)
    rules = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
    for nearest_mode in rules if mode == "nearest" else rules[:1]:
        attrs = {
            "mode": mode,
            "coordinate_transformation_mode": coordinates,
            "nearest_mode": nearest_mode,
        }
        for scales in RESIZE_SCALES:
            if coordinates == "align_corners" and not _whole(scales):
                continue
            check("Resize", [x, None, np.array(scales, F32)], attrs, consts={2})
        for sizes in RESIZE_SIZES:
            check("Resize", [x, None, None, np.array(sizes, np.int64)], attrs, consts={3})


@pytest.mark.parametrize(
    "attrs",
    [
        {"mode": "linear", "axes": [3, 2]},
        {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
        {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"},
        {"mode": "cubic", "axes": [2], "exclude_outside": 1, "cubic_coeff_a": -0.5},
    ],
)
def test_resize_axes_and_aspect_ratio(rng: np.random.Generator, attrs: dict) -> None:
    sizes = np.array([7, 3][: len(attrs["axes"])], np.int64)
    check("Resize", [rand(rng, 1, 2, 4, 5), None, None, sizes], attrs, consts={3})


def test_resize_negative_axes(rng: np.random.Generator) -> None:
    x = rand(rng, 1, 2, 4, 5)
    sizes = np.array([7, 3], np.int64)
    attrs = {"mode": "linear", "keep_aspect_ratio_policy": "not_smaller"}
    (pos,) = run_eqsat("Resize", [x, None, None, sizes], {**attrs, "axes": [2, 3]}, 1, {3})
    (neg,) = run_eqsat("Resize", [x, None, None, sizes], {**attrs, "axes": [-2, -1]}, 1, {3})
    assert pos.shape == (1, 2, 7, 9)
    np.testing.assert_array_equal(pos, neg)


def test_resize_cubic_exclude_outside(rng: np.random.Generator) -> None:
    attrs = {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}
    check("Resize", [rand(rng, 1, 2, 4, 5), None, np.array([1, 1, 2, 0.6], F32)], attrs, consts={2})


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(rng: np.random.Generator, mode: str) -> None:
    attrs = {
        "mode": mode,
        "coordinate_transformation_mode": "tf_crop_and_resize",
        "extrapolation_value": 7.0,
    }
    roi = np.array([0, 0, 0.2, 0.3, 1, 1, 0.9, 1.2], F32)
    sizes = np.array([1, 2, 5, 6], np.int64)
    check("Resize", [rand(rng, 1, 2, 4, 5), roi, None, sizes], attrs, consts={1, 3})
    axes_roi = np.array([0.2, -0.1, 0.9, 1.0], F32)
    axes = {**attrs, "axes": [2, 3]}
    sizes = np.array([5, 1], np.int64)
    check("Resize", [rand(rng, 1, 2, 4, 5), axes_roi, None, sizes], axes, consts={1, 3})


def test_resize_integer_pixels(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 255, (1, 1, 4, 5)).astype(np.uint8)
    scales = np.array([1, 1, 2, 1.5], F32)
    check("Resize", [pixels, None, scales], {"mode": "nearest"}, consts={2})
    (y,) = run_eqsat("Resize", [pixels, None, scales], {"mode": "linear"}, 1, {2})
    (want,) = run_ort("Resize", [pixels, None, scales], {"mode": "linear"}, 1, {2})
    assert y.dtype == np.uint8
    assert np.abs(y.astype(int) - want.astype(int)).max() <= 1  # rounding of halves may differ


def test_resize_empty_scales_means_sizes(rng: np.random.Generator) -> None:
    x = rand(rng, 1, 1, 3, 3)
    empty = np.zeros(0, F32)
    sizes = np.array([1, 1, 6, 5], np.int64)
    check("Resize", [x, empty, empty, sizes], {"mode": "linear"}, consts={1, 2, 3})


# ---------------------------------------------------------------------------------------- errors
def _build(op: str, shapes: list, **attrs: Any) -> None:
    g = eqsat.Graph()
    values = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    g.op(op, *values, name="the_node", **attrs)


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "message"),
    [
        ("Conv", [(1, 3, 8), (4, 3, 3, 3)], {}, "rank"),
        ("Conv", [(1, 3, 8, 8), (4, 2, 3, 3)], {}, "channel mismatch"),
        ("Conv", [(1, 4, 8, 8), (4, 1, 3, 3)], {"group": 3}, "group"),
        ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3), (5,)], {}, "bias"),
        ("Conv", [(1, 3, 2, 2), (4, 3, 3, 3)], {}, "does not fit"),
        ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], {"pads": [1, 1]}, "pads"),
        ("Conv", [(1, 3, 8, 8), (4, 3, 3, 3)], {"auto_pad": "SAME"}, "auto_pad"),
        ("Conv", [(3, 8), (4, 3, 3)], {}, "rank"),
        ("ConvTranspose", [(1, 3, 8, 8), (2, 4, 3, 3)], {}, "channel mismatch"),
        ("MaxPool", [(1, 3, 2, 2)], {"kernel_shape": [3, 3]}, "does not fit"),
        ("MaxPool", [(1, 3)], {"kernel_shape": [3]}, "rank"),
        ("AveragePool", [(1, 3, 8, 8)], {"kernel_shape": [3]}, "kernel_shape"),
        ("MatMul", [(3, 4), (5, 6)], {}, "inner dimensions"),
        ("MatMul", [(2, 3, 4), (3, 4, 6)], {}, "broadcast"),
        ("Gemm", [(3, 4, 1), (4, 5)], {}, "matrices"),
        ("Gemm", [(3, 4), (4, 5), (2, 5)], {}, "broadcast"),
        ("Einsum", [(3, 4), (5, 6)], {"equation": "ij,jk->ik"}, "sizes"),
        ("Einsum", [(3, 4)], {"equation": "ijk->i"}, "does not fit"),
        ("Einsum", [(3, 4)], {"equation": "ij->iz"}, "output labels"),
        ("Einsum", [(2, 3, 4)], {"equation": "...ij->ij"}, "'...'"),
        ("LayerNormalization", [(2, 3), (3,)], {"axis": 2}, "out of range"),
        ("LayerNormalization", [(2, 3), (2,)], {}, "normalized shape"),
        ("Softmax", [(2, 3)], {"axis": -3}, "out of range"),
        ("BatchNormalization", [(2, 3, 4), (3,), (3,), (2,), (3,)], {}, "input_mean"),
        ("InstanceNormalization", [(2, 3, 4), (4,), (3,)], {}, "scale"),
        ("GlobalAveragePool", [(2, 3)], {}, "rank"),
    ],
)
def test_shape_errors_name_the_node(op: str, shapes: list, attrs: dict, message: str) -> None:
    with pytest.raises(ShapeError, match=message) as err:
        _build(op, shapes, **attrs)
    assert "the_node" in str(err.value)


def test_dtype_errors() -> None:
    g = eqsat.Graph()
    x = g.input("x", (1, 2, 4, 4), np.int32)
    with pytest.raises(ShapeError, match="float"):
        g.op("Conv", x, g.constant(np.ones((2, 2, 1, 1), np.int32)))
    with pytest.raises(ShapeError, match="dtype"):
        g.op("MatMul", g.input("a", (2, 2)), g.input("b", (2, 2), np.float64))


def test_resize_needs_constant_scales_or_sizes() -> None:
    g = eqsat.Graph()
    x = g.input("x", (1, 1, 4, 4))
    with pytest.raises(ShapeError, match="compile time"):
        g.op("Resize", x, None, g.input("scales", (4,)))
    with pytest.raises(ShapeError, match="exactly one"):
        g.op("Resize", x)
    with pytest.raises(ShapeError, match="entries"):
        g.op("Resize", x, None, g.constant(np.array([2, 2], F32)))
    crop = {"coordinate_transformation_mode": "tf_crop_and_resize"}
    with pytest.raises(ShapeError, match="roi"):
        g.op("Resize", x, None, g.constant(np.ones(4, F32)), **crop)


def test_unsupported_variants() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2, 3, 4, 4))
    params = [g.constant(np.ones(3, F32)) for _ in range(4)]
    with pytest.raises(UnsupportedOperatorError, match="training_mode") as err:
        g.op("BatchNormalization", x, *params, training_mode=1, name="bn")
    assert err.value.unsupported[0][:2] == ("BatchNormalization", "bn")
    with pytest.raises(ShapeError, match="antialias must be 0 or 1"):
        scales = g.constant(np.full(4, 0.5, F32))
        g.op("Resize", x, None, scales, mode="linear", antialias=2, name="down")
    with pytest.raises(ShapeError, match="training_mode"):
        g.op("BatchNormalization", x, *params, outputs=3)


# ------------------------------------------------------------------------------------------ cost
def _node_cost(op: str, shapes: list, **attrs: Any) -> float:
    g = eqsat.Graph()
    values = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    g.op(op, *values, **attrs)
    node = g.nodes[-1]
    return ops.get(op).cost(node.inputs, node.outputs, node.attrs).flops


def test_costs_count_multiply_adds() -> None:
    # Conv: 2 * N * Cout * prod(out) * Cin/group * prod(kernel).
    conv = _node_cost("Conv", [(2, 8, 10, 10), (6, 4, 3, 3)], group=2, pads=[1, 1, 1, 1])
    assert conv == 2 * 2 * 6 * 100 * 4 * 9
    conv_bias = _node_cost("Conv", [(1, 3, 5, 5), (4, 3, 1, 1), (4,)])
    assert conv_bias == 2 * 4 * 25 * 3 + 4 * 25
    assert _node_cost("MatMul", [(5, 3, 4), (4, 7)]) == 2 * 5 * 3 * 7 * 4
    assert _node_cost("MatMul", [(4,), (4,)]) == 2 * 4
    assert _node_cost("Gemm", [(4, 3), (4, 5)], transA=1) == 2 * 3 * 5 * 4
    convt = _node_cost("ConvTranspose", [(1, 4, 5, 5), (4, 3, 2, 2)], strides=[2, 2])
    assert convt == 2 * 4 * 25 * 3 * 4
    assert (
        _node_cost("Einsum", [(2, 3, 4), (2, 4, 5)], equation="bij,bjk->bik") == 2 * 2 * 3 * 4 * 5
    )
    assert _node_cost("MaxPool", [(1, 2, 4, 4)], kernel_shape=[2, 2], strides=[2, 2]) == 8 * 4


# ----------------------------------------------------------------------- official ONNX node tests
NODE_OPS = {
    "MatMul": "matmul",
    "Gemm": "gemm",
    "Conv": "conv",
    "ConvTranspose": "convtranspose",
    "MaxPool": "maxpool",
    "AveragePool": "averagepool",
    "GlobalAveragePool": "globalaveragepool",
    "GlobalMaxPool": "globalmaxpool",
    "BatchNormalization": "batch_normalization",
    "InstanceNormalization": "instance_normalization",
    "LayerNormalization": "layernormalization",
    "Softmax": "softmax",
    "LogSoftmax": "logsoftmax",
    "Einsum": "einsum",
    "Resize": "resize",
}
# Inputs that the output shape depends on, so they are bound as constants.
CONST_INPUTS = {"Resize": {1, 2, 3}}
NODE_SKIPS = {
    "test_batchnorm_example_training_mode": "training_mode=1 is not supported",
    "test_batchnorm_epsilon_training_mode": "training_mode=1 is not supported",
    "test_einsum_batch_matmul_bfloat16": "bfloat16 is not supported",
    "test_einsum_sum_bfloat16": "bfloat16 is not supported",
    "test_einsum_transpose_bfloat16": "bfloat16 is not supported",
}


def _node_cases() -> dict[str, tuple[onnx.ModelProto, list]]:
    """Single-node cases of our ops: from the data directory when the wheel ships it, else
    generated in memory from onnx's case modules (newer wheels ship no data files)."""
    data = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "node"
    cases: dict[str, tuple[onnx.ModelProto, list]] = {}
    if data.is_dir():
        for folder in sorted(data.iterdir()):
            model = onnx.load(str(folder / "model.onnx"))
            if len(model.graph.node) != 1 or model.graph.node[0].op_type not in NODE_OPS:
                continue
            sets = []
            for ds in sorted(folder.glob("test_data_set_*")):
                read = [
                    [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(ds.glob(g))]
                    for g in ("input_*.pb", "output_*.pb")
                ]
                sets.append(tuple(read))
            cases[folder.name] = (model, sets)
        return cases
    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in NODE_OPS.values():
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    for case in node_cases._NodeTestCases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in NODE_OPS:
            cases[case.name] = (case.model, case.data_sets)
    return cases


NODE_CASES = _node_cases()


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    return value


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.skip(reason=NODE_SKIPS[n])) if n in NODE_SKIPS else n
        for n in sorted(NODE_CASES)
    ],
)
def test_onnx_node(name: str) -> None:
    model, data_sets = NODE_CASES[name]
    node = model.graph.node[0]
    attrs = {a.name: _attribute(a) for a in node.attribute}
    const_inputs = CONST_INPUTS.get(node.op_type, set())
    for inputs, expected in data_sets:
        g = eqsat.Graph(name)
        values: dict[str, Any] = {}
        feeds = {}
        for info, array in zip(model.graph.input, inputs, strict=True):
            array = np.asarray(array)
            if list(node.input).index(info.name) in const_inputs:
                values[info.name] = g.constant(array, info.name)
            else:
                values[info.name] = g.input(info.name, array.shape, array.dtype)
                feeds[info.name] = array
        args = [values[n] if n else None for n in node.input]
        result = g.op(node.op_type, *args, outputs=list(node.output), **attrs)
        results = result if isinstance(result, tuple) else (result,)
        for v in results:
            g.output(v)
        got = eqsat.compile(g).run(feeds)
        for value, want in zip(results, expected, strict=True):
            want = np.asarray(want)
            assert got[value.name].shape == want.shape
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got[value.name], want, rtol=1e-3, atol=1e-4)
            else:
                np.testing.assert_array_equal(got[value.name], want)


def test_node_cases_found() -> None:
    """The harness must see the node tests of every op (a broken collector would pass silently)."""
    seen = {model.graph.node[0].op_type for model, _ in NODE_CASES.values()}
    assert seen == set(NODE_OPS)
    assert not set(NODE_SKIPS) - set(NODE_CASES)

"""Unique, Compress, ReverseSequence, BitShift, Det, LpPool, GlobalLpPool, MaxUnpool and Col2Im
against onnxruntime.

Each case is a small model loaded with ``eqsat.load`` and run on the numpy and cpu targets. Unique
(always) and Compress (with a run-time condition) have data-dependent shapes: loaded with run-time
inputs they land in the graph's run-time tail, which these tests exercise end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from eqsat.errors import DataDependentShapeError, ShapeError
from tests.onnx_testing import ELEM, F, check_one_node, init, model, ort_run, vi

RNG = np.random.default_rng(17)
ELEMS = {**ELEM, **{np.dtype(t): getattr(T, t.__name__.upper()) for t in (np.uint16, np.uint32,
                                                                        np.uint64, np.int16)}}  # fmt: skip


def run_both(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    *,
    fed: tuple[str, ...] = ("x",),
    opset: int = 21,
    rtol: float = 1e-5,
    tail: bool | None = None,
) -> list[np.ndarray]:
    """Run ``nodes`` with onnxruntime and with eqsat (numpy and cpu targets) and compare; the
    inputs in ``fed`` are graph inputs, the rest initializers. ``tail`` checks whether the loaded
    graph has a run-time tail. Integer outputs must match exactly."""
    proto = model(
        nodes,
        [vi(n, list(a.shape), ELEMS[a.dtype]) for n, a in inputs.items() if n in fed],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        [init(n, a) for n, a in inputs.items() if n not in fed],
        opset=opset,
    )
    feeds = {n: a for n, a in inputs.items() if n in fed}
    want = ort_run(proto, feeds)
    graph = eqsat.load(proto)
    if tail is not None:
        assert (graph.tail is not None) == tail
    for target in ("numpy", "cpu"):
        got = eqsat.compile(graph, target).run(feeds)
        for name, w in zip(outputs, want, strict=True):
            g = got[name]
            assert g.dtype == w.dtype and g.shape == w.shape, (target, name, g.shape, w.shape)
            if w.dtype.kind == "f":
                np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6, err_msg=f"{target} {name}")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"{target} {name}")
    return want


def one(op: str, inputs: dict[str, np.ndarray], attrs: dict | None = None, n_out: int = 1,
        **kwargs: Any) -> list[np.ndarray]:  # fmt: skip
    outs = [f"y{i}" for i in range(n_out)]
    return run_both([h.make_node(op, list(inputs), outs, **(attrs or {}))], inputs, outs, **kwargs)


# ----------------------------------------------------------------------------------------- Unique
UNIQUE_INPUTS = {
    "float": np.array([2.0, 1.0, 1.0, 3.0, 4.0, 3.0, -0.5, 1.0], F),
    "int-2d": RNG.integers(-3, 3, (4, 5)).astype(np.int64),
    "rows": np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4], [0, 9, 9], [2, 3, 4]], np.int64),
    "slices-3d": np.array([[[1.0, 1.0], [0.0, 1.0], [2.0, 1.0], [0.0, 1.0]]] * 2, F),
    # onnxruntime's Unique takes float, double, int64 and int8 only.
    "int8": RNG.integers(-2, 2, (3, 7)).astype(np.int8),
    "double": np.array([[0.5, -1.0, 0.5], [2.0, 0.5, -1.0]]),
}


@pytest.mark.parametrize("sort", [1, 0], ids=["sorted", "first-occurrence"])
@pytest.mark.parametrize(
    ("name", "axis"),
    [
        ("float", None),
        ("int-2d", None),
        ("int-2d", 1),
        ("rows", 0),
        ("rows", -1),
        ("slices-3d", 1),
        ("int8", None),
        ("int8", 0),
        ("double", 1),
    ],
)
def test_unique_runs_in_the_tail(name: str, axis: int | None, sort: int) -> None:
    attrs = {"sorted": sort} if axis is None else {"sorted": sort, "axis": axis}
    x = UNIQUE_INPUTS[name]
    # A static node before it (the tail starts at Unique) and one after it (fed by the tail).
    nodes = [
        h.make_node("Identity", ["x"], ["xi"]),
        h.make_node("Unique", ["xi"], ["y", "first", "inverse", "counts"], **attrs),
        h.make_node("Identity", ["counts"], ["c2"]),
    ]
    run_both(nodes, {"x": x}, ["y", "first", "inverse", "c2"], tail=True)
    # Only some outputs, and a constant input: it folds.
    one("Unique", {"x": x}, attrs, fed=())
    run_both([h.make_node("Unique", ["x"], ["y", "", "inv"], **attrs)], {"x": x}, ["y", "inv"])


def test_unique_refuses_a_bad_axis_and_needs_constants_in_python() -> None:
    g = eqsat.Graph()
    x = g.input("x", (3, 4), np.float32)
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        g.op("Unique", x, axis=2)
    with pytest.raises(DataDependentShapeError, match="Unique of the run-time value 'x'"):
        g.op("Unique", x)


# --------------------------------------------------------------------------------------- Compress
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress(axis: int | None) -> None:
    x = RNG.standard_normal((3, 5)).astype(F)
    attrs = {} if axis is None else {"axis": axis}
    extent = x.size if axis is None else x.shape[axis]
    cond = RNG.random(extent) > 0.4
    # A constant condition: a static shape, compiled as usual.
    one("Compress", {"x": x, "c": cond}, attrs, tail=False)
    one("Compress", {"x": x, "c": cond[:2]}, attrs, tail=False)  # shorter: the rest is dropped
    # A run-time condition: the run-time tail.
    one("Compress", {"x": x, "c": cond}, attrs, fed=("x", "c"), tail=True)
    one("Compress", {"x": x, "c": np.zeros(extent, bool)}, attrs, fed=("x", "c"), tail=True)


def test_compress_refuses_bad_conditions() -> None:
    g = eqsat.Graph()
    x = g.input("x", (3, 4), np.float32)
    with pytest.raises(ShapeError, match="condition must be bool"):
        g.op("Compress", x, g.constant(np.ones(3, np.int64)), axis=0)
    with pytest.raises(ShapeError, match="condition must be 1-D"):
        g.op("Compress", x, g.constant(np.ones((3, 1), bool)), axis=0)
    with pytest.raises(ShapeError, match="selects index 3 beyond the axis' extent 3"):
        g.op("Compress", x, g.constant(np.ones(4, bool)), axis=0)
    with pytest.raises(DataDependentShapeError, match="Compress of the run-time value 'c'"):
        g.op("Compress", x, g.input("c", (3,), bool), axis=0)


# -------------------------------------------------------------------------------- ReverseSequence
@pytest.mark.parametrize(("time", "batch"), [(0, 1), (1, 0)])
def test_reverse_sequence(time: int, batch: int) -> None:
    x = RNG.standard_normal((5, 4, 3) if time == 0 else (4, 5, 3)).astype(F)
    lens = np.array([5, 3, 1, 0], np.int64)
    attrs = {"time_axis": time, "batch_axis": batch}
    one("ReverseSequence", {"x": x, "lens": lens}, attrs)
    one("ReverseSequence", {"x": x, "lens": lens}, attrs, fed=("x", "lens"))
    ints = RNG.integers(-9, 9, x.shape[:2]).astype(np.int32)
    one("ReverseSequence", {"x": ints, "lens": lens}, attrs)


def test_reverse_sequence_refuses_bad_inputs() -> None:
    g = eqsat.Graph()
    x = g.input("x", (5, 4), np.float32)
    with pytest.raises(ShapeError, match=r"sequence_lens must have shape \(4,\)"):
        g.op("ReverseSequence", x, g.constant(np.ones(5, np.int64)))
    with pytest.raises(ShapeError, match="batch_axis and time_axis must be 0 and 1"):
        g.op("ReverseSequence", x, g.constant(np.ones(4, np.int64)), batch_axis=0)
    lens = g.input("lens", (4,), np.int64)
    g.output(g.op("ReverseSequence", x, lens), "y")
    run = eqsat.compile(g, "numpy").run
    with pytest.raises(eqsat.EqsatError, match=r"sequence_lens\[1\] = 6 is outside \[0, 5\]"):
        run({"x": np.zeros((5, 4), F), "lens": np.array([1, 6, 0, 0], np.int64)})


# --------------------------------------------------------------------------------------- BitShift
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift_unsigned(dtype: type, direction: str) -> None:
    bits = np.dtype(dtype).itemsize * 8
    x = RNG.integers(0, np.iinfo(dtype).max, (3, 4), dtype=np.uint64, endpoint=True).astype(dtype)
    s = RNG.integers(0, bits, (4,)).astype(dtype)
    one("BitShift", {"x": x, "s": s}, {"direction": direction}, fed=("x", "s"))


def test_bitshift_signed_and_out_of_range_shifts() -> None:
    # Opset 28's definitions (onnxruntime implements BitShift for unsigned types only).
    g = eqsat.Graph()
    x = g.input("x", (6,), np.int8)
    s = g.input("s", (6,), np.int8)
    g.output(g.op("BitShift", x, s, direction="RIGHT"), "r")
    g.output(g.op("BitShift", x, s, direction="LEFT"), "l")
    xs = np.array([-128, -7, 100, 5, -1, 64], np.int8)
    ss = np.array([3, 1, 8, -1, 9, 1], np.int8)
    for target in ("numpy", "cpu"):
        out = eqsat.compile(g, target).run({"x": xs, "s": ss})
        np.testing.assert_array_equal(out["r"], [-16, -4, 0, 0, -1, 32])
        np.testing.assert_array_equal(out["l"], [0, -14, 0, 0, 0, -128])
    with pytest.raises(ShapeError, match="X and Y must share one integer dtype"):
        g.op("BitShift", x, g.input("f", (6,), np.int32), direction="LEFT")
    with pytest.raises(ShapeError, match="direction must be 'LEFT' or 'RIGHT'"):
        g.op("BitShift", x, s, direction="UP")


# -------------------------------------------------------------------------------------------- Det
@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2)])
def test_det(shape: tuple[int, ...]) -> None:
    one("Det", {"x": RNG.standard_normal(shape).astype(F)}, rtol=1e-4)
    g = eqsat.Graph()
    with pytest.raises(ShapeError, match="square matrices"):
        g.op("Det", g.input("x", (2, 3), np.float32))


# ---------------------------------------------------------------------------------------- LpPool
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [3, 3]},
        {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]},
        {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [2, 2], "dilations": [2, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
        {"kernel_shape": [2, 3], "auto_pad": "SAME_UPPER"},
    ],
    ids=["plain", "pads-strides", "ceil", "dilated", "same-lower", "same-upper"],
)
def test_lppool(attrs: dict, p: int) -> None:
    x = RNG.standard_normal((2, 3, 7, 8)).astype(F)
    one("LpPool", {"x": x}, {**attrs, "p": p}, rtol=1e-5)


def test_lppool_1d_3d_and_global() -> None:
    one("LpPool", {"x": RNG.standard_normal((1, 2, 9)).astype(F)}, {"kernel_shape": [3]})
    x3 = RNG.standard_normal((1, 2, 4, 5, 6)).astype(F)
    one("LpPool", {"x": x3}, {"kernel_shape": [2, 2, 3], "p": 1, "strides": [1, 2, 2]})
    for p in (1, 2, 3):
        one("GlobalLpPool", {"x": x3}, {"p": p})
        one("GlobalLpPool", {"x": RNG.standard_normal((2, 3, 5)).astype(F)}, {"p": p})
    g = eqsat.Graph()
    with pytest.raises(ShapeError, match="p must be a positive integer"):
        g.op("LpPool", g.input("x", (1, 2, 5, 5), np.float32), kernel_shape=[2, 2], p=0)
    with pytest.raises(ShapeError, match="kernel_shape has 1 entries, expected 2"):
        g.op("LpPool", g.input("y", (1, 2, 5, 5), np.float32), kernel_shape=[2])


# ------------------------------------------------------------------------------------- MaxUnpool
@pytest.mark.parametrize(
    ("shape", "attrs", "out"),
    [
        ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}, None),
        ((2, 3, 5, 7), {"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 3, 5, 7)),
        ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, None),
        ((1, 2, 10), {"kernel_shape": [3], "strides": [3]}, (1, 2, 10)),
    ],
    ids=["2d", "output-shape", "pads", "1d"],
)
def test_maxunpool_inverts_maxpool(shape: tuple, attrs: dict, out: tuple | None) -> None:
    x = RNG.standard_normal(shape).astype(F)
    names = ["p", "i", "s"] if out else ["p", "i"]
    nodes = [
        h.make_node("MaxPool", ["x"], ["p", "i"], **attrs),
        h.make_node("MaxUnpool", names, ["y"], **attrs),
    ]
    inputs = {"x": x, **({"s": np.array(out, np.int64)} if out else {})}
    run_both(nodes, inputs, ["y"])


def test_maxunpool_refuses_bad_inputs() -> None:
    g = eqsat.Graph()
    x = g.input("x", (1, 1, 2, 2), np.float32)
    with pytest.raises(ShapeError, match="I must be int64 of X's shape"):
        g.op("MaxUnpool", x, g.input("i", (1, 1, 2, 2), np.int32), kernel_shape=[2, 2])
    i = g.input("i64", (1, 1, 2, 2), np.int64)
    with pytest.raises(ShapeError, match=r"output_shape \[1, 2, 4, 4\] must be \[1, 1\]"):
        g.op("MaxUnpool", x, i, g.constant(np.array([1, 2, 4, 4])), kernel_shape=[2, 2])
    g = eqsat.Graph()
    x, i = g.input("x", (1, 1, 2, 2), np.float32), g.input("i64", (1, 1, 2, 2), np.int64)
    g.output(g.op("MaxUnpool", x, i, kernel_shape=[2, 2], strides=[2, 2]), "y")
    run = eqsat.compile(g, "numpy").run
    with pytest.raises(eqsat.EqsatError, match=r"indices must be in \[0, 16\)"):
        run({"x": np.ones((1, 1, 2, 2), F), "i64": np.array([0, 3, 9, 16]).reshape(1, 1, 2, 2)})


# ---------------------------------------------------------------------------------------- Col2Im
@pytest.mark.parametrize(
    ("image", "block", "attrs"),
    [
        ([5, 5], [2, 2], {}),
        ([6, 7], [3, 2], {"strides": [2, 1], "pads": [1, 0, 1, 1]}),
        ([9, 8], [2, 3], {"dilations": [2, 2], "strides": [1, 2]}),
        ([4, 3, 5], [2, 2, 2], {}),
    ],
    ids=["plain", "strides-pads", "dilations", "3d"],
)
def test_col2im(image: list, block: list, attrs: dict) -> None:
    n = len(image)
    strides = attrs.get("strides", [1] * n)
    dil = attrs.get("dilations", [1] * n)
    pads = attrs.get("pads", [0] * 2 * n)
    blocks = 1
    for a in range(n):
        span = (block[a] - 1) * dil[a] + 1
        blocks *= (image[a] + pads[a] + pads[a + n] - span) // strides[a] + 1
    k = int(np.prod(block))
    inputs = {"x": RNG.standard_normal((2, 3 * k, blocks)).astype(F),
              "img": np.array(image, np.int64), "blk": np.array(block, np.int64)}  # fmt: skip
    one("Col2Im", inputs, attrs)
    g = eqsat.Graph()
    with pytest.raises(ShapeError, match="input must be N x"):
        g.op("Col2Im", g.input("x", (2, 3 * k, blocks + 1), np.float32),
             g.constant(inputs["img"]), g.constant(inputs["blk"]), **attrs)  # fmt: skip


def test_export_round_trips() -> None:
    """to_onnx writes these ops (and a run-time tail holding them) back; onnxruntime agrees."""
    x = RNG.standard_normal((3, 5)).astype(F)
    check_one_node("Compress", {"x": x, "c": RNG.random(5) > 0.5}, {"axis": 1}, consts=("c",))
    check_one_node("Compress", {"x": x, "c": RNG.random(15) > 0.5})  # in the tail
    check_one_node("Unique", {"x": np.array([[3, 1], [1, 2], [3, 1]])}, {"axis": 0}, outputs=4)
    check_one_node("LpPool", {"x": RNG.standard_normal((1, 2, 5, 5)).astype(F)},
                   {"kernel_shape": [2, 2], "p": 1})  # fmt: skip
    check_one_node("BitShift", {"x": np.array([1, 2, 200], np.uint8), "s": np.array([1, 2, 3],
                   np.uint8)}, {"direction": "LEFT"})  # fmt: skip

"""TensorScatter (opset 24) and BitCast (opset 26) (:mod:`eqsat.ops.cache`) against onnxruntime on
both targets, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import eqsat
from eqsat.errors import InputError, ShapeError

ort = pytest.importorskip("onnxruntime")
F32 = np.float32


def _scatter_model(cache: tuple, update: tuple, indices: bool, **attrs: object) -> bytes:
    names = ["cache", "update"] + (["indices"] if indices else [])
    inputs = [
        helper.make_tensor_value_info("cache", TensorProto.FLOAT, cache),
        helper.make_tensor_value_info("update", TensorProto.FLOAT, update),
    ]
    if indices:
        inputs.append(helper.make_tensor_value_info("indices", TensorProto.INT64, (cache[0],)))
    node = helper.make_node("TensorScatter", names, ["present"], **attrs)
    graph = helper.make_graph(
        [node], "kv", inputs, [helper.make_tensor_value_info("present", TensorProto.FLOAT, None)]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)]).SerializeToString()


@pytest.mark.parametrize(
    ("cache", "update", "attrs", "starts"),
    [
        ((2, 3, 8, 4), (2, 3, 1, 4), {}, [3, 7]),  # one new token per sequence
        ((2, 3, 8, 4), (2, 3, 3, 4), {}, [0, 5]),  # a prompt of three
        ((2, 3, 8, 4), (2, 3, 3, 4), {"mode": "circular"}, [6, 7]),  # wraps around
        ((2, 8, 3, 4), (2, 2, 3, 4), {"axis": 1}, None),  # sequence on axis 1, from 0
    ],
    ids=["decode", "prefill", "circular", "axis1-no-indices"],
)
def test_tensor_scatter_matches_onnxruntime(
    cache: tuple, update: tuple, attrs: dict, starts: list | None
) -> None:
    model = _scatter_model(cache, update, starts is not None, **attrs)
    rng = np.random.default_rng(0)
    feeds = {"cache": rng.standard_normal(cache).astype(F32)}
    feeds["update"] = rng.standard_normal(update).astype(F32)
    if starts is not None:
        feeds["indices"] = np.array(starts, np.int64)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for target in ("numpy", "cpu"):
        got = eqsat.compile(eqsat.load(model), target=target).run(feeds)["present"]
        np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(got, feeds["cache"])  # past_cache itself is left alone


def test_tensor_scatter_refusals() -> None:
    model = _scatter_model((2, 3, 8, 4), (2, 3, 2, 4), True)
    feeds = {"cache": np.zeros((2, 3, 8, 4), F32), "update": np.ones((2, 3, 2, 4), F32)}
    for target in ("numpy", "cpu"):
        exe = eqsat.compile(eqsat.load(model), target=target)
        with pytest.raises(InputError, match=r"TensorScatter.*run past the cache's 8 positions"):
            exe.run({**feeds, "indices": np.array([0, 7], np.int64)})
    g = eqsat.Graph("kv")
    cache = g.input("cache", (2, 3, 8, 4))
    with pytest.raises(ShapeError, match="does not fit past_cache"):
        g.op("TensorScatter", cache, g.input("big", (2, 3, 9, 4)), name="ts")
    with pytest.raises(ShapeError, match="batch axis"):
        g.op("TensorScatter", cache, g.input("u", (1, 3, 8, 4)), axis=0, name="ts0")
    with pytest.raises(ShapeError, match="mode must be one of"):
        g.op("TensorScatter", cache, g.input("u2", (2, 3, 1, 4)), mode="ring", name="ts1")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (np.float32, TensorProto.INT32),
        (np.float16, TensorProto.UINT16),
        (np.int64, TensorProto.DOUBLE),
    ],
)
def test_bitcast_matches_onnxruntime(source: type, target: int) -> None:
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(source))
    node = helper.make_node("BitCast", ["x"], ["y"], to=target)
    graph = helper.make_graph(
        [node], "bits", [helper.make_tensor_value_info("x", tp, (3, 4))],
        [helper.make_tensor_value_info("y", target, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
    x = (np.random.default_rng(1).standard_normal((3, 4)) * 100).astype(source)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    for name in ("numpy", "cpu"):
        got = eqsat.compile(eqsat.load(model.SerializeToString()), target=name).run({"x": x})["y"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    g = eqsat.Graph("bits")
    with pytest.raises(ShapeError, match="types of one size"):
        g.op("BitCast", g.input("x", (3,), np.float32), to=TensorProto.INT64, name="bc")

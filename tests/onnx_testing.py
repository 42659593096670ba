"""Helpers for the ONNX tests: tiny ``onnx.helper`` models and the onnxruntime oracle.

:func:`check` loads a model with eqsat, runs it on the numpy target and compares every output with
onnxruntime run on the original model (graph optimizations off); then it exports the graph, runs
the checker with full shape inference and compares onnxruntime on the export too.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat

ort = pytest.importorskip("onnxruntime")

F = np.float32


def vi(name: str, shape: list[Any] | None, elem: int = T.FLOAT) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    opset: int = 21,
    **kwargs: Any,
) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    opsets = [h.make_opsetid("", opset)]
    ir = min(h.find_min_ir_version_for(opsets), 10) if opset <= 21 else 11
    return h.make_model(graph, opset_imports=opsets, ir_version=ir, **kwargs)


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def check(
    proto: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    input_shapes: dict | None = None,
    constants: dict | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> eqsat.Graph:
    """Load with eqsat, run on the numpy target and compare with onnxruntime; same for the export."""
    want = ort_run(proto, {**feeds, **(constants or {})})
    graph = eqsat.load(proto, input_shapes=input_shapes, constants=constants)
    got = eqsat.compile(graph).run(feeds)
    names = [o.name for o in proto.graph.output]
    assert list(got) == names
    for name, w in zip(names, want, strict=True):
        assert got[name].dtype == w.dtype, name
        np.testing.assert_allclose(got[name], w, rtol=rtol, atol=atol, err_msg=name)
    exported = eqsat.to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    again = ort_run(exported, feeds)
    for name, w, a in zip(names, want, again, strict=True):
        np.testing.assert_allclose(a, w, rtol=rtol, atol=atol, err_msg=f"exported {name}")
    return graph


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F)


def one_node_graph(
    op: str, arrays: Sequence[np.ndarray | None], const: Collection[int], n: int, **attrs: Any
) -> tuple[eqsat.Graph, tuple[eqsat.Value, ...], dict[str, np.ndarray]]:
    """A one-node eqsat graph: inputs at positions ``const`` are constants, the rest are fed.

    Returns the graph, the node's outputs and the feeds.
    """
    g = eqsat.Graph(op)
    values, feeds = [], {}
    for i, a in enumerate(arrays):
        if a is None:
            values.append(None)
        elif i in const:
            values.append(g.constant(a, f"c{i}"))
        else:
            values.append(g.input(f"in{i}", a.shape, a.dtype))
            feeds[f"in{i}"] = a
    result = g.op(op, *values, outputs=n, **attrs)
    results = result if isinstance(result, tuple) else (result,)
    for k, value in enumerate(results):
        g.output(value, f"out{k}")
    return g, results, feeds


# numpy dtype -> ONNX element type, for the inputs of one-node models
ELEM = {
    np.dtype(np.float32): T.FLOAT, np.dtype(np.float64): T.DOUBLE, np.dtype(np.float16): T.FLOAT16,
    np.dtype(np.int64): T.INT64, np.dtype(np.int32): T.INT32, np.dtype(np.int8): T.INT8,
    np.dtype(np.uint8): T.UINT8, np.dtype(bool): T.BOOL,
}  # fmt: skip


def check_one_node(
    op: str,
    inputs: dict[str, np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    *,
    consts: tuple[str, ...] = (),
    outputs: int = 1,
    opset: int = 21,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> eqsat.Graph:
    """Check ``op`` on ``inputs`` (``None`` = omitted) against onnxruntime with :func:`check`;
    ``consts`` are initializers (the inputs a shape depends on)."""
    names = [n if a is not None else "" for n, a in inputs.items()]
    outs = [f"y{i}" for i in range(outputs)]
    present = {n: a for n, a in inputs.items() if a is not None}
    proto = model(
        [h.make_node(op, names, outs, **(attrs or {}))],
        [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in present.items() if n not in consts],
        [onnx.ValueInfoProto(name=o) for o in outs],
        [init(n, a) for n, a in present.items() if n in consts],
        opset=opset,
    )
    feeds = {n: a for n, a in present.items() if n not in consts}
    return check(proto, feeds, rtol=rtol, atol=atol)

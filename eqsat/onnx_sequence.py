"""ONNX sequence operators at import time: a sequence is a list of the graph's values.

eqsat graphs hold tensors only. A sequence whose length and positions are known at load time
(TorchScript's lists, tf2onnx's TensorArrays inside an unrolled Loop) is therefore kept by the
importer as a Python list of values (:class:`SequenceValue`) and never reaches the graph:
SequenceConstruct, SequenceEmpty, SequenceInsert and SequenceErase build the list,
SplitToSequence cuts a tensor into one with a Split, SequenceAt and SequenceLength read it, and
ConcatFromSequence joins it back into a tensor with a Concat. A sequence read by any other
operator, given as a model input, or returned as a model output is refused by name, and so is a
position computed at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError
from eqsat.ir import Value
from eqsat.onnx_read import SEQUENCE_OPS, np_dtype


class SequenceValue:
    """A sequence value of the ONNX model: its tensors in order and their element type."""

    def __init__(self, items: list[Value], dtype: np.dtype):
        self.items = items
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"SequenceValue({len(self.items)} x {self.dtype})"


def import_sequence_op(
    importer: Any, node: onnx.NodeProto, name: str, scope: Any, inputs: list[Any]
) -> None:
    """Import sequence operator ``node`` (named ``name``, its ``inputs`` read by the importer)
    into ``scope``: its output is a :class:`SequenceValue` bound in the scope, or a graph value."""
    op, graph = node.op_type, scope.graph
    what = f"node {name!r} ({op})"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    seq = inputs[0] if inputs and isinstance(inputs[0], SequenceValue) else None
    if op in ("SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
              "ConcatFromSequence") and seq is None:  # fmt: skip
        raise ModelLoadError(f"{what}: its first input must be a sequence")
    if op == "SequenceEmpty":
        dtype = np_dtype(int(attrs.get("dtype", onnx.TensorProto.FLOAT)), what)
        result: Any = SequenceValue([], dtype)
    elif op == "SequenceConstruct":
        tensors = _tensors(inputs, what)
        if not tensors or len({v.dtype for v in tensors}) != 1:
            raise ShapeError(f"{what}: needs one or more tensors of one element type")
        result = SequenceValue(tensors, tensors[0].dtype)
    elif op == "SequenceInsert":
        (tensor,) = _tensors(inputs[1:2], what, 1)
        if tensor.dtype != seq.dtype:
            raise ShapeError(f"{what}: a {tensor.dtype} tensor into a sequence of {seq.dtype}")
        count = len(seq.items)
        at = _position(inputs[2] if len(inputs) > 2 else None, count, count + 1, (op, name))
        result = SequenceValue([*seq.items[:at], tensor, *seq.items[at:]], seq.dtype)
    elif op == "SequenceErase":
        count = len(seq.items)
        at = _position(inputs[1] if len(inputs) > 1 else None, count - 1, count, (op, name))
        result = SequenceValue(seq.items[:at] + seq.items[at + 1 :], seq.dtype)
    elif op == "SequenceAt":
        at = inputs[1] if len(inputs) > 1 else None
        result = seq.items[_position(at, None, len(seq.items), (op, name))]
    elif op == "SequenceLength":
        result = np.array(len(seq.items), np.int64)
    elif op == "SplitToSequence":
        result = _split(importer, graph, inputs, attrs, name, what)
    else:  # ConcatFromSequence
        result = _concat(importer, graph, seq, attrs, name, what)
    out = node.output[0]
    if isinstance(result, np.ndarray):
        importer._constant(scope, result, out)
    else:
        scope.names[out] = result


def is_known(value: Any) -> bool:
    """Whether ``value`` (a graph value or a :class:`SequenceValue`) is known at load time."""
    if isinstance(value, SequenceValue):
        return all(item.const is not None for item in value.items)
    return value is None or value.const is not None


def _tensors(values: list[Any], what: str, count: int | None = None) -> list[Value]:
    """``values``, which must be tensors (``count`` of them, when given)."""
    if count is not None and len(values) != count:
        raise ModelLoadError(f"{what}: expects {count} tensor input(s), got {len(values)}")
    if any(v is None or isinstance(v, SequenceValue) for v in values):
        raise ModelLoadError(f"{what}: expects tensors where it got a sequence or nothing")
    return list(values)


def _position(value: Value | None, default: int | None, count: int, where: tuple[str, str]) -> int:
    """A position in a sequence of ``count`` (negative from the end), known at load time;
    ``where`` is the node's (op, name)."""
    what = f"node {where[1]!r} ({where[0]})"
    if value is None:
        if default is None:
            raise ModelLoadError(f"{what}: its position input is missing")
        at = default
    elif value.const is None:
        op, name = where
        raise UnsupportedOperatorError([(op, name, "a sequence position computed at run time")])
    else:
        at = int(np.asarray(value.const).reshape(-1)[0])
    if not -count <= at < count:
        raise ShapeError(f"{what}: position {at} is out of range for {count} place(s)")
    return at % count


def _split(importer: Any, graph: Any, inputs: list[Any], attrs: dict[str, Any], name: str,
           what: str) -> SequenceValue:  # fmt: skip
    (x,) = _tensors(inputs[:1], what, 1)
    axis = int(attrs.get("axis", 0))
    if not -x.rank <= axis < x.rank:
        raise ShapeError(f"{what}: axis {axis} is out of range for rank {x.rank}")
    axis %= x.rank
    length = x.shape[axis]
    split = inputs[1] if len(inputs) > 1 else None
    if split is not None and split.const is None:
        raise UnsupportedOperatorError(
            [("SplitToSequence", name, "split sizes computed at run time")]
        )
    if split is None:
        sizes = [1] * length
    elif np.asarray(split.const).ndim == 0:
        step = int(split.const)
        if step <= 0:
            raise ShapeError(f"{what}: split size {step} must be positive")
        sizes = [min(step, length - a) for a in range(0, length, step)]
    else:
        sizes = [int(s) for s in np.asarray(split.const).reshape(-1)]
    if sum(sizes) != length or any(s < 0 for s in sizes):
        raise ShapeError(f"{what}: split sizes {sizes} do not add up to {length}")
    squeeze = split is None and not int(attrs.get("keepdims", 1))
    fresh = importer.fresh
    names = [fresh(graph, f"{name}_{i}") for i in range(len(sizes))]
    if len(sizes) == 1:
        parts = [x]
    else:
        at = graph.constant(np.asarray(sizes, np.int64), fresh(graph, f"{name}_sizes"))
        parts = graph.add_node("Split", [x, at], names, {"axis": axis}).outputs
    if squeeze:
        axes = graph.constant(np.array([axis], np.int64), fresh(graph, f"{name}_axis"))
        parts = [
            graph.add_node("Squeeze", [p, axes], [fresh(graph, f"{name}_item")]).outputs[0]
            for p in parts
        ]
    return SequenceValue(list(parts), x.dtype)


def _concat(importer: Any, graph: Any, seq: SequenceValue, attrs: dict[str, Any], name: str,
            what: str) -> Value:  # fmt: skip
    if not seq.items:
        raise ShapeError(f"{what}: the sequence is empty")
    if "axis" not in attrs:
        raise ModelLoadError(f"{what}: required attribute 'axis' is missing")
    axis, stack = int(attrs["axis"]), bool(attrs.get("new_axis", 0))
    items = seq.items
    if stack:
        rank = items[0].rank + 1
        if not -rank <= axis < rank:
            raise ShapeError(f"{what}: axis {axis} is out of range for rank {rank}")
        axes = graph.constant(
            np.array([axis % rank], np.int64), importer.fresh(graph, f"{name}_axis")
        )
        items = [
            graph.add_node("Unsqueeze", [v, axes], [importer.fresh(graph, f"{name}_item")]).outputs[
                0
            ]
            for v in items
        ]
    out = importer.fresh(graph, name)
    return graph.add_node("Concat", items, [out], {"axis": axis}).outputs[0]


__all__ = ["SEQUENCE_OPS", "SequenceValue", "import_sequence_op", "is_known"]

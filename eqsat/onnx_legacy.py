"""Opsets 1-6: the node forms that ONNX changed at opset 7 or before, in their opset-7 meaning.

The ONNX Model Zoo still serves its classic CNNs (SqueezeNet, AlexNet, GoogLeNet, Inception,
DenseNet, ShuffleNet, ResNet-50 from Caffe2) at opsets 3 to 6. ``onnx.version_converter`` does
not upgrade them: it rejects the most common legacy node of all, ``Add(x, b, broadcast=1,
axis=1)``. The importer therefore calls :func:`legacy` on every node whose schema predates
opset 7, before :func:`eqsat.onnx_upgrade.upgrade` brings it the rest of the way:

* binary ops broadcast only with ``broadcast=1``, the second operand aligned with the first from
  dimension ``axis`` (``b[C]`` against ``x[N, C, H, W]`` at axis 1 is ``b[C, 1, 1]``); without
  ``axis`` the shapes match from the end, as numpy's do;
* PRelu's slope is one value per channel (dimension 1), not per trailing element;
* Reshape-1 takes its shape as an attribute; Concat-1 defaults to axis 1; Cast-1 names its type
  with a string; Pad-1 calls its pads ``paddings``; Tile-1 repeats ``tiles`` times along ``axis``;
  Upsample-1 has ``height_scale`` and ``width_scale`` and upper-case modes.

Attributes that meant nothing at inference (``consumed_inputs``, ``is_test``) are dropped by
:data:`eqsat.onnx_upgrade.LEGACY_ATTRS` afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto

from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError
from eqsat.ir import Graph, Value

# Binary ops whose opset-7 version replaced the broadcast/axis attributes by numpy broadcasting.
BROADCAST_BEFORE_7 = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less"}
)
Namer = Callable[[str], str]


class Legacy:
    """A node's inputs and attributes rewritten to opset 7."""

    def __init__(self, inputs: list[Value | None], attrs: dict[str, Any]):
        self.inputs = list(inputs)
        self.attrs = dict(attrs)


def legacy(graph: Graph, op: str, version: int, out: Legacy, node: str, fresh: Namer) -> Legacy:
    """``out``, the inputs and attributes of ``op`` at schema ``version`` (< 7), rewritten in place
    to their opset-7 form; returned for convenience."""
    if op in BROADCAST_BEFORE_7:
        _aligned_broadcast(graph, out, node, fresh)
    elif op == "PRelu":
        _channel_slope(graph, out, node, fresh)
    elif op == "Reshape" and version < 5 and "shape" in out.attrs:
        shape = np.asarray(out.attrs.pop("shape"), np.int64)
        out.inputs = [out.inputs[0], graph.constant(shape, fresh(f"{node}_shape"))]
    elif op == "Concat" and version < 4:
        out.attrs.setdefault("axis", 1)
    elif op == "Cast" and version < 6 and isinstance(out.attrs.get("to"), (str, bytes)):
        out.attrs["to"] = _type_code(out.attrs["to"], node)
    elif op == "Pad" and version < 2 and "paddings" in out.attrs:
        out.attrs["pads"] = out.attrs.pop("paddings")
    elif op == "Tile" and version < 6:
        _tile_along_axis(graph, out, node, fresh)
    elif op == "Upsample" and version < 7:
        _upsample_1(out, node)
    return out


def _aligned_broadcast(graph: Graph, out: Legacy, node: str, fresh: Namer) -> None:
    broadcast = int(out.attrs.pop("broadcast", 0))
    axis = out.attrs.pop("axis", None)
    a, b = [*out.inputs, None, None][:2]
    if not broadcast or axis is None or a is None or b is None:
        return  # equal shapes, or suffix matching: numpy broadcasting means the same
    axis = int(axis) + (a.rank if int(axis) < 0 else 0)
    trailing = a.rank - axis - b.rank
    if (
        axis < 0
        or trailing < 0
        or any(d not in (1, e) for d, e in zip(b.shape, a.shape[axis:], strict=False))
    ):
        raise ShapeError(
            f"node {node!r}: operand of shape {b.shape} cannot be aligned with {a.shape} "
            f"from axis {axis} (legacy broadcast)"
        )
    out.inputs[1] = _reshaped(graph, b, (*b.shape, *([1] * trailing)), node, fresh)


def _channel_slope(graph: Graph, out: Legacy, node: str, fresh: Namer) -> None:
    x, slope = [*out.inputs, None, None][:2]
    if x is None or slope is None or x.rank < 3 or slope.rank != 1 or slope.size == 1:
        return
    if slope.shape[0] != x.shape[1]:
        raise ShapeError(
            f"node {node!r} (PRelu): {slope.shape[0]} slopes for {x.shape[1]} channels"
        )
    out.inputs[1] = _reshaped(graph, slope, (slope.shape[0], *[1] * (x.rank - 2)), node, fresh)


def _reshaped(graph: Graph, value: Value, shape: tuple[int, ...], node: str, fresh: Namer) -> Value:
    """``value`` with ``shape``: a new constant when it is one, else the output of a Reshape
    added ahead of the node."""
    if tuple(value.shape) == tuple(shape):
        return value
    if value.const is not None:
        return graph.constant(np.reshape(value.const, shape), fresh(f"{node}_aligned"))
    target = graph.constant(np.asarray(shape, np.int64), fresh(f"{node}_aligned_shape"))
    reshape = graph.add_node(
        "Reshape", [value, target], [fresh(f"{node}_aligned")], name=fresh(f"{node}_align")
    )
    return reshape.outputs[0]


def _type_code(name: str | bytes, node: str) -> int:
    text = name.decode() if isinstance(name, bytes) else name
    try:
        return int(TensorProto.DataType.Value(text.upper()))
    except ValueError:
        raise ModelLoadError(f"node {node!r} (Cast): unknown type name {text!r}") from None


def _tile_along_axis(graph: Graph, out: Legacy, node: str, fresh: Namer) -> None:
    x, tiles, axis = [*out.inputs, None, None, None][:3]
    if x is None or tiles is None or axis is None:
        raise ModelLoadError(f"node {node!r} (Tile-1): needs input, tiles and axis")
    if tiles.const is None or axis.const is None:
        raise UnsupportedOperatorError([("Tile", node, "tiles or axis computed at run time")])
    where = int(np.asarray(axis.const).reshape(-1)[0])
    repeats = np.ones(x.rank, np.int64)
    repeats[where % x.rank] = int(np.asarray(tiles.const).reshape(-1)[0])
    out.inputs = [x, graph.constant(repeats, fresh(f"{node}_repeats"))]


def _upsample_1(out: Legacy, node: str) -> None:
    height = out.attrs.pop("height_scale", None)
    width = out.attrs.pop("width_scale", None)
    if height is None or width is None:
        raise ModelLoadError(f"node {node!r} (Upsample-1): height_scale and width_scale needed")
    out.attrs["scales"] = [1.0, 1.0, float(height), float(width)]
    mode = str(out.attrs.get("mode", "NN"))
    out.attrs["mode"] = {"NN": "nearest", "BILINEAR": "linear"}.get(mode.upper(), mode.lower())

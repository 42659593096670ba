"""Rewrites of older-opset ONNX nodes into the opset-21 forms the IR speaks.

Nodes of opsets 1-6 first go through :mod:`eqsat.onnx_legacy` (the broadcasting and attribute
forms ONNX changed at opset 7 or before).

ONNX moved several attributes to inputs over the years (axes of Squeeze/Unsqueeze/Reduce*, Split's
sizes, Clip's bounds, Pad's pads, TopK's k, Slice's starts/ends), renamed ops (Scatter became
ScatterElements, Upsample became Resize) and changed meanings (Softmax at opset 13 normalizes one
axis instead of all trailing ones; GroupNormalization at opset 21 scales per channel instead of per
group). The importer calls :func:`upgrade` on every node with the version of the op's schema that
the model's opset selects; it returns the op, inputs and attributes in today's form, adding
constants (and, where one node becomes several, the extra nodes) to the graph as needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import ModelLoadError, ShapeError, UnsupportedOperatorError
from eqsat.ir import Graph, Value
from eqsat.onnx_legacy import Legacy, legacy

REDUCE_AXES_MOVED_AT = {
    "ReduceSum": 13,
    **{
        op: 18
        for op in (
            "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
        )
    },
}  # fmt: skip

# Ops that older opsets spelled differently: the importer checks support under the new name.
RENAMED = {"Scatter": "ScatterElements", "Upsample": "Resize"}

# Attributes that older opsets had and that mean nothing (or their default) at inference.
LEGACY_ATTRS = {"consumed_inputs", "is_test", "spatial", "broadcast"}

Namer = Callable[[str], str]


class Upgraded:
    """The opset-21 form of one node: op, inputs and attrs.

    ``expand`` is set when the node becomes several nodes: the importer then calls
    ``expand(output_names)`` instead of adding one node.
    """

    def __init__(self, op: str, inputs: list[Value | None], attrs: dict[str, Any]):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.expand: Callable[[list[str | None]], None] | None = None


def upgrade(
    graph: Graph,
    op: str,
    version: int,
    inputs: list[Value | None],
    attrs: dict[str, Any],
    node: str,
    *,
    num_outputs: int = 1,
    namer: Namer | None = None,
) -> Upgraded:
    """Return ``op`` at schema ``version`` in its opset-21 form.

    ``num_outputs`` is the number of outputs the node declares (Split needs it); ``namer`` turns a
    name hint into a name that no value of the model uses, for the constants this adds.
    """
    fresh: Namer = namer or (lambda hint: hint)
    if version < 7:
        old = legacy(graph, op, version, Legacy(inputs, attrs), node, fresh)
        inputs, attrs = old.inputs, old.attrs
    per_activation = op == "BatchNormalization" and attrs.get("spatial", 1) == 0
    attrs = {k: v for k, v in attrs.items() if k not in LEGACY_ATTRS}
    up = Upgraded(RENAMED.get(op, op), list(inputs), attrs)
    if per_activation and num_outputs == 1:
        _batch_norm_per_activation(graph, up, node, fresh)
        return up

    def ints(values: Any, what: str) -> Value:
        return graph.constant(np.asarray(values, dtype=np.int64), fresh(f"{node}_{what}"))

    if op in ("Squeeze", "Unsqueeze") and version < 13 and "axes" in attrs:
        up.inputs = [inputs[0], ints(attrs.pop("axes"), "axes")]
    elif op in REDUCE_AXES_MOVED_AT and version < REDUCE_AXES_MOVED_AT[op]:
        axes = attrs.pop("axes", None)
        # Before the move, absent (or empty) axes meant all axes: an omitted input says the same.
        up.inputs = [inputs[0], ints(axes, "axes") if axes else None]
    elif op == "Split" and version < 18:
        if version < 13 and "split" in attrs:
            up.inputs = [inputs[0], ints(attrs.pop("split"), "split")]
        if len(up.inputs) < 2 or up.inputs[1] is None:
            # Equal parts, one per declared output; opset 18 spells that num_outputs.
            up.inputs = up.inputs[:1]
            attrs["num_outputs"] = num_outputs
    elif op in ("Softmax", "LogSoftmax", "Hardmax") and version < 13:
        _legacy_softmax(graph, up, node, fresh)
    elif op == "Clip" and version < 11:
        dtype = inputs[0].dtype if inputs[0] is not None else np.float32
        bounds = [attrs.pop("min", None), attrs.pop("max", None)]
        up.inputs = [inputs[0]] + [
            graph.constant(np.asarray(b, dtype), fresh(f"{node}_{what}")) if b is not None else None
            for b, what in zip(bounds, ("min", "max"), strict=True)
        ]
    elif op == "Pad" and version < 11:
        dtype = inputs[0].dtype if inputs[0] is not None else np.float32
        up.inputs = [
            inputs[0],
            ints(_required(attrs, "pads", op, node), "pads"),
            graph.constant(np.asarray(attrs.pop("value", 0.0), dtype), fresh(f"{node}_value")),
        ]
    elif op == "Slice" and version < 10:
        starts = _required(attrs, "starts", op, node)
        ends = _required(attrs, "ends", op, node)
        axes = attrs.pop("axes", None)
        up.inputs = [
            inputs[0],
            ints(starts, "starts"),
            ints(ends, "ends"),
            ints(axes, "axes") if axes is not None else None,
        ]
    elif op == "RoiAlign" and version < 16:
        # Opset 10 has no coordinate_transformation_mode and means "output_half_pixel".
        up.attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")
    elif op == "TopK" and version < 10:
        up.inputs = [inputs[0], ints([_required(attrs, "k", op, node)], "k")]
    elif op == "Dropout" and version < 12:
        attrs.pop("ratio", None)  # inference ignores it; from opset 12 on it is an input
        if num_outputs > 1 and inputs and inputs[0] is not None:
            _legacy_dropout_mask(graph, up, node)
    elif op == "ImageScaler":
        _image_scaler(graph, up, node, fresh)
    elif op == "Upsample" or (op == "Resize" and version < 11):
        _resize_10(graph, up, version, node, fresh)
    elif op == "Resize":
        _resize_11(up, node)
    elif op == "BatchNormalization" and version < 14 and num_outputs > 1:
        # Before opset 14 the extra outputs put the node in training mode (batch statistics).
        raise UnsupportedOperatorError(
            [(op, node, "training mode (opset < 14 with mean/var outputs uses batch statistics)")]
        )
    elif op == "GroupNormalization" and version < 21:
        _group_norm_18(graph, up, node, fresh)
    elif op == "DFT" and version < 20:
        # The axis moved from an attribute (default 1) to a third input at opset 20.
        axis = np.asarray(up.attrs.pop("axis", 1), np.int64)
        length = up.inputs[1] if len(up.inputs) > 1 else None
        up.inputs = [up.inputs[0], length, graph.constant(axis, fresh(f"{node}_axis"))]
    elif op == "GridSample" and version < 20:
        modes = {"bilinear": "linear", "bicubic": "cubic"}
        up.attrs["mode"] = modes.get(up.attrs.get("mode", "bilinear"), up.attrs.get("mode"))
    return up


def _required(attrs: dict[str, Any], key: str, op: str, node: str) -> Any:
    if key not in attrs:
        raise ModelLoadError(f"node {node!r} ({op}): required attribute {key!r} is missing")
    return attrs.pop(key)


def _legacy_softmax(graph: Graph, up: Upgraded, node: str, fresh: Namer) -> None:
    """Before opset 13, Softmax normalizes over all axes from ``axis`` on, as one flattened axis.

    When ``axis`` is the last axis both meanings agree and the node stays as it is; otherwise it
    becomes Flatten -> Softmax(axis=-1) -> Reshape back.
    """
    x = up.inputs[0]
    axis = int(up.attrs.pop("axis", 1))
    if x is None:
        return
    rank = x.rank
    if rank == 0 or (-rank <= axis < rank and axis % rank == rank - 1):
        up.attrs["axis"] = -1 if rank else 0
        return
    if not -rank <= axis < rank:
        up.attrs["axis"] = axis  # out of range: the Softmax shape rule reports it, naming the node
        return
    op, shape = up.op, x.shape

    def expand(outputs: list[str | None]) -> None:
        flat = graph.add_node(
            "Flatten", [x], [fresh(f"{node}_flat")], {"axis": axis}, name=f"{node}_flatten"
        )
        soft = graph.add_node(op, [flat.outputs[0]], [fresh(f"{node}_2d")], {"axis": -1}, name=node)
        target = graph.constant(np.asarray(shape, np.int64), fresh(f"{node}_shape"))
        graph.add_node("Reshape", [soft.outputs[0], target], outputs[:1], name=f"{node}_reshape")

    up.expand = expand


def _batch_norm_per_activation(graph: Graph, up: Upgraded, node: str, fresh: Namer) -> None:
    """BatchNormalization with spatial=0 (opsets 1-8): statistics and parameters per activation,
    of shape (C, D1, ...), not per channel. At inference that is ``x * a + b`` with
    ``a = scale / sqrt(var + epsilon)`` and ``b = bias - mean * a``, each broadcast over the batch;
    with constant parameters both fold at load."""
    x, *params = [*up.inputs, None, None, None, None][:5]
    if x is None or any(p is None for p in params):
        raise ShapeError(f"BatchNormalization {node!r}: needs X, scale, B, mean and var")
    if any(tuple(p.shape) != tuple(x.shape[1:]) for p in params):
        shapes = [tuple(p.shape) for p in params]
        raise ShapeError(
            f"BatchNormalization {node!r} (spatial=0): scale, B, mean and var must have the "
            f"shape {tuple(x.shape[1:])} of one activation, got {shapes}"
        )
    scale, bias, mean, var = params
    epsilon = graph.constant(
        np.asarray(up.attrs.get("epsilon", 1e-5), x.dtype), fresh(f"{node}_epsilon")
    )

    def expand(outputs: list[str | None]) -> None:
        def add(op: str, inputs: list[Value], out: str | None = None) -> Value:
            name = out or fresh(f"{node}_{op.lower()}")
            return graph.add_node(op, inputs, [name], name=fresh(f"{node}_{op.lower()}")).outputs[0]

        a = add("Div", [scale, add("Sqrt", [add("Add", [var, epsilon])])])
        b = add("Sub", [bias, add("Mul", [mean, a])])
        add("Add", [add("Mul", [x, a]), b], outputs[0])

    up.expand = expand


def _image_scaler(graph: Graph, up: Upgraded, node: str, fresh: Namer) -> None:
    """ImageScaler (an experimental op of opsets 1-9, in Tiny YOLOv2 and other Model Zoo files):
    ``x * scale + bias[c]``, written as the Mul and Add that the fusion rules know."""
    x = up.inputs[0] if up.inputs else None
    if x is None or x.rank < 2:
        raise ShapeError(f"ImageScaler {node!r}: input must be N x C x ..., got {x!r}")
    bias = np.asarray(up.attrs.get("bias", [0.0] * x.shape[1]), np.float64)
    if bias.size != x.shape[1]:
        raise ShapeError(
            f"ImageScaler {node!r}: bias has {bias.size} values for {x.shape[1]} channels"
        )
    scale = graph.constant(np.asarray(up.attrs.get("scale", 1.0), x.dtype), fresh(f"{node}_scale"))
    shaped = bias.astype(x.dtype).reshape((1, -1) + (1,) * (x.rank - 2))
    offset = graph.constant(shaped, fresh(f"{node}_bias"))

    def expand(outputs: list[str | None]) -> None:
        scaled = graph.add_node("Mul", [x, scale], [fresh(f"{node}_scaled")]).outputs[0]
        graph.add_node("Add", [scaled, offset], outputs[:1], name=node)

    up.expand = expand


def _legacy_dropout_mask(graph: Graph, up: Upgraded, node: str) -> None:
    """Before opset 12 onnxruntime returns an all-false mask at inference (opset 12 on: all true)."""
    x = up.inputs[0]
    assert x is not None

    def expand(outputs: list[str | None]) -> None:
        graph.add_node("Identity", [x], outputs[:1], name=node)
        if len(outputs) > 1 and outputs[1]:
            graph.constant(np.zeros(x.shape, np.bool_), outputs[1])

    up.expand = expand


def _nearest_10(scales: Value | None) -> str:
    """onnxruntime's opset<11 nearest rounding: floor when upsampling, ceil when downsampling."""
    if scales is not None and scales.const is not None:
        s = np.asarray(scales.const, np.float64).reshape(-1)
        if s.size and np.all(s <= 1) and np.any(s < 1):
            return "ceil"
    return "floor"


def _resize_10(graph: Graph, up: Upgraded, version: int, node: str, fresh: Namer) -> None:
    """Upsample (opset 1-9) and Resize-10 are Resize with asymmetric coordinates."""
    attrs, inputs = up.attrs, up.inputs
    mode = str(attrs.pop("mode", "nearest"))
    if up.op == "Resize" and "scales" in attrs and version < 9:  # Upsample-1/7: scales attribute
        values = np.asarray(attrs.pop("scales"), np.float32)
        scales: Value | None = graph.constant(values, fresh(f"{node}_scales"))
    else:
        scales = inputs[1] if len(inputs) > 1 else None
    if mode == "bilinear":  # Upsample-7 spelling
        mode = "linear"
    resize_attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        resize_attrs["nearest_mode"] = _nearest_10(scales)
    up.op, up.inputs, up.attrs = "Resize", [inputs[0], None, scales], resize_attrs


def _empty_const(value: Value | None) -> bool:
    return value is not None and value.const is not None and value.size == 0


def _resize_11(up: Upgraded, node: str) -> None:
    """Opset 11 required roi and scales; models pass empty tensors for the unused ones."""
    inputs = up.inputs
    for i in (1, 2):
        if i < len(inputs) and _empty_const(inputs[i]):
            inputs[i] = None
    while inputs and inputs[-1] is None:
        inputs.pop()


def _group_norm_18(graph: Graph, up: Upgraded, node: str, fresh: Namer) -> None:
    """GroupNormalization-18 had one scale and bias per group; opset 21 has one per channel."""
    groups = int(_required(up.attrs, "num_groups", "GroupNormalization", node))
    up.attrs["num_groups"] = groups
    x = up.inputs[0]
    if x is None or x.rank < 2 or groups <= 0 or x.shape[1] % groups:
        return  # the shape rule of GroupNormalization reports the problem
    per_group = x.shape[1] // groups
    for i in (1, 2):
        v = up.inputs[i] if i < len(up.inputs) else None
        if v is None or v.shape != (groups,):
            continue
        if v.const is not None:
            up.inputs[i] = graph.constant(np.repeat(v.const, per_group), fresh(f"{node}_ch{i}"))
            continue
        # Unsqueeze to (G, 1), Expand to (G, C/G), Reshape to (C,): channel c uses group c // (C/G).
        axes = graph.constant(np.asarray([1], np.int64), fresh(f"{node}_axes{i}"))
        col = graph.add_node("Unsqueeze", [v, axes], [fresh(f"{node}_col{i}")]).outputs[0]
        size = graph.constant(np.asarray([groups, per_group], np.int64), fresh(f"{node}_sz{i}"))
        wide = graph.add_node("Expand", [col, size], [fresh(f"{node}_wide{i}")]).outputs[0]
        flat = graph.constant(np.asarray([x.shape[1]], np.int64), fresh(f"{node}_c{i}"))
        up.inputs[i] = graph.add_node("Reshape", [wide, flat], [fresh(f"{node}_chan{i}")]).outputs[
            0
        ]

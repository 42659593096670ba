"""Rewrites of older-opset ONNX nodes into the opset-21 forms the IR speaks.

ONNX moved several attributes to inputs over the years (axes of Squeeze/Unsqueeze/Reduce*, Split's
sizes, Clip's bounds, Pad's pads) and changed Softmax's meaning at opset 13. The importer calls
:func:`upgrade` on every node with the version of the op's schema that the model's opset selects;
it returns the op, inputs and attributes in today's form, adding constants to the graph as needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import UnsupportedOperatorError
from eqsat.ir import Graph, Value

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

# Attributes that older opsets had and that mean nothing (or their default) at inference.
LEGACY_ATTRS = {"consumed_inputs", "is_test", "spatial", "broadcast"}


class Upgraded:
    """The opset-21 form of one node: op, inputs, attrs, and any nodes to add before it."""

    def __init__(self, op: str, inputs: list[Value | None], attrs: dict[str, Any]):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        # Softmax at opset < 13 becomes Flatten -> Softmax -> Reshape; this holds the final shape.
        self.reshape_to: tuple[int, ...] | None = None


def _int_input(graph: Graph, values: Any, hint: str) -> Value:
    return graph.constant(np.asarray(values, dtype=np.int64), hint)


def upgrade(
    graph: Graph,
    op: str,
    version: int,
    inputs: list[Value | None],
    attrs: dict[str, Any],
    node: str,
) -> Upgraded:
    """Return ``op`` at schema ``version`` in its opset-21 form."""
    attrs = {k: v for k, v in attrs.items() if k not in LEGACY_ATTRS}
    up = Upgraded(op, list(inputs), attrs)
    if op in ("Squeeze", "Unsqueeze") and version < 13 and "axes" in attrs:
        up.inputs = [inputs[0], _int_input(graph, attrs.pop("axes"), f"{node}_axes")]
    elif op in REDUCE_AXES_MOVED_AT and version < REDUCE_AXES_MOVED_AT[op]:
        axes = attrs.pop("axes", None)
        up.inputs = [inputs[0], _int_input(graph, axes, f"{node}_axes") if axes else None]
    elif op == "Split" and version < 18:
        if version < 13 and "split" in attrs:
            up.inputs = [inputs[0], _int_input(graph, attrs.pop("split"), f"{node}_split")]
    elif op in ("Softmax", "LogSoftmax", "Hardmax") and version < 13:
        up.reshape_to = inputs[0].shape if inputs[0] is not None else None
    elif op == "Clip" and version < 11:
        dtype = inputs[0].dtype if inputs[0] is not None else np.float32
        bounds = [attrs.pop("min", None), attrs.pop("max", None)]
        up.inputs = [inputs[0]] + [
            graph.constant(np.asarray(b, dtype), f"{node}_bound") if b is not None else None
            for b in bounds
        ]
    elif op == "Pad" and version < 11:
        dtype = inputs[0].dtype if inputs[0] is not None else np.float32
        up.inputs = [
            inputs[0],
            _int_input(graph, attrs.pop("pads"), f"{node}_pads"),
            graph.constant(np.asarray(attrs.pop("value", 0.0), dtype), f"{node}_value"),
        ]
    elif op == "Slice" and version < 10:
        starts, ends = attrs.pop("starts"), attrs.pop("ends")
        axes = attrs.pop("axes", None)
        up.inputs = [
            inputs[0],
            _int_input(graph, starts, f"{node}_starts"),
            _int_input(graph, ends, f"{node}_ends"),
            _int_input(graph, axes, f"{node}_axes") if axes is not None else None,
        ]
    elif op == "Dropout" and version < 12:
        attrs.pop("ratio", None)
    elif op == "Upsample":
        up = _upsample(graph, inputs, attrs, version, node)
    elif op == "Resize" and version < 11:
        up.inputs = [inputs[0], None, inputs[1]]
        up.attrs = {
            "mode": attrs.get("mode", "nearest"),
            "coordinate_transformation_mode": "asymmetric",
        }
        if up.attrs["mode"] == "nearest":
            up.attrs["nearest_mode"] = "floor"
    elif op == "Resize" and attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        raise UnsupportedOperatorError(
            [(op, node, "coordinate_transformation_mode 'tf_half_pixel_for_nn' (opset 11 only)")]
        )
    return up


def _upsample(
    graph: Graph, inputs: list[Value | None], attrs: dict[str, Any], version: int, node: str
) -> Upgraded:
    mode = attrs.get("mode", "nearest")
    if version < 9:
        scales = graph.constant(np.asarray(attrs["scales"], np.float32), f"{node}_scales")
    else:
        scales = inputs[1]
    resize_attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        resize_attrs["nearest_mode"] = "floor"
    return Upgraded("Resize", [inputs[0], None, scales], resize_attrs)

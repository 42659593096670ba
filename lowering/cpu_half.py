"""float16 graphs on the CPU target: computed in float32, rounded to float16 where the model says.

The CPU has no float16 arithmetic worth using (and the generated kernels, BLAS and the conv paths
are float32/float64), so a model exported in half precision ran every node on the numpy reference:
a 4-layer BERT in float16 ran 3.7x slower than onnxruntime. onnxruntime's CPU provider does what
this module does for the ops it has no float16 kernel for: it computes in float32 between casts.

:func:`widen` rewrites a graph whose tensors are float16 so that they are float32 inside: float16
inputs are cast up once, float16 constants converted at compile time, and outputs cast back down.
Every conversion the model asks for keeps its rounding: a ``Cast`` to float16 (or a ``CastLike``
of a float16 tensor, or any op whose attributes make a float16 output) is computed as such and
then widened again, so values are rounded to float16 exactly where the model rounds them. Between
those points results are the float32 computation of the same ops, which is at least as accurate
as float16 arithmetic (and what onnxruntime computes there).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from eqsat.errors import EqsatError
from eqsat.ir import Graph, Node, Value, subgraphs

HALF = np.dtype(np.float16)
WIDE = np.dtype(np.float32)


# Ops that only move or select values: in float16 they run as they are (copies and views), and
# widening a graph of nothing else would only add casts.
MOVES = frozenset(
    {
        "Cast", "CastLike", "Concat", "DepthToSpace", "Expand", "Flatten", "Gather",
        "GatherElements", "GatherND", "Identity", "Pad", "Reshape", "Shape", "Size", "Slice",
        "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze",
    }
)  # fmt: skip


def has_half(graph: Graph) -> bool:
    """Whether ``graph`` computes on float16 tensors (not only moves them, see :data:`MOVES`)."""
    return any(
        v is not None and v.dtype == HALF
        for n in graph.nodes
        if n.op not in MOVES
        for v in (*n.inputs, *n.outputs)
    )


def widen(graph: Graph) -> Graph:
    """``graph`` computed in float32 between its float16 inputs, outputs and casts (see the
    module docstring); ``graph`` itself when it computes nothing in float16 or has control flow
    (If branches would need the same rewrite inside)."""
    if not has_half(graph) or any(subgraphs(n) for n in graph.nodes):
        return graph
    try:
        return _Widener(graph).run()
    except EqsatError:
        # An op whose dtype rule refuses the widened inputs: the graph runs as it is (in
        # float16, on the reference where no kernel takes it) rather than not at all.
        return graph


class _Widener:
    def __init__(self, graph: Graph):
        self.old = graph
        self.new = Graph(graph.name)
        self.new.opset = graph.opset
        self.map: dict[int, Value] = {}
        # Graph outputs that are float16 get their name back on the final narrowing cast.
        self.narrowed = {id(v) for v in graph.outputs if v.dtype == HALF}

    def run(self) -> Graph:
        for v in self.old.inputs:
            self.map[id(v)] = self._input(v)
        for node in self.old.nodes:
            self._node(node)
        for v in self.old.outputs:
            value = self._get(v)
            if v.dtype == HALF:
                value = self._cast(value, TensorProto.FLOAT16, v.name)
            self.new.output(value)
        return self.new

    def _get(self, v: Value) -> Value:
        if id(v) not in self.map:
            if v.const is None:
                raise EqsatError(f"value {v.name!r} is read before it is made")
            self.map[id(v)] = self._input(v)  # constants are made where first read
        return self.map[id(v)]

    def _input(self, v: Value) -> Value:
        if v.const is not None:
            array = v.const.astype(WIDE) if v.dtype == HALF else v.const
            return self.new.constant(array, v.name)
        value = self.new.input(v.name, v.shape, v.dtype)
        return self._cast(value, TensorProto.FLOAT) if v.dtype == HALF else value

    def _cast(self, value: Value, to: int, name: str | None = None) -> Value:
        outputs = [name] if name else 1
        return self.new.op("Cast", value, to=int(to), outputs=outputs)

    def _node(self, node: Node) -> None:
        inputs = [None if v is None else self._get(v) for v in node.inputs]
        op, attrs = node.op, dict(node.attrs)
        if op == "CastLike" and node.outputs[0] is not None and node.outputs[0].dtype == HALF:
            # The widened "like" tensor is float32: cast to what the model names instead.
            op, inputs, attrs = "Cast", inputs[:1], {"to": TensorProto.FLOAT16}
        if attrs.get("dtype") == HALF.name:  # a fused kernel's result type
            attrs["dtype"] = WIDE.name
        # "" omits an output; None takes a fresh name (a float16 graph output's name goes to the
        # cast that narrows it at the end).
        names = [
            "" if v is None else None if id(v) in self.narrowed else v.name for v in node.outputs
        ]
        made = self.new.add_node(op, inputs, names, attrs, name=node.name, domain=node.domain)
        for old, new in zip(node.outputs, made.outputs, strict=True):
            if old is None:
                continue
            if new is None:
                raise EqsatError(f"node {node.name!r} ({node.op}) lost an output when widened")
            if new.dtype == HALF:
                new = self._cast(new, TensorProto.FLOAT)
            expected = WIDE if old.dtype == HALF else old.dtype
            if new.dtype != expected or new.shape != old.shape:
                raise EqsatError(
                    f"node {node.name!r} ({node.op}): widened output is {new.dtype} "
                    f"{new.shape}, expected {expected} {old.shape}"
                )
            self.map[id(old)] = new

"""The graph IR: values with static shape and dtype, nodes with an op and attributes, constants.

A :class:`Graph` is what every part of eqsat passes around: the ONNX importer produces one, the
e-graph encoder reads one, extraction decodes into one and the lowering targets compile one.
Shapes are fully static (the importer specializes symbolic dimensions); a value whose content is
known at compile time carries it in ``Value.const`` (initializers, bound inputs, folded subgraphs).

Graphs can be built directly in Python::

    g = Graph("mlp")
    x = g.input("x", (1, 784))
    w = g.constant(np.ones((784, 10), np.float32), "w")
    y = g.op("Relu", g.op("MatMul", x, w))
    g.output(y, "y")

Every ``g.op`` call checks the op's inputs and infers its outputs' shapes and dtypes at once, so a
mistake is reported at the node that makes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqsat.errors import EqsatError, ShapeError, UnsupportedOperatorError

Shape = tuple[int, ...]

# Constant folding evaluates nodes at build time; above this many output elements it is skipped so
# that a ConstantOfShape or Tile of a huge tensor does not bloat the model or the build.
FOLD_LIMIT_ELEMENTS = 1 << 24


@dataclass(eq=False)
class Value:
    """One tensor in the graph. ``const`` holds its content when known at compile time."""

    name: str
    shape: Shape
    dtype: np.dtype
    const: np.ndarray | None = None
    producer: Node | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        # math.prod: np.prod costs ~20 us a call, and pricing an e-graph asks tens of thousands.
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def __repr__(self) -> str:
        kind = " const" if self.const is not None else ""
        return f"Value({self.name!r}, {self.shape}, {self.dtype}{kind})"


@dataclass(eq=False)
class Node:
    """One operator application. Missing optional inputs/outputs are ``None``."""

    op: str
    inputs: list[Value | None]
    outputs: list[Value | None]
    attrs: dict[str, Any]
    name: str
    domain: str = ""

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v is not None else "-" for v in self.inputs)
        outs = ", ".join(v.name if v is not None else "-" for v in self.outputs)
        return f"Node({self.name!r}: {self.op}({ins}) -> {outs})"


def as_dtype(dtype: Any) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise ShapeError(f"not a dtype: {dtype!r}") from exc


def tensor_dtype(dtype: Any, what: str) -> np.dtype:
    """``dtype`` when a tensor of the IR may have it, else a ShapeError.

    Numbers and bools are; strings, objects, dates and plain void records are not. (Extension
    float types such as ml_dtypes' bfloat16 pass here; the ops that cannot take them say so.)
    """
    result = as_dtype(dtype)
    if result.kind in "OSUMm" or result.type is np.void:
        raise ShapeError(f"{what}: dtype {result} is not supported (numbers and bools only)")
    return result


class Graph:
    """A static-shape dataflow graph. ``nodes`` is kept in topological order."""

    def __init__(self, name: str = "graph", *, outer: Graph | None = None):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        # Subgraphs (If branches) may read values of the enclosing graph by name.
        self.outer = outer
        self.opset = 21
        # The data-dependent rest of a loaded model (:class:`eqsat.tail.RuntimeTail`), or None.
        self.tail: Any = None
        self._names = itertools.count()
        # Node names handed out so far; nodes may also be added to (or dropped from) ``nodes``
        # directly, so fresh_node_name checks the list whenever the two disagree in size.
        self._node_names: set[str] = set()

    # ----------------------------------------------------------------- names and lookup
    def fresh_name(self, hint: str) -> str:
        name = hint
        while self.lookup(name) is not None:
            name = f"{hint}_{next(self._names)}"
        return name

    def lookup(self, name: str) -> Value | None:
        graph: Graph | None = self
        while graph is not None:
            if name in graph.values:
                return graph.values[name]
            graph = graph.outer
        return None

    def __getitem__(self, name: str) -> Value:
        value = self.lookup(name)
        if value is None:
            raise KeyError(f"graph {self.name!r} has no value named {name!r}")
        return value

    def _register(self, value: Value) -> Value:
        if value.name in self.values:
            raise EqsatError(f"graph {self.name!r} already has a value named {value.name!r}")
        self.values[value.name] = value
        return value

    @property
    def initializers(self) -> dict[str, np.ndarray]:
        """Constants that no node produces: weights, bound inputs and folded results."""
        return {
            v.name: v.const
            for v in self.values.values()
            if v.const is not None and v.producer is None and v not in self.inputs
        }

    # ----------------------------------------------------------------- builder API
    def input(self, name: str, shape: Sequence[int], dtype: Any = np.float32) -> Value:
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ShapeError(
                f"input {name!r}: shape must be a sequence of ints, got {shape!r}"
            ) from None
        if any(d < 0 for d in shape):
            raise ShapeError(f"input {name!r}: negative dimension in {shape}")
        value = self._register(Value(name, shape, tensor_dtype(dtype, f"input {name!r}")))
        self.inputs.append(value)
        return value

    def constant(self, array: Any, name: str | None = None) -> Value:
        array = np.asarray(array)
        tensor_dtype(array.dtype, f"constant {name or 'const'!r}")
        value = Value(self.fresh_name(name or "const"), tuple(array.shape), array.dtype, array)
        return self._register(value)

    def output(self, value: Value, name: str | None = None) -> Value:
        if name is not None and name != value.name:
            value = self.op("Identity", value, outputs=[name])
        self.outputs.append(value)
        return value

    def op(
        self,
        op: str,
        *inputs: Value | None,
        outputs: int | Sequence[str] = 1,
        name: str | None = None,
        domain: str = "",
        **attrs: Any,
    ) -> Any:
        """Add a node; returns its output Value, or a tuple of them when it has several."""
        names = [None] * outputs if isinstance(outputs, int) else list(outputs)
        node = self.add_node(op, list(inputs), names, attrs, name=name, domain=domain)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        output_names: Sequence[str | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        domain: str = "",
        fold: bool = True,
    ) -> Node:
        """Add a node, inferring its outputs; folds it when all its inputs are constants."""
        from eqsat import ops  # the op table imports this module

        node_name = name or self.fresh_node_name(op)
        opdef = ops.get(op, node_name)
        full_attrs = opdef.complete_attrs(dict(attrs or {}), node_name)
        for v in inputs:
            if v is not None and self.lookup(v.name) is not v:
                raise EqsatError(
                    f"node {node_name!r} ({op}): input {v.name!r} is not in this graph"
                )
        opdef.check_arity(len(inputs), len(output_names), node_name)
        named = [n for n in output_names if n]
        taken = [n for n in named if n in self.values]
        if taken or len(set(named)) != len(named):
            clash = taken or sorted({n for n in named if named.count(n) > 1})
            raise EqsatError(
                f"node {node_name!r} ({op}): output name(s) {clash} are already used in graph "
                f"{self.name!r}"
            )
        try:
            types = list(opdef.infer(list(inputs), full_attrs, len(output_names)))
            kinds = [_check_type(kind) for kind in types]
        except UnsupportedOperatorError as exc:  # a variant the rule refuses: name the node
            raise UnsupportedOperatorError(
                [(o, node_name if n in ("?", "") else n, why) for o, n, why in exc.unsupported]
            ) from None
        except EqsatError as exc:
            raise type(exc)(f"node {node_name!r} ({op}): {exc}") from None
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            raise ShapeError(f"node {node_name!r} ({op}): {type(exc).__name__}: {exc}") from None
        if len(kinds) != len(output_names):
            raise ShapeError(
                f"node {node_name!r} ({op}): the shape rule gave {len(kinds)} output type(s) "
                f"for {len(output_names)} output(s)"
            )
        node = Node(op, list(inputs), [], full_attrs, node_name, domain)
        for i, (out_name, kind) in enumerate(zip(output_names, kinds, strict=True)):
            if kind is None or out_name == "":  # "" marks an omitted optional output (ONNX style)
                node.outputs.append(None)
                continue
            shape, dtype = kind
            vname = out_name or self.fresh_name(
                f"{node_name}_out{i}" if len(kinds) > 1 else node_name
            )
            node.outputs.append(self._register(Value(vname, shape, dtype, None, node)))
        self.nodes.append(node)
        self._node_names.add(node_name)
        if fold:
            self._try_fold(node, opdef)
        return node

    def fresh_node_name(self, op: str) -> str:
        """A node name no node of this graph has, made from ``op``."""
        if len(self._node_names) < len(self.nodes):  # nodes were added behind add_node's back
            self._node_names.update(n.name for n in self.nodes)
        while True:
            candidate = f"{op}_{next(self._names)}"
            if candidate not in self._node_names:
                return candidate

    def _try_fold(self, node: Node, opdef: Any) -> None:
        if not opdef.foldable(node):
            return
        if sum(v.size for v in node.outputs if v is not None) > FOLD_LIMIT_ELEMENTS:
            return
        results = opdef.evaluate(node, [_known_or_shape(v) for v in node.inputs])
        for value, result in zip(node.outputs, results, strict=False):
            if value is not None:
                value.const = result

    # ----------------------------------------------------------------- graph passes
    def remove_dead(self) -> None:
        """Drop nodes whose outputs nothing needs, and values nothing refers to (in subgraphs too)."""
        live: set[int] = {id(v) for v in self.outputs}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(v is not None and id(v) in live for v in node.outputs):
                kept.append(node)
                live.update(id(v) for v in node.inputs if v is not None)
                for sub in subgraphs(node):
                    sub.remove_dead()
                    live.update(id(v) for v in sub.free_values())
        self.nodes = kept[::-1]
        for name, value in list(self.values.items()):
            if id(value) not in live and value not in self.inputs:
                del self.values[name]

    def fold_constants(self) -> None:
        """Replace nodes whose outputs are all known by those constants (they become initializers).

        Subgraphs are folded too; a node that reads nothing and has no outputs is dropped.
        """
        kept = []
        for node in self.nodes:
            for sub in subgraphs(node):
                sub.fold_constants()
            if all(v is None or v.const is not None for v in node.outputs):
                for v in node.outputs:
                    if v is not None:
                        v.producer = None
            else:
                kept.append(node)
        self.nodes = kept
        self.remove_dead()

    def free_values(self) -> Iterator[Value]:
        """Values of enclosing graphs that this graph (or its subgraphs) reads."""
        own = set(map(id, self.values.values()))
        for node in self.nodes:
            for v in node.inputs:
                if v is not None and id(v) not in own:
                    yield v
            for sub in subgraphs(node):
                for v in sub.free_values():
                    if id(v) not in own:
                        yield v

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, inputs={[v.name for v in self.inputs]}, "
            f"outputs={[v.name for v in self.outputs]}, nodes={len(self.nodes)})"
        )

    def summary(self) -> str:
        """A readable listing: inputs, outputs, then one line per node (If branches indented)."""
        return "\n".join(self._summary_lines(""))

    def _summary_lines(self, pad: str) -> list[str]:
        lines = [f"{pad}graph {self.name}"]
        lines += [f"{pad}  input  {v.name}: {v.dtype}{list(v.shape)}" for v in self.inputs]
        lines += [f"{pad}  output {v.name}: {v.dtype}{list(v.shape)}" for v in self.outputs]
        if self.tail is not None:  # the outputs above then include the values the tail reads
            lines.append(f"{pad}  then a {self.tail.describe()}")
        for node in self.nodes:
            outs = ", ".join(f"{v.name}: {v.dtype}{list(v.shape)}" for v in node.outputs if v)
            ins = ", ".join(v.name if v else "-" for v in node.inputs)
            lines.append(f"{pad}  {outs} = {node.op}({ins})")
            for key, sub in node.attrs.items():
                if isinstance(sub, Graph):
                    lines.append(f"{pad}    {key}:")
                    lines += sub._summary_lines(pad + "      ")
        return lines


def _known_or_shape(value: Value | None) -> np.ndarray | None:
    """A constant's array; for an unknown value, a zero-memory stand-in carrying its shape and dtype
    (enough for shape-only ops such as Shape and Size)."""
    if value is None:
        return None
    if value.const is not None:
        return value.const
    return np.broadcast_to(np.zeros((), value.dtype), value.shape)


def _check_type(kind: Any) -> tuple[Shape, np.dtype] | None:
    """A shape rule's answer for one output, checked: static non-negative dims, a dtype."""
    if kind is None:
        return None
    shape, dtype = kind
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ShapeError(f"inferred a negative dimension in shape {list(dims)}")
    return dims, as_dtype(dtype)


def subgraphs(node: Node) -> list[Graph]:
    """The graphs held in a node's attributes (If branches)."""
    return [a for a in node.attrs.values() if isinstance(a, Graph)]

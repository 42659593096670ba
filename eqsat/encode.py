"""Graph -> egglog terms: one e-class per IR value, encoded in one egglog program.

:func:`encode` loads a :class:`~eqsat.ir.Graph` into a fresh e-graph in the term language of
:mod:`eqsat.egraph` (sorts ``T``, ``TList``, ``Attr``, one constructor per op). Graph inputs become
``T.input(name)``; constants ``T.const(key)`` with their arrays kept on the Python side
(:attr:`Encoding.constants`; equal constants share one key); every node its op's constructor. Each
value gets ``shape`` and ``dtype`` facts, run-time values ``dynamic``, constants of one repeated
value ``splat`` (and ``scalar_const`` for finite one-element floats), small 1-D integer constants
``int_values``. A Reshape whose output shape
is static is encoded with that shape as its target (``static_shape``), so that reshape chains
simplify. The rule constants (:data:`eqsat.egraph.RULE_CONSTANTS`) and the ``lossless`` and
``dtype_name`` tables are added to every encoding.

The program is built directly as egglog's syntax tree (:class:`_Program`) and run in one call:
going through egglog's typed Python API costs about a millisecond per term and a round trip per
``let``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from egglog import EGraph, bindings

from eqsat import ops
from eqsat.egraph import (
    _CAST_TYPES,
    INT_VALUES_MOST,
    RULE_CONSTANTS,
    Attr,
    T,
    TList,
    attr_key,
    dtype,
    dtype_name,
    dynamic,
    int_values,
    is_lossless,
    lossless,
    onnx_type,
    scalar_const,
    shape,
    spec,
    splat,
    static_shape,
)
from eqsat.errors import EqsatError
from eqsat.ir import Graph, Value

__all__ = ["Encoding", "encode"]


@dataclass
class Encoding:
    """A graph loaded into an e-graph, and what decoding needs to rebuild one."""

    graph: Graph
    egraph: EGraph
    constants: dict[str, np.ndarray]  # T.const key -> array
    attr_values: dict[str, Any]  # Attr.key key -> Python value
    terms: dict[int, T]  # id(Value) -> its term (a let-bound reference)
    const_keys: dict[int, str] = field(default_factory=dict)  # id(constant Value) -> its key
    # id(Node) -> the inputs it was encoded with (Reshape gets a static target shape).
    node_inputs: dict[int, list[Value | None]] = field(default_factory=dict)


def _splat_value(array: np.ndarray) -> float | None:
    if array.size == 0 or array.dtype.kind not in "fiub":
        return None
    first = array.flat[0]
    if not np.all(array == first):
        return None
    value = float(first)
    return value if np.isfinite(value) else None


class _Program:
    """egglog commands built directly as egglog's syntax tree, to run as one program.

    Going through the typed Python API costs about a millisecond per term and a round trip per
    ``let``; a graph of a few hundred values is encoded in one call this way instead.
    """

    def __init__(self, egraph: EGraph):
        self.egraph = egraph
        self.span = bindings.RustSpan(__file__, 0, 0)
        self.commands: list[Any] = []
        self._names: dict[Any, str] = {}

    def fn(self, callable_: Any) -> str:
        """The egglog name of a constructor or function (declaring it in the e-graph)."""
        name = self._names.get(callable_)
        if name is None:
            name = self._names[callable_] = self.egraph._callable_to_egg(callable_)[1]
        return name

    def call(self, callable_: Any, *args: Any) -> Any:
        return bindings.Call(self.span, self.fn(callable_), list(args))

    def lit(self, value: bool | int | float | str) -> Any:
        if isinstance(value, str):
            return bindings.Lit(self.span, bindings.String(value))
        if isinstance(value, float):
            return bindings.Lit(self.span, bindings.Float(value))
        return bindings.Lit(self.span, bindings.Int(int(value)))

    def vec(self, items: Sequence[int]) -> Any:
        return bindings.Call(self.span, "vec-of", [self.lit(int(i)) for i in items])

    def let(self, name: str, expr: Any) -> Any:
        self.commands.append(bindings.ActionCommand(bindings.Let(self.span, f"${name}", expr)))
        return bindings.Var(self.span, f"${name}")

    def set(self, function_: Any, args: list[Any], value: Any) -> None:
        action = bindings.Set(self.span, self.fn(function_), args, value)
        self.commands.append(bindings.ActionCommand(action))

    def fact(self, expr: Any) -> None:
        self.commands.append(bindings.ActionCommand(bindings.Expr_(self.span, expr)))

    def attr(self, value: Any, keys: dict[str, Any]) -> Any:
        if value is None:
            return self.call(Attr.none)
        if isinstance(value, bool | int | np.integer):
            return self.call(Attr.int, self.lit(int(value)))
        if isinstance(value, float | np.floating):
            return self.call(Attr.float, self.lit(float(value)))
        if isinstance(value, str):
            return self.call(Attr.str, self.lit(value))
        if isinstance(value, list | tuple) and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value
        ):
            return self.call(Attr.ints, self.vec(value))
        key = attr_key(value)
        keys[key] = value
        return self.call(Attr.key, self.lit(key))

    def run(self) -> None:
        self.egraph._run_program(*self.commands)
        self.commands = []


@functools.cache
def _let_type() -> tuple[Any, Any]:
    from egglog.declarations import LetRefDecl, TypedExprDecl  # noqa: F401

    none = T.none()
    return none.__egg_decls__, none.__egg_typed_expr__.tp


def _let_ref(name: str) -> T:
    """A typed reference to the let-bound tensor ``name`` (as ``EGraph.let`` returns)."""
    from egglog.declarations import LetRefDecl, TypedExprDecl
    from egglog.runtime import RuntimeExpr

    decls, tp = _let_type()
    return RuntimeExpr.__from_values__(decls, TypedExprDecl(tp, LetRefDecl(name)))  # type: ignore[return-value]


def encode(graph: Graph) -> Encoding:
    """Add ``graph`` to a fresh e-graph; each value becomes one let-bound term."""
    egraph = EGraph()
    enc = Encoding(graph, egraph, {}, {}, {})
    prog = _Program(egraph)
    by_content: dict[tuple, str] = {}
    refs: dict[int, Any] = {}  # id(Value) -> its let variable
    counter = 0

    def let(expr: Any) -> tuple[str, Any]:
        nonlocal counter
        # Ends in "_": egglog mints fresh names as a hint plus a count, so "v25" plus "1" and
        # "v251" could be one name, and the two lets were conflated (ConvNeXt-T's Mul(0.5, x)
        # was encoded as Mul(x, x)). No name here is another followed by digits.
        name = f"v{counter}_"
        counter += 1
        return name, prog.let(name, expr)

    def bind(value: Value, expr: Any) -> Any:
        name, ref = let(expr)
        refs[id(value)] = ref
        enc.terms[id(value)] = _let_ref(name)
        prog.set(shape, [ref], prog.vec(value.shape))
        prog.set(dtype, [ref], prog.lit(onnx_type(value.dtype)))
        if value.const is None:
            prog.fact(prog.call(dynamic, ref))
        return ref

    def term_of(value: Value) -> Any:
        known = refs.get(id(value))
        if known is not None:
            return known
        if value.const is None:  # a value of an enclosing graph, or a dangling reference
            raise EqsatError(f"graph {graph.name!r}: value {value.name!r} has no producer")
        array = value.const
        content = (array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest())
        key = by_content.get(content)
        if key is None:
            key = by_content[content] = value.name
            enc.constants[key] = array
        enc.const_keys[id(value)] = key
        ref = bind(value, prog.call(T.const, prog.lit(key)))
        sv = _splat_value(array)
        if sv is not None:
            prog.set(splat, [ref], prog.lit(sv))
            if array.size == 1 and array.ndim <= 1 and array.dtype.kind == "f":
                prog.fact(prog.call(scalar_const, ref))
        if array.ndim == 1 and array.dtype.kind in "iu" and array.size <= INT_VALUES_MOST:
            prog.set(int_values, [ref], prog.vec([int(v) for v in array]))
        return ref

    none = prog.call(T.none)
    for value in graph.inputs:
        if value.const is None:
            bind(value, prog.call(T.input, prog.lit(value.name)))
    for node in graph.nodes:
        if all(v is None or v.const is not None for v in node.outputs):
            continue  # folded: its outputs are constants
        values = list(node.inputs)
        out0 = node.outputs[0]
        if node.op == "Reshape" and out0 is not None and all(d > 0 for d in out0.shape):
            values[1] = Value(f"{out0.name}__shape", (out0.rank,), np.dtype(np.int64))
            values[1].const = np.array(out0.shape, np.int64)
        enc.node_inputs[id(node)] = values
        inputs = [none if v is None else term_of(v) for v in values]
        if node.op == "Reshape" and values[1] is not node.inputs[1]:
            prog.fact(prog.call(static_shape, inputs[1]))
        mask = "".join("0" if v is None else "1" for v in node.outputs)
        term = _node_expr(prog, node.op, inputs, node.attrs, mask, none, enc.attr_values)
        if mask == "1":
            bind(node.outputs[0], term)
            continue
        _, ref = let(term)
        for i, v in enumerate(node.outputs):
            if v is not None:
                bind(v, prog.call(T.out, ref, prog.lit(i)))
    for value in graph.outputs:
        term_of(value)
    for key, array in RULE_CONSTANTS.items():
        enc.constants[key] = array
        ref = prog.call(T.const, prog.lit(key))
        prog.set(shape, [ref], prog.vec(array.shape))
        prog.set(dtype, [ref], prog.lit(onnx_type(array.dtype)))
    for a in _CAST_TYPES:
        prog.set(dtype_name, [prog.lit(onnx_type(a))], prog.lit(a.name))
        for b in _CAST_TYPES:
            if is_lossless(a, b):
                prog.fact(prog.call(lossless, prog.lit(onnx_type(a)), prog.lit(onnx_type(b))))
    prog.run()
    return enc


def _node_expr(
    prog: _Program, op: str, inputs: list[Any], attrs: dict, mask: str, none: Any, keys: dict
) -> Any:
    """The egglog expression of one IR node (as :func:`make` builds it)."""
    s = spec(op)
    opdef = ops.get(op)
    unknown = set(attrs) - set(s.attrs)
    if unknown:
        raise EqsatError(f"{op} has no attribute(s) {sorted(unknown)}")
    args: list[Any]
    if s.variadic:
        items = prog.call(TList.nil)
        for item in reversed(inputs):
            items = prog.call(TList.cons, item, items)
        args = [items]
    else:
        if len(inputs) > s.num_inputs:
            raise EqsatError(f"{op} takes at most {s.num_inputs} inputs, got {len(inputs)}")
        args = inputs + [none] * (s.num_inputs - len(inputs))
    for name in s.attrs:
        if name in attrs:
            args.append(prog.attr(attrs[name], keys))
        elif opdef.attrs[name] is ops.REQUIRED:
            raise EqsatError(f"{op}: attribute {name!r} is required")
        else:
            args.append(prog.attr(opdef.attrs[name], keys))
    if s.multi_output:
        args.append(prog.lit(mask))
    return prog.call(s.fn, *args)

"""ONNX export: a :class:`~eqsat.ir.Graph` as an opset-21 ONNX model (or the first opset that has
every standard operator it uses, where one is newer: RMSNormalization needs 23).

:func:`to_onnx` returns a ``ModelProto`` that ``onnx.checker`` accepts and onnxruntime runs with the
outputs the numpy reference gives; :func:`save` writes it to a file. Constants of the top graph
become initializers; constants of If branches (and constants that are graph outputs) become
``Constant`` nodes, since ONNX wants every branch output produced inside the branch. ONNX forbids a
subgraph to reuse a name of an enclosing graph, so such values are renamed on the way out.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from eqsat import ops
from eqsat.errors import EqsatError
from eqsat.ir import Graph, Node, Value, subgraphs
from eqsat.ops.fused import DOMAIN, FUSED_OPS
from eqsat.ops.layout import LAYOUT_OPS
from eqsat.ops.quant_tensor import QUANT_TENSOR_OPS

EXPORT_OPSET = 21
EXPORT_IR_VERSION = 10
DEFAULT_DOMAINS = ("", "ai.onnx")


def to_onnx(graph: Graph, *, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """The graph as an ONNX model (opset ``opset``) that onnx.checker and onnxruntime accept.

    Names stay as they are where they can; a value whose name an enclosing or earlier graph already
    uses (ONNX forbids shadowing) is renamed. Top-level inputs and outputs keep their names.
    """
    opset = _needed_opset(graph, opset)
    exporter = _Exporter(opset)
    proto = exporter.graph(graph, top=True)
    if graph.tail is not None:
        from eqsat.tail import export_tail  # the tail module imports this one's callers

        export_tail(proto, graph.tail, opset)
    domains = sorted(exporter.domains - set(DEFAULT_DOMAINS))
    model = helper.make_model(
        proto,
        opset_imports=[helper.make_opsetid("", opset)]
        + [helper.make_opsetid(d, 1) for d in domains],
        ir_version=EXPORT_IR_VERSION,
        producer_name="eqsat",
    )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, or its C++ core failing
        raise EqsatError(
            f"exported model of graph {graph.name!r} does not validate: {exc}"
        ) from None
    return model


def _domain(node: Node) -> str:
    """The domain a node is exported in: eqsat's own ops (fused, channels-last) in eqsat's, also
    when a graph built in Python left it empty (its Attention is not ONNX's Attention)."""
    own = FUSED_OPS | LAYOUT_OPS | QUANT_TENSOR_OPS
    if not node.domain and node.op in own:
        return DOMAIN
    return node.domain


def _needed_opset(graph: Graph, opset: int) -> int:
    """``opset``, or the first opset that has every standard operator of the graph where one is
    newer (RMSNormalization: 23)."""
    for node in graph.nodes:
        if _domain(node) in DEFAULT_DOMAINS:
            try:
                onnx.defs.get_schema(node.op, opset, "")
            except onnx.defs.SchemaError:
                # (not an ONNX operator at any opset: the checker reports it)
                with contextlib.suppress(onnx.defs.SchemaError):
                    opset = max(opset, onnx.defs.get_schema(node.op).since_version)
        for sub in subgraphs(node):
            opset = _needed_opset(sub, opset)
    return opset


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write the graph as an ONNX file."""
    model = to_onnx(graph)
    try:
        onnx.save(model, str(path))
    except (OSError, ValueError) as exc:
        raise EqsatError(f"cannot write {str(path)!r}: {exc}") from None


class _Exporter:
    def __init__(self, opset: int):
        self.opset = opset
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.domains: set[str] = set()

    def name(self, value: Value) -> str:
        """The exported name of ``value`` (graphs hold every Value, so ids stay unique)."""
        key = id(value)
        if key not in self.names:
            self.names[key] = self.unique(value.name or "value")
        return self.names[key]

    def unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def graph(self, graph: Graph, top: bool) -> onnx.GraphProto:
        own = {id(v) for v in graph.values.values()}
        # Claim this graph's names before its subgraphs can (they are exported while its nodes are).
        for v in [*graph.inputs, *graph.outputs, *graph.values.values()]:
            if id(v) in own:
                self.name(v)
        nodes: list[onnx.NodeProto] = []
        initializers: list[onnx.TensorProto] = []
        emitted: set[int] = set()
        top_outputs = {id(v) for v in graph.outputs} if top else set()

        def emit_constant(value: Value) -> None:
            if id(value) in emitted or value.const is None or value.producer is not None:
                return
            if id(value) not in own:
                return
            emitted.add(id(value))
            tensor = numpy_helper.from_array(np.asarray(value.const, order="C"), self.name(value))
            if top and id(value) not in top_outputs:
                initializers.append(tensor)
            else:  # a branch constant, or a graph output, is made by a node
                nodes.append(helper.make_node("Constant", [], [self.name(value)], value=tensor))

        for node in graph.nodes:
            reads = [v for v in node.inputs if v is not None]
            reads += [v for sub in subgraphs(node) for v in sub.free_values()]
            for v in reads:
                emit_constant(v)
            try:
                nodes.append(self.node(node))
            except EqsatError:
                raise
            except Exception as exc:  # an attribute onnx cannot represent
                raise EqsatError(
                    f"cannot export node {node.name!r} ({node.op}): {type(exc).__name__}: {exc}"
                ) from None
        outputs = []
        for v in graph.outputs:
            emit_constant(v)
            if top or id(v) in own:
                outputs.append(_value_info(self.name(v), v))
                continue
            # ONNX forbids a branch to return an outer value directly: copy it.
            copy = self.unique(f"{self.name(v)}_out")
            nodes.append(helper.make_node("Identity", [self.name(v)], [copy]))
            outputs.append(_value_info(copy, v))
        output_ids = {id(v) for v in graph.outputs}
        value_infos = [
            _value_info(self.name(v), v)
            for node in graph.nodes
            for v in node.outputs
            if v is not None and id(v) not in output_ids
        ]
        inputs = [_value_info(self.name(v), v) for v in graph.inputs if v.const is None]
        return helper.make_graph(
            nodes,
            graph.name,
            inputs if top else [],
            outputs,
            initializer=initializers,
            value_info=value_infos,
        )

    def node(self, node: Node) -> onnx.NodeProto:
        domain = _domain(node)
        self.domains.add(domain)
        attrs = {k: self.attr(v) for k, v in node.attrs.items() if _exportable(v)}
        if node.op == "Split" and attrs.get("num_outputs") is None and len(node.inputs) < 2:
            attrs["num_outputs"] = len(node.outputs)  # the pre-18 equal split, spelled for 18+
        attrs = self.schema_attrs(node, domain, attrs)
        ins = [self.name(v) if v is not None else "" for v in node.inputs]
        outs = [self.name(v) if v is not None else "" for v in node.outputs]
        for i in self.required_outputs(node, domain):
            if not outs[i]:  # omitted in the IR, but ONNX wants a name: one nobody reads
                outs[i] = self.unique(f"{node.name}_unused{i}")
        while outs and outs[-1] == "":
            outs.pop()
        while ins and ins[-1] == "":
            ins.pop()
        return helper.make_node(node.op, ins, outs, name=node.name, domain=domain or None, **attrs)

    def required_outputs(self, node: Node, domain: str) -> list[int]:
        if domain not in DEFAULT_DOMAINS:
            return []
        try:
            formal = onnx.defs.get_schema(node.op, self.opset, "").outputs
        except Exception:
            return []
        single = onnx.defs.OpSchema.FormalParameterOption.Single
        return [i for i in range(min(len(formal), len(node.outputs))) if formal[i].option == single]

    def schema_attrs(self, node: Node, domain: str, attrs: dict[str, Any]) -> dict[str, Any]:
        """Attributes as the ONNX schema types them (1 -> 1.0 for a float), dropping those the
        schema lacks when they hold eqsat's default anyway."""
        if domain not in DEFAULT_DOMAINS:
            return attrs
        try:
            known = onnx.defs.get_schema(node.op, self.opset, "").attributes
        except Exception:
            return attrs
        defaults = ops.OPS[node.op].attrs if node.op in ops.OPS else {}
        kinds = onnx.defs.OpSchema.AttrType
        typed = {}
        for key, value in attrs.items():
            if key not in known:
                if not _same(value, defaults.get(key, _MISSING)):
                    typed[key] = value
                continue
            kind = known[key].type
            if kind == kinds.FLOAT and isinstance(value, int | bool):
                value = float(value)
            elif kind == kinds.FLOATS and isinstance(value, list):
                value = [float(v) for v in value]
            elif (
                kind == kinds.INT and isinstance(value, bool | float) and float(value).is_integer()
            ):
                value = int(value)
            elif kind == kinds.INTS and isinstance(value, list):
                value = [int(v) for v in value]
            typed[key] = value
        return typed

    def attr(self, value: Any) -> Any:
        if isinstance(value, Graph):
            return self.graph(value, top=False)
        if isinstance(value, np.ndarray):
            return numpy_helper.from_array(np.asarray(value, order="C"))
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, tuple | list):
            return [v.item() if isinstance(v, np.generic) else v for v in value]
        return value


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b))) if b is not _MISSING else False
    except Exception:
        return False


def _exportable(value: Any) -> bool:
    return value is not None and not (isinstance(value, list | tuple) and len(value) == 0)


def _value_info(name: str, value: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )

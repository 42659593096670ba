"""ONNX import and export.

:func:`load` reads a model (path, bytes or ``onnx.ModelProto``) into a static-shape :class:`Graph`:
symbolic input dimensions are specialized to ``input_shapes``, inputs named in ``constants`` become
constants, older-opset nodes are rewritten into their opset-21 form, ``If`` nodes whose condition is
known are inlined, and every node whose inputs are known at compile time (shape arithmetic above
all: Shape, Gather, Concat, Range, ConstantOfShape, ...) is folded into a constant.

:func:`to_onnx` writes a Graph back as an opset-21 model that ``onnx.checker`` accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from eqsat import ops
from eqsat.errors import (
    EqsatError,
    InputError,
    ModelLoadError,
    ShapeError,
    UnsupportedOperatorError,
)
from eqsat.ir import Graph, Value, subgraphs
from eqsat.onnx_upgrade import upgrade

EXPORT_OPSET = 21
EXPORT_IR_VERSION = 10
MIN_OPSET = 7  # older models are upgraded node by node where we know how; earlier ones are refused
DEFAULT_DOMAINS = ("", "ai.onnx")
# Ops the importer consumes itself rather than putting into the graph.
IMPORTER_OPS = {"Constant", "Upsample"}

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


# ---------------------------------------------------------------------------------- reading
def read_model(source: ModelSource) -> onnx.ModelProto:
    """Read and sanity-check a model; every failure is a ModelLoadError naming the source."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "the given ModelProto"
    elif isinstance(source, bytes | bytearray):
        model, where = _parse(bytes(source), "the given bytes"), "the given bytes"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelLoadError(f"{where}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{where}: is a directory, not an ONNX file")
        model = _parse(path.read_bytes(), where)
        if any(_uses_external_data(t) for t in model.graph.initializer):
            try:
                onnx.load_external_data_for_model(model, str(path.parent))
            except Exception as exc:
                raise ModelLoadError(f"{where}: cannot read external tensor data: {exc}") from None
    else:
        raise ModelLoadError(f"cannot load a model from a {type(source).__name__}")
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(
            f"{where}: not an ONNX model (no graph); is the file corrupt or truncated?"
        )
    if model.ir_version <= 0 or not model.opset_import:
        raise ModelLoadError(f"{where}: not an ONNX model (no IR version or opset); corrupt file?")
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{where}: not a valid ONNX model (corrupt, truncated or another format): {exc}"
        ) from None
    return model


def _uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return versions[0] if versions else 1


# ---------------------------------------------------------------------------------- loading
def load(
    source: ModelSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constants: Mapping[str, Any] | None = None,
) -> Graph:
    """Load an ONNX model as a static-shape :class:`Graph`.

    ``input_shapes`` gives shapes for inputs with symbolic (or to be overridden) dimensions;
    ``constants`` binds inputs to fixed arrays, which then fold through the graph.
    """
    model = read_model(source)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelLoadError(f"opset {opset} is older than the oldest supported ({MIN_OPSET})")
    _check_supported(model.graph, opset)
    importer = _Importer(opset)
    graph = importer.import_main(model.graph, dict(input_shapes or {}), dict(constants or {}))
    graph.opset = EXPORT_OPSET
    graph.fold_constants()
    return graph


def _check_supported(graph_proto: onnx.GraphProto, opset: int) -> None:
    """Report every unsupported operator of the model (subgraphs included) at once."""
    problems: list[tuple[str, str, str]] = []

    def visit(g: onnx.GraphProto) -> None:
        for i, node in enumerate(g.node):
            name = node.name or f"{node.op_type}_{i}"
            if node.domain not in DEFAULT_DOMAINS:
                problems.append((node.op_type, name, f"custom domain {node.domain!r}"))
            elif node.op_type not in IMPORTER_OPS and not ops.is_supported(node.op_type):
                problems.append((node.op_type, name, "operator not implemented"))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(graph_proto)
    if problems:
        raise UnsupportedOperatorError(problems)


def _np_dtype(elem_type: int, what: str) -> np.dtype:
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "undefined"
        raise UnsupportedOperatorError(
            [("dtype", what, f"tensor element type {name} is not supported")]
        )
    return dtype


class _Importer:
    def __init__(self, opset: int):
        self.opset = opset

    def import_main(
        self,
        proto: onnx.GraphProto,
        input_shapes: dict[str, Sequence[int]],
        constants: dict[str, Any],
    ) -> Graph:
        graph = Graph(proto.name or "model")
        init_names = {t.name for t in proto.initializer}
        real_inputs = [vi for vi in proto.input if vi.name not in init_names]
        known = {vi.name for vi in real_inputs}
        for name in [*input_shapes, *constants]:
            if name not in known:
                raise InputError(f"{name!r} is not an input of the model; inputs: {sorted(known)}")
        for tensor in proto.initializer:
            graph.constant(self._tensor(tensor, f"initializer {tensor.name!r}"), tensor.name)
        unresolved = []
        for vi in real_inputs:
            dtype = _np_dtype(vi.type.tensor_type.elem_type, f"input {vi.name!r}")
            if vi.name in constants:
                array = np.asarray(constants[vi.name])
                if array.dtype != dtype:
                    array = array.astype(dtype)
                graph.constant(array, vi.name)
                continue
            shape = self._input_shape(vi, input_shapes.get(vi.name))
            if shape is None:
                unresolved.append(vi)
                continue
            graph.input(vi.name, shape, dtype)
        if unresolved:
            described = "; ".join(f"{vi.name!r} has shape {_declared(vi)}" for vi in unresolved)
            example = ", ".join(f"'{vi.name}': (...)" for vi in unresolved)
            raise ShapeError(
                f"input shapes are not static: {described}. Pass input_shapes={{{example}}} "
                "(CLI: --shape NAME=D1,D2,...)"
            )
        self._import_nodes(proto, graph)
        graph.outputs = [self._lookup(graph, vi.name, "graph output") for vi in proto.output]
        return graph

    def _input_shape(
        self, vi: onnx.ValueInfoProto, given: Sequence[int] | None
    ) -> tuple[int, ...] | None:
        declared = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
        if given is not None:
            shape = tuple(int(d) for d in given)
            if declared is not None:
                if len(declared) != len(shape):
                    raise ShapeError(
                        f"input {vi.name!r}: given shape {list(shape)} has rank {len(shape)}, the "
                        f"model declares {_declared(vi)}"
                    )
                for i, (dim, size) in enumerate(zip(declared, shape, strict=True)):
                    if dim.HasField("dim_value") and dim.dim_value not in (size, 0):
                        raise ShapeError(
                            f"input {vi.name!r}: dimension {i} is fixed to {dim.dim_value} by the "
                            f"model, given {size}"
                        )
            return shape
        if declared is None:
            return None
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in declared):
            return tuple(d.dim_value for d in declared)
        return None

    def _tensor(self, tensor: onnx.TensorProto, what: str) -> np.ndarray:
        _np_dtype(tensor.data_type, what)
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:
            raise ModelLoadError(f"{what}: unreadable tensor data: {exc}") from None

    def _lookup(self, graph: Graph, name: str, what: str) -> Value:
        value = graph.lookup(name)
        if value is None:
            raise ModelLoadError(
                f"{what} {name!r} is not produced by any node, input or initializer"
            )
        return value

    # ------------------------------------------------------------------------------- nodes
    def _import_nodes(self, proto: onnx.GraphProto, graph: Graph) -> None:
        for index in _topological_order(proto, graph):
            node = proto.node[index]
            name = node.name or f"{node.op_type}_{index}"
            if graph.lookup(name) is not None or any(n.name == name for n in graph.nodes):
                name = graph.fresh_node_name(node.op_type)
            self._import_node(node, name, graph)

    def _import_node(self, node: onnx.NodeProto, name: str, graph: Graph) -> None:
        inputs = [
            self._lookup(graph, i, f"input of node {name!r} ({node.op_type})") if i else None
            for i in node.input
        ]
        while inputs and inputs[-1] is None:
            inputs.pop()
        outputs = list(node.output)
        while outputs and outputs[-1] == "":
            outputs.pop()
        attrs = {a.name: self._attribute(a, graph, name) for a in node.attribute}
        if node.op_type == "Constant":
            graph.constant(self._constant_value(attrs, name), outputs[0])
            return
        if node.op_type == "If" and inputs[0] is not None and inputs[0].const is not None:
            self._inline_if(node, bool(np.asarray(inputs[0].const).reshape(-1)[0]), outputs, graph)
            return
        version = onnx.defs.get_schema(node.op_type, self.opset, "").since_version
        up = upgrade(graph, node.op_type, version, inputs, attrs, name)
        if up.reshape_to is not None:
            _legacy_softmax(graph, up, outputs, name)
            return
        graph.add_node(up.op, up.inputs, outputs, up.attrs, name=name)

    def _attribute(self, attr: onnx.AttributeProto, graph: Graph, node: str) -> Any:
        if attr.type == onnx.AttributeProto.GRAPH:
            return self._subgraph(attr.g, graph)
        if attr.type == onnx.AttributeProto.TENSOR:
            return self._tensor(attr.t, f"attribute {attr.name!r} of node {node!r}")
        if attr.type in (onnx.AttributeProto.GRAPHS, onnx.AttributeProto.SPARSE_TENSOR):
            raise UnsupportedOperatorError(
                [("attribute", node, f"{attr.name!r} of unsupported kind")]
            )
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode() for v in value]
        return value

    def _subgraph(self, proto: onnx.GraphProto, outer: Graph) -> Graph:
        if proto.input:
            raise UnsupportedOperatorError(
                [
                    (
                        "subgraph",
                        proto.name,
                        "subgraphs with inputs (Loop/Scan bodies) are not supported",
                    )
                ]
            )
        sub = Graph(proto.name or "branch", outer=outer)
        for tensor in proto.initializer:
            sub.constant(self._tensor(tensor, f"initializer {tensor.name!r}"), tensor.name)
        self._import_nodes(proto, sub)
        sub.outputs = [self._lookup(sub, vi.name, "subgraph output") for vi in proto.output]
        return sub

    def _inline_if(
        self, node: onnx.NodeProto, cond: bool, outputs: list[str], graph: Graph
    ) -> None:
        branch = next(
            a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch")
        )
        for tensor in branch.initializer:
            graph.constant(self._tensor(tensor, f"initializer {tensor.name!r}"), tensor.name)
        self._import_nodes(branch, graph)
        for out_name, vi in zip(outputs, branch.output, strict=False):
            if out_name:
                graph.add_node("Identity", [self._lookup(graph, vi.name, "If output")], [out_name])

    def _constant_value(self, attrs: dict[str, Any], node: str) -> np.ndarray:
        forms = {
            "value": lambda v: v,
            "value_float": lambda v: np.array(v, np.float32),
            "value_floats": lambda v: np.array(v, np.float32),
            "value_int": lambda v: np.array(v, np.int64),
            "value_ints": lambda v: np.array(v, np.int64),
        }
        for key, make in forms.items():
            if key in attrs:
                return make(attrs[key])
        raise UnsupportedOperatorError([("Constant", node, f"unsupported form {sorted(attrs)}")])


def _legacy_softmax(graph: Graph, up: Any, outputs: list[str], name: str) -> None:
    """Softmax before opset 13 normalizes over all axes from ``axis`` on, as one flattened axis."""
    axis = up.attrs.get("axis", 1)
    flat = graph.add_node("Flatten", [up.inputs[0]], [None], {"axis": axis}, name=f"{name}_flatten")
    soft = graph.add_node(up.op, [flat.outputs[0]], [None], {"axis": -1}, name=name)
    shape = graph.constant(np.asarray(up.reshape_to, np.int64), f"{name}_shape")
    graph.add_node("Reshape", [soft.outputs[0], shape], outputs, {}, name=f"{name}_reshape")


def _declared(vi: onnx.ValueInfoProto) -> str:
    if not vi.type.tensor_type.HasField("shape"):
        return "unknown"
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in vi.type.tensor_type.shape.dim
    ]
    return "[" + ", ".join(map(str, dims)) + "]"


def _topological_order(proto: onnx.GraphProto, graph: Graph) -> list[int]:
    """Node indices in an order where producers come first (exporters do not always ensure it)."""
    produced_by = {out: i for i, n in enumerate(proto.node) for out in n.output if out}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def needs(i: int) -> list[str]:
        names = [x for x in proto.node[i].input if x]
        for attr in proto.node[i].attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names += _outer_reads(attr.g)
        return names

    for start in range(len(proto.node)):
        stack = [(start, iter(needs(start)))]
        if state.get(start):
            continue
        state[start] = 1
        while stack:
            index, pending = stack[-1]
            for name in pending:
                producer = produced_by.get(name)
                if producer is None or state.get(producer) == 2:
                    continue
                if state.get(producer) == 1:
                    raise ModelLoadError(f"the graph has a cycle through value {name!r}")
                state[producer] = 1
                stack.append((producer, iter(needs(producer))))
                break
            else:
                stack.pop()
                state[index] = 2
                order.append(index)
    return order


def _outer_reads(proto: onnx.GraphProto) -> list[str]:
    own = {t.name for t in proto.initializer} | {o for n in proto.node for o in n.output}
    reads = []
    for node in proto.node:
        reads += [x for x in node.input if x and x not in own]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                reads += [x for x in _outer_reads(attr.g) if x not in own]
    return reads


# ---------------------------------------------------------------------------------- export
def to_onnx(graph: Graph, *, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """The graph as an ONNX model (opset ``opset``) that onnx.checker and onnxruntime accept."""
    proto = _export_graph(graph, top=True)
    model = helper.make_model(
        proto,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=EXPORT_IR_VERSION,
        producer_name="eqsat",
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EqsatError(
            f"exported model of graph {graph.name!r} does not validate: {exc}"
        ) from None
    return model


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write the graph as an ONNX file."""
    onnx.save(to_onnx(graph), str(path))


def _export_graph(graph: Graph, top: bool) -> onnx.GraphProto:
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    outputs_by_id = {id(v) for v in graph.outputs}
    emitted: set[int] = set()

    def emit_constant(value: Value) -> None:
        if id(value) in emitted or value.const is None or value.producer is not None:
            return
        emitted.add(id(value))
        tensor = numpy_helper.from_array(np.ascontiguousarray(value.const), value.name)
        if id(value) in outputs_by_id or not top:
            # A graph output (or a branch constant) must be produced by a node, not an initializer.
            nodes.append(helper.make_node("Constant", [], [value.name], value=tensor))
        else:
            initializers.append(tensor)

    for node in graph.nodes:
        reads = [v for v in node.inputs if v is not None]
        reads += [v for sub in subgraphs(node) for v in sub.free_values()]
        for v in reads:
            if v.const is not None and graph.values.get(v.name) is v:
                emit_constant(v)
        attrs = {k: _export_attr(v) for k, v in node.attrs.items() if _exportable(v)}
        nodes.append(
            helper.make_node(
                node.op,
                [v.name if v is not None else "" for v in node.inputs],
                [v.name if v is not None else "" for v in node.outputs],
                name=node.name,
                domain=node.domain or None,
                **attrs,
            )
        )
    for v in graph.outputs:
        emit_constant(v)
    value_infos = [
        _value_info(v)
        for node in graph.nodes
        for v in node.outputs
        if v is not None and id(v) not in outputs_by_id
    ]
    inputs = [_value_info(v) for v in graph.inputs if v.const is None] if top else []
    return helper.make_graph(
        nodes,
        graph.name,
        inputs,
        [_value_info(v) for v in graph.outputs],
        initializer=initializers,
        value_info=value_infos,
    )


def _exportable(value: Any) -> bool:
    return value is not None and not (isinstance(value, list | tuple) and len(value) == 0)


def _export_attr(value: Any) -> Any:
    if isinstance(value, Graph):
        return _export_graph(value, top=False)
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _value_info(value: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        value.name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )

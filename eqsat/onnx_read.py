"""Reading and vetting ONNX models before import: parse, sanity checks, support checks, order.

:func:`read_model` turns a path, bytes or ``ModelProto`` into a model and a phrase naming its
source, refusing anything that is not a whole ONNX model (missing, empty, truncated, another
format, undecodable names) with a :class:`~eqsat.errors.ModelLoadError`. :func:`check_supported`
lists every operator, attribute and dtype eqsat cannot handle at once. :func:`topological_order`
orders a graph's nodes producers-first and refuses cycles and names assigned twice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from eqsat import ops
from eqsat.errors import ModelLoadError
from eqsat.errors import UnsupportedOperatorError as Unsupported
from eqsat.onnx_upgrade import LEGACY_ATTRS, RENAMED

DEFAULT_DOMAINS = ("", "ai.onnx")
# eqsat's own ops (the fused kernels) export in this domain, and load back from it.
EQSAT_DOMAIN = "eqsat"
# Sequences of static length, kept by the importer as lists of values (eqsat.onnx_sequence).
SEQUENCE_OPS = frozenset(
    {
        "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
        "SequenceLength", "SplitToSequence", "ConcatFromSequence",
    }
)  # fmt: skip
# Ops the importer handles itself rather than putting into the graph (Loop and Scan: unrolled,
# see onnx_loop; ImageScaler: written as Mul and Add by onnx_upgrade; the sequence ops).
IMPORTER_OPS = {"Constant", "ImageScaler", "Loop", "Scan", *SEQUENCE_OPS}
# Standard operators that share a name with an eqsat operator of another meaning: ONNX's
# Attention (opset 23: Q, K, V of rank 3 or 4 with head counts, masks, a KV cache, causal and
# soft-capped variants) against eqsat's fused softmax(Q K^T scale + mask) V. The importer expands
# them into their ONNX definition (eqsat.onnx_functions), in which the fusion rules find eqsat's
# Attention where it is one; one left unexpanded is refused, never read as eqsat's.
SHADOWED = frozenset({"Attention"})
GRAPH = onnx.AttributeProto.GRAPH
# Attributes that older opsets have and onnx_upgrade turns into inputs or drops: the early
# attribute check lets them through, upgrade() handles them.
UPGRADED_ATTRS = LEGACY_ATTRS | {
    "axes", "split", "min", "max", "pads", "value", "starts", "ends", "k", "ratio", "scales",
    "mode", "axis", "shape", "paddings", "height_scale", "width_scale",
}  # fmt: skip

ModelSource = str | os.PathLike | bytes | bytearray | onnx.ModelProto
Problem = tuple[str, str, str]


# ---------------------------------------------------------------------------------- reading
def read_model(source: ModelSource) -> tuple[onnx.ModelProto, str]:
    """The model and a phrase naming its source; every failure is a ModelLoadError naming it."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "the given ModelProto"
    elif isinstance(source, bytes | bytearray):
        where = "the given bytes"
        model = _parse(bytes(source), where)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelLoadError(f"{where}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{where}: is a directory, not an ONNX file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read: {exc.strerror or exc}") from None
        model = _parse(data, where)
        if any(_uses_external_data(t) for t in _all_tensors(model.graph)):
            try:
                onnx.load_external_data_for_model(model, str(path.parent))
            except Exception as exc:
                raise ModelLoadError(f"{where}: cannot read external tensor data: {exc}") from None
    else:
        raise ModelLoadError(f"cannot load a model from a {type(source).__name__}")
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(
            f"{where}: not an ONNX model (it has no graph); is the file corrupt or truncated?"
        )
    if model.ir_version <= 0 or not model.opset_import:
        raise ModelLoadError(
            f"{where}: not an ONNX model (no IR version or opset); is the file corrupt or truncated?"
        )
    bad = next(_undecodable(model), None)
    if bad is not None:
        raise ModelLoadError(f"{where}: corrupt model: the name {bad!r} is not valid UTF-8")
    return model, where


def _undecodable(model: onnx.ModelProto) -> Iterator[bytes]:
    """Names protobuf could not decode (it hands them over as bytes): a sign of corruption."""

    def names(graph: onnx.GraphProto) -> Iterator[Any]:
        yield graph.name
        for group in (graph.input, graph.output, graph.value_info, graph.initializer):
            yield from (item.name for item in group)
        for node in graph.node:
            yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
            for attr in node.attribute:
                yield attr.name
                if attr.type == GRAPH:
                    yield from names(attr.g)

    domains = (o.domain for o in model.opset_import)
    for text in (*domains, *names(model.graph)):
        if not isinstance(text, str):
            yield text


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or RuntimeError/ValueError from its C core
        raise ModelLoadError(
            f"{where}: not a valid ONNX model (corrupt, truncated or another format): {exc}"
        ) from None
    return model


def _uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == GRAPH:
                yield from _all_tensors(attr.g)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's opset of the standard ONNX domain, or None when it imports none."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return max(versions) if versions else None


@functools.cache
def schema_version(op: str, opset: int) -> int | None:
    """The opset in which the version of ``op`` that ``opset`` selects was introduced."""
    try:
        return int(onnx.defs.get_schema(op, opset, "").since_version)
    except Exception:  # onnx's SchemaError: no such op at this opset
        return None


# ---------------------------------------------------------------------------------- support
def _elem_problem(type_proto: onnx.TypeProto) -> str | None:
    """Why a value of this type cannot be a tensor in eqsat, or None when it can."""
    if not type_proto.HasField("tensor_type"):
        kind = type_proto.WhichOneof("value") or "untyped"
        return f"values of kind {kind!r} (only tensors are supported)"
    return _dtype_problem(type_proto.tensor_type.elem_type)


def _dtype_problem(elem_type: int) -> str | None:
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        dtype = None
    if dtype is not None and dtype.kind in "biuf":
        return None
    try:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
    except ValueError:
        name = f"#{elem_type}"
    return f"element type {name} is not supported (eqsat handles bool, integer and float tensors)"


def np_dtype(elem_type: int, what: str) -> np.dtype:
    problem = _dtype_problem(elem_type)
    if problem:
        raise Unsupported([("dtype", what, problem)])
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def check_supported(graph_proto: onnx.GraphProto, opset: int, *, main: bool = True) -> None:
    """Report every unsupported operator, attribute and dtype of a graph at once.

    Problems inside If branches alone do not stop the import: an If whose condition folds drops
    a branch, and each branch is checked (all its problems at once) when it is imported.
    """
    own, nested = graph_problems(graph_proto, opset, main=main)
    if own:
        raise Unsupported(own + nested)


def graph_problems(
    graph_proto: onnx.GraphProto, opset: int, *, main: bool
) -> tuple[list[Problem], list[Problem]]:
    """(problems of the graph's own nodes, problems inside its subgraphs)."""
    own: list[Problem] = []
    nested: list[Problem] = []
    reads: set[str] = {o.name for o in graph_proto.output}

    def visit(g: onnx.GraphProto, problems: list[Problem]) -> None:
        for i, node in enumerate(g.node):
            name = node.name or f"{node.op_type}_{i}"
            reads.update(node.input)
            problems.extend(_node_problems(node, name, opset))
            for attr in node.attribute:
                if attr.type == GRAPH:
                    visit(attr.g, nested)

    visit(graph_proto, own)
    if graph_proto.sparse_initializer:
        names = [t.values.name for t in graph_proto.sparse_initializer]
        own.append(("sparse_initializer", ", ".join(names), "sparse tensors"))
    init_names = {t.name for t in graph_proto.initializer}
    for vi in graph_proto.input if main else []:
        problem = None if vi.name in init_names else _elem_problem(vi.type)
        if problem:
            own.append(("dtype", f"input {vi.name}", problem))
    for tensor in graph_proto.initializer:
        problem = _dtype_problem(tensor.data_type) if tensor.name in reads else None
        if problem:
            own.append(("dtype", f"initializer {tensor.name}", problem))
    return own, nested


def _node_problems(node: onnx.NodeProto, name: str, opset: int) -> list[Problem]:
    op = node.op_type
    problems = []
    own = node.domain == EQSAT_DOMAIN
    if node.domain not in DEFAULT_DOMAINS and not own:
        problems.append((op, name, f"custom domain {node.domain!r}"))
    elif not own and op in SHADOWED:
        why = "ONNX's operator of this name could not be expanded into operators eqsat implements"
        problems.append((op, name, why))
    elif op not in IMPORTER_OPS and not ops.is_supported(RENAMED.get(op, op)):
        problems.append((op, name, "operator not implemented"))
    elif not own and op not in IMPORTER_OPS and schema_version(op, opset) is None:
        problems.append((op, name, f"not an ONNX operator at opset {opset}"))
    elif op not in IMPORTER_OPS:
        declared = ops.OPS[RENAMED.get(op, op)].attrs
        unknown = sorted(
            a.name
            for a in node.attribute
            if a.name not in declared and a.name not in UPGRADED_ATTRS
        )
        if unknown:
            problems.append((op, name, f"unsupported attribute(s) {unknown}"))
    for attr in node.attribute:
        if attr.type not in _ATTRIBUTE_KINDS:
            kind = onnx.AttributeProto.AttributeType.Name(attr.type)
            problems.append((op, name, f"attribute {attr.name!r} of kind {kind}"))
        elif attr.type == onnx.AttributeProto.TENSOR:
            problem = _dtype_problem(attr.t.data_type)
            if problem:
                problems.append((op, name, f"attribute {attr.name!r}: {problem}"))
    return problems


_ATTRIBUTE_KINDS = {
    getattr(onnx.AttributeProto, kind)
    for kind in ("FLOAT", "INT", "STRING", "TENSOR", "GRAPH", "FLOATS", "INTS", "STRINGS")
}


# ---------------------------------------------------------------------------------- order
def topological_order(proto: onnx.GraphProto) -> list[int]:
    """Node indices in an order where producers come first (exporters do not always ensure it)."""
    produced_by: dict[str, int] = {}
    for i, node in enumerate(proto.node):
        for out in node.output:
            if out and produced_by.setdefault(out, i) != i:
                raise ModelLoadError(
                    f"value {out!r} is produced by two nodes ({_node_label(proto, produced_by[out])}"
                    f" and {_node_label(proto, i)}); ONNX graphs assign each name once"
                )
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def needs(i: int) -> list[str]:
        names = [x for x in proto.node[i].input if x]
        for attr in proto.node[i].attribute:
            if attr.type == GRAPH:
                names += outer_reads(attr.g)
        return names

    for start in range(len(proto.node)):
        if state.get(start):
            continue
        state[start] = 1
        stack = [(start, iter(needs(start)))]
        while stack:
            index, pending = stack[-1]
            for name in pending:
                producer = produced_by.get(name)
                if producer is None or state.get(producer) == 2:
                    continue
                if state.get(producer) == 1:
                    raise ModelLoadError(
                        f"the graph has a cycle: node {_node_label(proto, producer)} needs "
                        f"{name!r}, which depends on its own output"
                    )
                state[producer] = 1
                stack.append((producer, iter(needs(producer))))
                break
            else:
                stack.pop()
                state[index] = 2
                order.append(index)
    return order


def _node_label(proto: onnx.GraphProto, index: int) -> str:
    node = proto.node[index]
    return f"{node.name or f'{node.op_type}_{index}'!r} ({node.op_type})"


def outer_reads(proto: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from enclosing scopes (its own subgraphs' included)."""
    own = {t.name for t in proto.initializer} | {o for n in proto.node for o in n.output}
    own |= {vi.name for vi in proto.input}
    reads = [vi.name for vi in proto.output if vi.name not in own]
    for node in proto.node:
        reads += [x for x in node.input if x and x not in own]
        for attr in node.attribute:
            if attr.type == GRAPH:
                reads += [x for x in outer_reads(attr.g) if x not in own]
    return reads


def plain_attribute(attr: onnx.AttributeProto) -> Any:
    """An attribute that is neither a graph nor a tensor, as Python values (strings decoded)."""
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value

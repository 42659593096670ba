"""Standard operators that eqsat does not implement, expanded into ONNX's own definition of them.

Many newer ONNX operators are defined by the standard as a function of older ones:
RotaryEmbedding (opset 23), Swish (24), AffineGrid (20), CenterCropPad (18), the loss operators,
and others. A model that uses one, where eqsat has no operator of that name,
has the node replaced at load by the body ONNX's schema gives for the model's opset (built for
the node's attributes and input types where the body depends on them), so that it imports,
optimizes and compiles like the operators it is made of. The bodies are inlined by
``onnx.inliner``, which names their internals apart and resolves their attribute references.
Operators eqsat implements are never expanded, so nothing changes for models without such ops,
but for ONNX's Attention (opset 23), whose name eqsat's own fused attention op shares
(:data:`eqsat.onnx_read.SHADOWED`): it is always expanded.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
import onnx.inliner
import onnx.shape_inference
from onnx import defs

from eqsat import ops
from eqsat.errors import ModelLoadError
from eqsat.onnx_read import IMPORTER_OPS, SHADOWED
from eqsat.onnx_upgrade import RENAMED

# The domain the expanded calls are given while they are model-local functions, before inlining.
EXPANDED_DOMAIN = "eqsat.expanded"
# Rounds of expansion: definitions that use defined operators, which use others, ...
_MAX_DEPTH = 4
# Initializers of at least this many bytes are left out of the copy that is expanded.
_LIGHT_BYTES = 1 << 20
_STANDARD = ("", "ai.onnx")


def expandable(op: str, domain: str, opset: int) -> bool:
    """Whether a node of ``op`` is one eqsat expands: a standard operator it does not implement,
    that ONNX defines as a function at ``opset``."""
    if domain not in _STANDARD or _implemented(op):
        return False
    schema = _schema(op, opset)
    if schema is None:
        return False
    return bool(_version(schema.function_opset_versions, opset)) or bool(
        _version(schema.context_dependent_function_opset_versions, opset)
    )


def expand_standard_functions(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` with every :func:`expandable` node of its main graph and subgraphs replaced by
    its ONNX function body (the model itself when there is none). Bodies that use such operators
    themselves (SoftmaxCrossEntropyLoss's NegativeLogLikelihoodLoss) are expanded in turn. A node
    whose definition needs an operator eqsat has neither implemented nor can expand (Bernoulli's
    random numbers) is left as it is, to be reported by its own name.

    The work is done on a copy without the large weights (ONNX's inliner and shape inference
    serialize the model, which fails past protobuf's 2 GB), which get their data back at the end.
    """
    if not _expandable_nodes(model, opset):
        return model
    expanded = _expand(_without_weights(model), opset)
    weights = {t.name: t for t in model.graph.initializer}
    for tensor in expanded.graph.initializer:
        if tensor.name in weights and tensor.ByteSize() != weights[tensor.name].ByteSize():
            tensor.CopyFrom(weights[tensor.name])
    return expanded


def _expand(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """:func:`expand_standard_functions` on a model this module may change."""
    for _ in range(_MAX_DEPTH):
        nodes = _expandable_nodes(model, opset)
        if not nodes:
            return model
        types = _value_types(model) if any(_context_dependent(n, opset) for n in nodes) else {}
        functions = []
        for node in nodes:
            function = _body(node, opset, types)
            if not _runs_in_eqsat(function, opset):
                continue
            function.name = f"{node.op_type}_{len(model.functions) + len(functions)}"
            function.domain = EXPANDED_DOMAIN
            node.op_type, node.domain = function.name, EXPANDED_DOMAIN
            functions.append(function)
        if not functions:
            return model
        model.functions.extend(functions)
        if all(o.domain != EXPANDED_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(EXPANDED_DOMAIN, 1))
        model = _inline(model)
    return model


def _inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """The expanded calls inlined, their bodies converted to the model's opset where ONNX's
    version converter can (it needs the types of the bodies' values); as written otherwise (the
    operators of a body are mostly unchanged between its version and the model's)."""
    try:
        return onnx.inliner.inline_local_functions(model, convert_version=True)
    except Exception:
        pass
    opsets = {o.domain: o.version for o in model.opset_import}
    for function in model.functions:
        if function.domain == EXPANDED_DOMAIN:
            for imported in function.opset_import:
                if imported.domain in _STANDARD:
                    imported.version = opsets.get(imported.domain, opsets.get("", imported.version))
    try:
        return onnx.inliner.inline_local_functions(model, convert_version=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot expand standard operators into their ONNX definitions: {exc}"
        ) from None


def _implemented(op: str) -> bool:
    """Whether eqsat reads a standard node of ``op`` itself (its table, or the importer)."""
    return op in IMPORTER_OPS or (op not in SHADOWED and ops.is_supported(RENAMED.get(op, op)))


def _expandable_nodes(model: onnx.ModelProto, opset: int) -> list[onnx.NodeProto]:
    return [n for n in _all_nodes(model.graph.node) if expandable(n.op_type, n.domain, opset)]


def _runs_in_eqsat(function: onnx.FunctionProto, opset: int) -> bool:
    """Whether every operator of a function body is one eqsat implements or expands."""
    return all(
        node.domain in _STANDARD
        and (_implemented(node.op_type) or expandable(node.op_type, node.domain, opset))
        for node in _all_nodes(function.node)
    )


def _body(node: onnx.NodeProto, opset: int, types: dict[str, onnx.TypeProto]) -> onnx.FunctionProto:
    """The node's function body, after giving the node the schema's default attributes."""
    schema = _schema(node.op_type, opset)
    assert schema is not None
    given = {a.name for a in node.attribute}
    for name, attribute in schema.attributes.items():
        if name not in given and attribute.default_value.name:
            node.attribute.append(attribute.default_value)
    function = onnx.FunctionProto()
    version = _version(schema.context_dependent_function_opset_versions, opset)
    if version:
        missing = [name for name in node.input if name and name not in types]
        if missing:
            raise ModelLoadError(
                f"node {node.name or node.op_type!r} ({node.op_type}): eqsat expands this operator "
                f"into its ONNX definition, which needs the types of its inputs; {missing} have "
                "none (run onnx.shape_inference on the model, or give input_shapes)"
            )
        inputs = [types[name] if name else onnx.TypeProto() for name in node.input]
        body = schema.get_context_dependent_function_with_opset_version(
            version, node.SerializeToString(), [t.SerializeToString() for t in inputs]
        )
    else:
        body = schema.get_function_with_opset_version(
            _version(schema.function_opset_versions, opset)
        )
    function.ParseFromString(body)
    return function


def _context_dependent(node: onnx.NodeProto, opset: int) -> bool:
    schema = _schema(node.op_type, opset)
    return schema is not None and bool(
        _version(schema.context_dependent_function_opset_versions, opset)
    )


def _schema(op: str, opset: int) -> defs.OpSchema | None:
    try:
        return defs.get_schema(op, opset, "")
    except defs.SchemaError:
        return None


def _version(versions: list[int], opset: int) -> int:
    """The newest body version at or below the model's opset (0: none)."""
    return max((v for v in versions if v <= opset), default=0)


def _all_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` and the nodes of their subgraphs, at any depth."""
    found = []
    for node in nodes:
        found.append(node)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                found += _all_nodes(sub.node)
    return found


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every typed value of the model, as far as ONNX's shape inference types them."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # untyped values are reported by _body, naming the node
        inferred = model
    graph = inferred.graph
    types = {
        v.name: v.type
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.WhichOneof("value")
    }
    for tensor in graph.initializer:
        types[tensor.name] = onnx.helper.make_tensor_type_proto(tensor.data_type, tensor.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD:
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = onnx.helper.make_tensor_type_proto(
                        attribute.t.data_type, attribute.t.dims
                    )
    return types


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their type and dims but not their data: shape inference
    and the inliner read only small ones (shape tensors), and with its weights a model may pass
    protobuf's 2 GB limit when they serialize it, or take seconds to copy, for nothing."""
    light = onnx.ModelProto()
    if model.ByteSize() < _LIGHT_BYTES:
        light.CopyFrom(model)
    else:
        _copy_light(model, light)
    return light


def _copy_light(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    weights = list(model.graph.initializer)
    del model.graph.initializer[:]  # copy the rest without them, then put them back
    try:
        light.CopyFrom(model)
    finally:
        model.graph.initializer.extend(weights)
    for tensor in weights:
        kept = light.graph.initializer.add()
        if tensor.ByteSize() < _LIGHT_BYTES:
            kept.CopyFrom(tensor)
        else:
            kept.name, kept.data_type = tensor.name, tensor.data_type
            kept.dims.extend(tensor.dims)

"""ONNX import and export.

:func:`load` reads a model (path, bytes or ``onnx.ModelProto``) into a static-shape :class:`Graph`:
symbolic input dimensions are specialized to ``input_shapes``, inputs named in ``constants`` become
constants, model-local functions are inlined, older-opset nodes are rewritten into their opset-21
form, ``If`` nodes whose condition is known are inlined, and every node whose inputs are known at
compile time (shape arithmetic above all: Shape, Gather, Concat, Range, ConstantOfShape, ...) is
folded into a constant.

:func:`to_onnx` and :func:`save` (from :mod:`eqsat.onnx_export`) write a Graph back as an opset-21
model that ``onnx.checker`` accepts.

Every failure is an :class:`~eqsat.errors.EqsatError` that names the file and, where there is one,
the node, op or input; nothing from protobuf, onnx or numpy escapes as a bare traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from eqsat import ops
from eqsat.errors import DataDependentShapeError, EqsatError, InputError, ModelLoadError, ShapeError
from eqsat.errors import UnsupportedOperatorError as Unsupported
from eqsat.ir import Graph, Value
from eqsat.onnx_contrib import expand_contrib_ops
from eqsat.onnx_export import EXPORT_OPSET, save, to_onnx
from eqsat.onnx_functions import expand_standard_functions
from eqsat.onnx_loop import unroll_loop, unroll_scan
from eqsat.onnx_read import (
    EQSAT_DOMAIN,
    GRAPH,
    SEQUENCE_OPS,
    ModelSource,
    check_supported,
    default_opset,
    graph_problems,
    np_dtype,
    plain_attribute,
    read_model,
    schema_version,
    topological_order,
)
from eqsat.onnx_sequence import SequenceValue, import_sequence_op
from eqsat.onnx_upgrade import RENAMED, upgrade
from eqsat.tail import build_tail, split_reason, tail_reads

__all__ = ["load", "load_proto", "read_model", "save", "to_onnx"]

MIN_OPSET = 1  # onnx_legacy and onnx_upgrade know every change since opset 1 that matters
# Ops whose declared outputs all count (Split's equal parts, If's branch outputs, the training
# mode of an old BatchNormalization), so unused ones are kept.
COUNTED_OUTPUTS = {"Split", "If", "BatchNormalization"}


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
    model, where = read_model(source)
    return load_proto(model, where, input_shapes, constants)


def load_proto(
    model: onnx.ModelProto,
    where: str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constants: Mapping[str, Any] | None = None,
    walks: dict[str, Any] | None = None,
) -> Graph:
    """:func:`load` for a model already read by :func:`read_model`; errors name ``where``.

    ``walks``: a dict kept by a caller that loads the same ``model`` again and again (a run-time
    tail, once per run): what depends only on the proto (its check, names and node orders) is
    computed on the first load and read from there afterwards."""
    try:
        return _load(model, dict(input_shapes or {}), dict(constants or {}), walks)
    except EqsatError as exc:
        # Keep the type (and UnsupportedOperatorError.unsupported); say which model it is about.
        if where != "the given ModelProto" and exc.args and isinstance(exc.args[0], str):
            exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
        raise


def _load(
    model: onnx.ModelProto, input_shapes: dict, constants: dict, walks: dict | None = None
) -> Graph:
    opset = default_opset(model)
    if opset is None:
        domains = sorted(o.domain for o in model.opset_import)
        raise ModelLoadError(f"the model imports no standard ONNX opset (only domains {domains})")
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"opset {opset} is older than the oldest supported ({MIN_OPSET}); upgrade the model "
            "with onnx.version_converter first"
        )
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise ModelLoadError(f"cannot inline the model's local functions: {exc}") from None
    model = expand_contrib_ops(model)
    if walks is None:
        model = expand_standard_functions(model, opset)
    else:  # a tail, loaded on every run: look for operators to expand once
        if "expanded" not in walks:
            walks["expanded"] = expand_standard_functions(model, opset)
        model = walks["expanded"]
    if walks is None or not walks.get("checked"):
        check_supported(model.graph, opset)
        if walks is not None:
            walks["checked"] = True
    importer = _Importer(opset, model.graph, list(model.opset_import), walks)
    graph = importer.import_main(input_shapes, constants)
    graph.opset = EXPORT_OPSET
    graph.fold_constants()
    return graph


class _Scope:
    """ONNX names visible at one place: a graph's own values over those of enclosing scopes.

    The IR value behind an ONNX name may be named differently (when an inlined If branch reuses a
    name, or a name clashes with one an upgrade made), so lookups always go through a scope.
    """

    def __init__(self, graph: Graph, parent: _Scope | None = None, prefix: str | None = None):
        self.graph = graph
        self.parent = parent
        self.names: dict[str, Value] = {}
        # Put before the IR names of the values made here: an unrolled Loop or Scan body's values
        # must not take the names of the model's own (its outputs' above all).
        self.prefix = prefix if prefix is not None else (parent.prefix if parent else "")

    def find(self, name: str) -> Value | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None


class _Importer:
    def __init__(
        self,
        opset: int,
        proto: onnx.GraphProto,
        opset_import: list[onnx.OperatorSetIdProto],
        walks: dict | None = None,
    ):
        self.opset = opset
        self.proto = proto
        # The model's opset imports, which a run-time tail (kept as ONNX nodes) needs.
        self.opset_import = opset_import
        self.walks: dict[str, Any] = {} if walks is None else walks
        if "names" not in self.walks:
            self.walks["names"], self.walks["reads"] = _all_names(proto), _all_reads(proto)
            self.walks["orders"] = {}
        self.reserved = set(self.walks["names"])  # names an upgrade's constants must not take
        self.reads = self.walks["reads"]
        self.node_names: set[str] = set()

    def fresh(self, graph: Graph, hint: str) -> str:
        name, k = hint, 0
        while name in self.reserved or graph.lookup(name) is not None:
            k += 1
            name = f"{hint}_{k}"
        self.reserved.add(name)
        return name

    def import_main(self, input_shapes: dict, constants: dict) -> Graph:
        proto = self.proto
        graph = Graph(proto.name or "model")
        scope = _Scope(graph)
        init_names = {t.name for t in proto.initializer}
        real_inputs = [vi for vi in proto.input if vi.name not in init_names]
        known = [vi.name for vi in real_inputs]
        if len(set(known)) != len(known):
            twice = sorted({n for n in known if known.count(n) > 1})
            raise ModelLoadError(f"inputs {twice} are declared more than once")
        if not proto.output:
            raise ModelLoadError("the graph has no outputs")
        for what, names in (("input_shapes", input_shapes), ("constants", constants)):
            for name in names:
                if name not in known:
                    raise InputError(
                        f"{what} names {name!r}, which is not an input of the model; "
                        f"its inputs are {known}"
                    )
        both = sorted(set(input_shapes) & set(constants))
        if both:
            raise InputError(f"inputs {both} are named in both input_shapes and constants")
        for tensor in proto.initializer:
            self._constant(scope, self._tensor(tensor, f"initializer {tensor.name!r}"), tensor.name)
        dims = _dim_bindings(real_inputs, input_shapes, constants)
        unresolved = []
        for vi in real_inputs:
            dtype = np_dtype(vi.type.tensor_type.elem_type, f"input {vi.name}")
            if vi.name in constants:
                array = _bound_constant(vi, constants[vi.name], dtype)
                scope.names[vi.name] = graph.constant(array, vi.name)
                continue
            shape = _input_shape(vi, input_shapes.get(vi.name), dims)
            if shape is None:
                unresolved.append(vi)
                continue
            scope.names[vi.name] = graph.input(vi.name, shape, dtype)
        if unresolved:
            described = "; ".join(f"{vi.name!r} has shape {_declared(vi)}" for vi in unresolved)
            templates = {vi.name: _template(vi) for vi in unresolved}
            example = ", ".join(
                f"{name!r}: ({dims}{'' if ',' in dims or dims == '...' else ','})"
                for name, dims in templates.items()
            )
            flags = " ".join(
                f"--shape {name}={dims.replace(' ', '')}" for name, dims in templates.items()
            )
            error = ShapeError(
                f"input shapes are not static: {described}. Pass input_shapes={{{example}}} "
                f"with a size for each '?' (CLI: {flags})"
            )
            # For callers that want to show the signature (eqsat info): name -> declared dims.
            error.unresolved_inputs = {vi.name: _declared(vi) for vi in unresolved}  # type: ignore[attr-defined]
            raise error
        tail_nodes, dynamic, first = self._import_main_nodes(proto, scope)
        static_outputs = [vi.name for vi in proto.output if vi.name not in dynamic]
        graph.outputs = [self._output(scope, name) for name in static_outputs]
        if tail_nodes:
            self._split_tail(graph, scope, tail_nodes, dynamic, first)
        return graph

    def _import_main_nodes(
        self, proto: onnx.GraphProto, scope: _Scope
    ) -> tuple[list[onnx.NodeProto], set[str], str]:
        """Import the main graph's nodes; those whose shapes depend on the data, and every node
        that reads what they make, are set aside (in order) for the run-time tail.

        Returns (tail nodes, the ONNX names they make, the node where the tail starts)."""
        tail: list[onnx.NodeProto] = []
        dynamic: set[str] = set()
        first = ""
        for index in self._order(proto):
            node = proto.node[index]
            if tail and tail_reads(node) & dynamic:
                tail.append(node)
                dynamic.update(o for o in node.output if o)
                continue
            name = self._node_name(scope.graph, node.name or f"{node.op_type}_{index}")
            try:
                self._import_one(node, name, scope)
            except DataDependentShapeError as exc:
                tail.append(node)
                dynamic.update(o for o in node.output if o)
                first = first or split_reason(exc)
        return tail, dynamic, first

    def _split_tail(
        self,
        graph: Graph,
        scope: _Scope,
        nodes: list[onnx.NodeProto],
        dynamic: set[str],
        first: str,
    ) -> None:
        """Give ``graph`` its :class:`~eqsat.tail.RuntimeTail`: the static values the tail reads
        become extra outputs after the model's own (constants are copied into the tail)."""
        boundary: dict[str, Value] = {}
        for node in nodes:
            for name in sorted(tail_reads(node) - dynamic):
                value = self._read(scope, name, f"node {node.name!r} ({node.op_type})")
                if isinstance(value, SequenceValue):
                    why = f"reads the sequence {name!r} across into the run-time tail"
                    raise Unsupported([(node.op_type, node.name, why)])
                boundary[name] = value
        index = {id(v): i for i, v in enumerate(graph.outputs)}
        static_index: dict[str, int] = {}
        for name, value in boundary.items():
            if value.const is not None:
                continue
            if id(value) not in index:
                index[id(value)] = len(graph.outputs)
                graph.outputs.append(value)
            static_index[name] = index[id(value)]
        statics = iter(range(len(graph.outputs)))
        outputs = [
            (vi.name, None if vi.name in dynamic else next(statics)) for vi in self.proto.output
        ]
        graph.tail = build_tail(nodes, boundary, outputs, static_index, self.opset_import, first)

    def _output(self, scope: _Scope, name: str) -> Value:
        """A graph output keeps its ONNX name, even when the value inside was renamed."""
        value = self._read(scope, name, "graph output")
        if isinstance(value, SequenceValue):
            raise Unsupported([("output", name, "a sequence value: eqsat returns tensors only")])
        graph = scope.graph
        if value.name != name and graph.lookup(name) is None:
            node = graph.add_node("Identity", [value], [name], name=self._node_name(graph, name))
            value = node.outputs[0]
        return value

    def _constant(self, scope: _Scope, array: np.ndarray, name: str) -> Value:
        value = scope.graph.constant(array, name)
        scope.names[name] = value
        return value

    def _tensor(self, tensor: onnx.TensorProto, what: str) -> np.ndarray:
        known = self.walks.get("tensors", {}).get(id(tensor))
        if known is not None:  # a proto loaded again (a run-time tail): decoded once, read-only
            return known[1]
        np_dtype(tensor.data_type, what)
        try:
            array = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise ModelLoadError(f"{what}: unreadable tensor data: {exc}") from None
        if self.walks.get("keep_tensors"):
            # Faster R-CNN's tail holds its box head's 51 MB of weights: 34 ms a run to decode.
            array.flags.writeable = False
            self.walks.setdefault("tensors", {})[id(tensor)] = (tensor, array)
        return array

    def _read(self, scope: _Scope, name: str, what: str) -> Value:
        value = scope.find(name)
        if value is None:
            raise ModelLoadError(
                f"{what} reads {name!r}, which no node, input or initializer produces"
            )
        return value

    def _node_name(self, graph: Graph, hint: str) -> str:
        name = hint
        while name in self.node_names:
            name = graph.fresh_node_name(hint)
        self.node_names.add(name)
        return name

    # ------------------------------------------------------------------------------- nodes
    def _import_nodes(self, proto: onnx.GraphProto, scope: _Scope) -> None:
        for index in self._order(proto):
            node = proto.node[index]
            name = self._node_name(scope.graph, node.name or f"{node.op_type}_{index}")
            self._import_one(node, name, scope)

    def _order(self, proto: onnx.GraphProto) -> list[int]:
        """The graph's (or a subgraph's) nodes in topological order, found once per proto."""
        orders = self.walks["orders"]
        if id(proto) not in orders:
            orders[id(proto)] = (proto, topological_order(proto))  # the proto keeps its id
        return orders[id(proto)][1]

    def _import_one(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        try:
            self._import_node(node, name, scope)
        except EqsatError:
            raise
        except Exception as exc:  # a dependency failing on odd input: still say where
            raise ModelLoadError(
                f"node {name!r} ({node.op_type}) cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc

    def _import_node(self, node: onnx.NodeProto, name: str, scope: _Scope) -> None:
        op, graph = node.op_type, scope.graph
        what = f"node {name!r} ({op})"
        inputs = [self._read(scope, i, what) if i else None for i in node.input]
        while inputs and inputs[-1] is None:
            inputs.pop()
        outputs = list(node.output)
        if op == "Loop":
            unroll_loop(self, node, name, scope)
            return
        if op == "Scan":
            unroll_scan(self, node, name, scope)
            return
        if op in SEQUENCE_OPS:
            import_sequence_op(self, node, name, scope, inputs)
            return
        if any(isinstance(v, SequenceValue) for v in inputs):
            raise Unsupported([(op, name, "reads a sequence value")])
        if op == "If" and inputs and inputs[0] is not None and inputs[0].const is not None:
            self._inline_if(node, bool(np.asarray(inputs[0].const).reshape(-1)[0]), scope)
            return
        branches = [a.g for a in node.attribute if a.type == GRAPH]
        found = [p for b in branches for p in graph_problems(b, self.opset, main=False)[0]]
        if found:  # both branches will be imported: report all of their problems together
            nested = [p for b in branches for p in graph_problems(b, self.opset, main=False)[1]]
            raise Unsupported(found + nested)
        misfit = ""
        try:
            attrs = {a.name: self._attribute(a, scope, name) for a in node.attribute}
        except ShapeError as exc:
            if op != "If" or isinstance(exc, DataDependentShapeError):
                raise
            # A branch that cannot be typed with these shapes (Silero VAD's 8 kHz branch given a
            # 16 kHz chunk) may never run: which one does is known only at run time.
            misfit = f"; a branch does not fit these shapes ({exc})"
        if op == "If" and (misfit or scope.graph.outer is None):
            # The optimizer does not rewrite across control flow (a graph holding an If was kept
            # unoptimized). In the run-time tail the If is compiled, optimized, for each condition
            # value it meets (TailExecutable).
            sources = _source_inputs(inputs[0]) if inputs and inputs[0] is not None else []
            raise DataDependentShapeError(
                f"{what}: which branch runs depends on the input(s) {sources} at run time{misfit}; "
                "it runs in the run-time tail, compiled for each condition value it meets (bind "
                f"{sources} with constants= to compile the branch that runs with the rest)"
            ) from None
        if op == "Constant":
            if len(outputs) != 1 or not outputs[0]:
                raise ModelLoadError(f"{what} must have exactly one output")
            self._constant(scope, _constant_value(attrs, name), outputs[0])
            return
        if op not in COUNTED_OUTPUTS:
            while outputs and outputs[-1] == "":
                outputs.pop()
            # Outputs nobody reads go, e.g. the training-only statistics of an old BatchNormalization.
            known = ops.OPS.get(RENAMED.get(op, op))
            least = known.min_outputs if known is not None else 1
            while len(outputs) > least and outputs[-1] not in self.reads:
                outputs.pop()
        if node.domain == EQSAT_DOMAIN:  # eqsat's own op, exported by to_onnx: as it is
            ir_names = [(graph.fresh_name(scope.prefix + o) if o else "") for o in outputs]
            graph.add_node(op, inputs, ir_names, attrs, name=name, domain=EQSAT_DOMAIN)
            self._bind(scope, outputs, ir_names)
            return
        version = schema_version(op, self.opset) or self.opset
        up = upgrade(
            graph,
            op,
            version,
            inputs,
            attrs,
            name,
            num_outputs=len(outputs),
            namer=lambda hint: self.fresh(graph, hint),
        )
        ir_names = [(graph.fresh_name(scope.prefix + o) if o else "") for o in outputs]
        if up.expand is not None:
            up.expand(ir_names)
        else:
            graph.add_node(up.op, up.inputs, ir_names, up.attrs, name=name)
        self._bind(scope, outputs, ir_names)

    def _bind(self, scope: _Scope, outputs: list[str], ir_names: list[str]) -> None:
        graph = scope.graph
        for onnx_name, ir_name in zip(outputs, ir_names, strict=True):
            if onnx_name and ir_name in graph.values:
                scope.names[onnx_name] = graph.values[ir_name]

    def _attribute(self, attr: onnx.AttributeProto, scope: _Scope, node: str) -> Any:
        if attr.type == GRAPH:
            return self._subgraph(attr.g, scope, node)
        if attr.type == onnx.AttributeProto.TENSOR:
            return self._tensor(attr.t, f"attribute {attr.name!r} of node {node!r}")
        return plain_attribute(attr)

    def _subgraph(self, proto: onnx.GraphProto, outer: _Scope, node: str) -> Graph:
        if proto.input:
            reason = "subgraphs with inputs (Loop/Scan bodies) are not supported"
            raise Unsupported([("subgraph", node, reason)])
        sub = Graph(proto.name or f"{node}_branch", outer=outer.graph)
        scope = _Scope(sub, outer)
        for tensor in proto.initializer:
            array = self._tensor(tensor, f"initializer {tensor.name!r}")
            self._constant(scope, array, tensor.name)
        self._import_nodes(proto, scope)
        sub.outputs = [self._read(scope, vi.name, f"output of {sub.name!r}") for vi in proto.output]
        return sub

    def _inline_if(self, node: onnx.NodeProto, cond: bool, scope: _Scope) -> None:
        """An If whose condition is known: import the branch that runs, in a scope of its own."""
        key = "then_branch" if cond else "else_branch"
        branch = next((a.g for a in node.attribute if a.name == key and a.type == GRAPH), None)
        if branch is None:
            raise ModelLoadError(f"If node {node.name!r} has no {key}")
        if ("branch", id(branch)) not in self.walks:
            check_supported(branch, self.opset, main=False)
            self.walks["branch", id(branch)] = branch  # checked; held, so its id stays its own
        graph = scope.graph
        before = set(map(id, graph.values.values()))
        inner = _Scope(graph, scope)
        for tensor in branch.initializer:
            array = self._tensor(tensor, f"initializer {tensor.name!r}")
            inner.names[tensor.name] = graph.constant(array, tensor.name)
        self._import_nodes(branch, inner)
        if len(branch.output) < len([o for o in node.output if o]):
            raise ModelLoadError(f"If node {node.name!r}: {key} has too few outputs")
        for out_name, vi in zip(node.output, branch.output, strict=False):
            if not out_name:
                continue
            value = self._read(inner, vi.name, f"output of {key}")
            if id(value) not in before and graph.lookup(out_name) is None:
                # Made by the branch: it takes the If output's name, so no Identity is needed.
                del graph.values[value.name]
                value.name = out_name
                graph.values[out_name] = value
                before.add(id(value))
            scope.names[out_name] = value


def _source_inputs(value: Value) -> list[str]:
    """The graph inputs that ``value`` is computed from (what to bind to make it a constant)."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen or v.const is not None:
            continue
        seen.add(id(v))
        if v.producer is None:
            found[v.name] = None
        else:
            stack.extend(i for i in v.producer.inputs if i is not None)
    return list(found)


def _constant_value(attrs: dict[str, Any], node: str) -> np.ndarray:
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
    raise Unsupported([("Constant", node, f"unsupported form {sorted(attrs)}")])


def _all_names(proto: onnx.GraphProto) -> set[str]:
    names = {t.name for t in proto.initializer} | {vi.name for vi in proto.input}
    for node in proto.node:
        names.update(node.output)
        for attr in node.attribute:
            if attr.type == GRAPH:
                names |= _all_names(attr.g)
    return names


def _all_reads(proto: onnx.GraphProto) -> set[str]:
    """Names some node (in any subgraph) reads, or some graph returns."""
    reads = {o.name for o in proto.output}
    for node in proto.node:
        reads.update(node.input)
        for attr in node.attribute:
            if attr.type == GRAPH:
                reads |= _all_reads(attr.g)
    reads.discard("")
    return reads


# ---------------------------------------------------------------------------------- shapes
def _dims(vi: onnx.ValueInfoProto) -> list[Any] | None:
    """Declared dims: ints where fixed, dim_param strings (or None) where symbolic."""
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
        for d in tensor_type.shape.dim
    ]


def _declared(vi: onnx.ValueInfoProto) -> str:
    dims = _dims(vi)
    if dims is None:
        return "unknown (no shape declared)"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _template(vi: onnx.ValueInfoProto) -> str:
    """The declared shape with '?' for each size the caller must choose: "?, 3, 48, ?"."""
    dims = _dims(vi)
    if dims is None:
        return "..."
    return ", ".join(str(d) if isinstance(d, int) else "?" for d in dims)


def _given_shape(vi: onnx.ValueInfoProto, given: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in given)
    except (TypeError, ValueError):
        raise InputError(
            f"input_shapes[{vi.name!r}]: expected a sequence of ints, got {given!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise ShapeError(f"input {vi.name!r}: negative dimension in given shape {list(shape)}")
    declared = _dims(vi)
    if declared is not None:
        if len(declared) != len(shape):
            raise ShapeError(
                f"input {vi.name!r}: given shape {list(shape)} has rank {len(shape)}, but the "
                f"model declares rank {len(declared)}: {_declared(vi)}"
            )
        for i, (dim, size) in enumerate(zip(declared, shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise ShapeError(
                    f"input {vi.name!r}: dimension {i} is fixed to {dim} by the model "
                    f"({_declared(vi)}), given {size}"
                )
    return shape


def _dim_bindings(inputs: list, input_shapes: dict, constants: dict) -> dict[str, int]:
    """Symbolic dim names bound by the given shapes, to resolve the same names elsewhere."""
    bound: dict[str, int] = {}
    for vi in inputs:
        given = input_shapes.get(vi.name)
        if given is None and vi.name in constants:
            given = np.shape(constants[vi.name])
        declared = _dims(vi)
        if given is None or declared is None:
            continue
        shape = _given_shape(vi, given)
        for dim, size in zip(declared, shape, strict=True):
            if isinstance(dim, str):
                bound.setdefault(dim, size)
    return bound


def _input_shape(vi: onnx.ValueInfoProto, given: Any, bound: dict[str, int]) -> tuple | None:
    if given is not None:
        return _given_shape(vi, given)
    declared = _dims(vi)
    if declared is None:
        return None
    resolved = [bound.get(d) if isinstance(d, str) else d for d in declared]
    if any(d is None for d in resolved):
        return None
    return tuple(resolved)


def _bound_constant(vi: onnx.ValueInfoProto, given: Any, dtype: np.dtype) -> np.ndarray:
    try:
        array = np.asarray(given)
    except Exception as exc:
        raise InputError(f"constants[{vi.name!r}]: not convertible to an array: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"constants[{vi.name!r}]: dtype {array.dtype} is not numeric")
    if array.dtype != dtype:
        cast = array.astype(dtype)
        if not np.can_cast(array.dtype, dtype, "same_kind") and not np.array_equal(cast, array):
            raise InputError(
                f"constants[{vi.name!r}]: the input has dtype {dtype}; the given {array.dtype} "
                "values do not convert exactly"
            )
        array = cast
    _given_shape(vi, array.shape)
    return array

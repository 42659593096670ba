"""Run-time tails: the part of a model whose shapes depend on the data.

eqsat compiles static shapes. A detector's post-processing is not static: NonZero of its scores,
NonMaxSuppression, a Reshape to a computed size; nor is an If on a run-time condition. Rather than
refuse such a model, :func:`eqsat.load` splits it where the first shape depends on a run-time
value (:class:`~eqsat.errors.DataDependentShapeError` from a shape rule):

* the **static part** is every node whose shapes are known at load time. It is an ordinary
  :class:`~eqsat.ir.Graph` that ``optimize`` rewrites and targets compile. Its outputs are the
  model's outputs it computes, then the values the tail reads (the *boundary*);
* the **tail** is every node that reads, directly or through others, a value whose shape depends
  on the data. It is kept as an ONNX model (the original nodes and opset) whose inputs are the
  boundary values; :attr:`Graph.tail <eqsat.ir.Graph>` holds it as a :class:`RuntimeTail`.

At run time (:class:`TailExecutable`, which every target returns for a graph with a tail) the
static part runs on its target, then the tail is loaded with each boundary value bound as a
constant: shapes are then known, every node folds through its numpy reference, and the outputs
are read off. The tail thus runs on the reference, one Python call per node, and costs a few
hundred microseconds per node at most; it is meant for post-processing (boxes, scores, NMS),
where the model's heavy layers come before it and run compiled. A tail steered only by If
conditions is compiled instead, once per condition value (:class:`TailExecutable`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.shape_inference
import onnx.version_converter
from onnx import helper, numpy_helper

from eqsat.errors import EqsatError, ShapeError
from eqsat.ir import Value
from eqsat.lowering.executable import Executable

# ONNX element types of the dtypes a boundary value may have.
_ELEM_TYPES = {
    np.dtype(t): helper.np_dtype_to_tensor_dtype(np.dtype(t))
    for t in (
        np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
    )
}  # fmt: skip


@dataclass
class RuntimeTail:
    """The data-dependent nodes of a model, run after its static part.

    ``model``: the tail as an ONNX model (inputs: the boundary values; outputs: the model outputs
    it computes). ``boundary``: for each tail input, the index of the static graph's output that
    feeds it. ``outputs``: the model's outputs in order, each ``(name, index)`` where ``index`` is
    the static output that holds it, or None when the tail computes it. ``first``: the node where
    the data-dependent shapes begin, with the reason, for reports.
    """

    model: onnx.ModelProto
    boundary: list[tuple[str, int]]
    outputs: list[tuple[str, int | None]]
    first: str
    ops: dict[str, int] = field(default_factory=dict)
    # What loading ``model`` computes from the proto alone, kept between runs (see load_proto).
    _walks: dict[str, Any] = field(
        default_factory=lambda: {"keep_tensors": True}, repr=False, compare=False
    )

    @property
    def num_nodes(self) -> int:
        return sum(self.ops.values())

    def describe(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items()))
        return f"run-time tail of {self.num_nodes} node(s) ({ops}), from {self.first}"

    def run(self, static: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs, given the static part's outputs in order."""
        from eqsat import tail_lean
        from eqsat.lowering import compile_graph
        from eqsat.onnx_io import load_proto

        bound = {name: np.asarray(static[index]) for name, index in self.boundary}
        if "lean" not in self._walks:
            self._walks["lean"] = tail_lean.plan(self.model)
        lean = self._walks["lean"]
        made: list[np.ndarray] | None = None
        if lean is not None:
            try:
                with collection_paused():
                    made = tail_lean.run(lean, bound)
            except Exception:  # anything it cannot do, the import below does (errors too)
                made = None
        if made is not None:
            computed = dict(zip((vi.name for vi in self.model.graph.output), made, strict=True))
            return {
                name: computed[name] if index is None else static[index]
                for name, index in self.outputs
            }
        with collection_paused():
            graph = load_proto(
                self.model, "the model's run-time tail", constants=bound, walks=self._walks
            )
            if graph.tail is None and all(v.const is not None for v in graph.outputs):
                made = [np.asarray(v.const) for v in graph.outputs]
            else:  # too large to fold, or shapes that depend on the tail's own data: run it
                exe = compile_graph(graph, "numpy")
                result = exe.run({})
                # By the model's names: a tail that splits again lists its own boundary values
                # among graph.outputs, and its run returns the model's outputs only.
                made = [result[vi.name] for vi in self.model.graph.output]
        computed = dict(zip((vi.name for vi in self.model.graph.output), made, strict=True))
        return {
            name: computed[name] if index is None else static[index] for name, index in self.outputs
        }


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (as it was after): loading a tail allocates tens
    of thousands of short-lived objects, which refcounting frees, but which the collector meets
    alive mid-run and promotes, so that every few runs it scanned the whole process (~180,000
    objects after an optimize: ~170 ms in a ~300 ms SSDlite run)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def split_reason(exc: EqsatError) -> str:
    """The first line of a shape rule's message, for :attr:`RuntimeTail.first`."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def tail_reads(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads: its inputs and what its subgraphs read from outer scopes."""
    from eqsat.onnx_read import GRAPH, outer_reads

    names = {i for i in node.input if i}
    for attr in node.attribute:
        if attr.type == GRAPH:
            names.update(outer_reads(attr.g))
    return names


def build_tail(
    nodes: list[onnx.NodeProto],
    boundary: Mapping[str, Value],
    outputs: list[tuple[str, int | None]],
    static_index: Mapping[str, int],
    opset_import: Sequence[onnx.OperatorSetIdProto],
    first: str,
) -> RuntimeTail:
    """The :class:`RuntimeTail` of ``nodes``: ``boundary`` maps each name they read from the
    static part to its value (constants become the tail's initializers; the others its inputs,
    fed from static output ``static_index[name]``); ``outputs`` as :class:`RuntimeTail` keeps
    them."""
    inputs, initializers, fed = [], [], []
    for name, value in boundary.items():
        if value.const is not None:
            initializers.append(numpy_helper.from_array(np.asarray(value.const), name))
            continue
        if value.dtype not in _ELEM_TYPES:
            raise ShapeError(f"value {name!r} of dtype {value.dtype} cannot feed the run-time tail")
        inputs.append(helper.make_tensor_value_info(name, _ELEM_TYPES[value.dtype], value.shape))
        fed.append((name, static_index[name]))
    made = [onnx.ValueInfoProto(name=name) for name, index in outputs if index is None]
    graph = helper.make_graph(nodes, "runtime_tail", inputs, made, initializers)
    model = helper.make_model(graph, opset_imports=list(opset_import))
    # The outputs' dtypes (ranks, where known), which an exported model must declare; an op
    # that onnx cannot infer leaves them untyped.
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    ops: dict[str, int] = {}
    for node in nodes:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return RuntimeTail(model, fed, outputs, first, ops)


def export_tail(proto: onnx.GraphProto, tail: RuntimeTail, opset: int) -> None:
    """Append ``tail`` to ``proto``, the exported static part (whose outputs are the static
    graph's, in order), so that the ONNX graph computes the model's outputs again.

    The tail's nodes are converted to ``opset`` by onnx's version converter first."""
    model = tail.model
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) != opset:
        try:
            model = onnx.version_converter.convert_version(model, opset)
        except Exception as exc:  # the converter's C++ core failing on some op
            raise EqsatError(
                f"cannot export the run-time tail ({tail.describe()}) at opset {opset}: {exc}"
            ) from None
    static_outputs = list(proto.output)
    for name, index in tail.boundary:
        exported = static_outputs[index].name
        if exported != name:
            proto.node.append(helper.make_node("Identity", [exported], [name]))
    have = {t.name for t in proto.initializer}
    proto.initializer.extend(t for t in model.graph.initializer if t.name not in have)
    proto.node.extend(model.graph.node)
    del proto.output[:]
    made = {vi.name: vi for vi in model.graph.output}
    proto.output.extend(
        made[name] if index is None else static_outputs[index] for name, index in tail.outputs
    )


# Compiled versions of a tail that one executable keeps, one per value of its conditions.
MAX_SPECIALIZED = 4


class TailExecutable(Executable):
    """A compiled static part followed by its graph's :class:`RuntimeTail`.

    ``run`` and every attribute but the graph's go to the static part's executable (``report``,
    ``profile``, ``memory`` ...), whose outputs include the boundary values the tail reads.

    A tail that the static part steers through one-element bools (the conditions of its Ifs:
    Silero VAD picks its 8 or 16 kHz branch by ``sr``) is compiled too, given ``compile_graph``:
    on the first run with each value of those conditions, the tail is loaded with them bound
    (the other boundary values stay inputs, of their static shapes), and when that leaves a
    static graph, ``compile_graph`` compiles it; later runs with those conditions run it
    (``specialized`` holds them, None where a value did not give a static graph). Other tails,
    and conditions past :data:`MAX_SPECIALIZED` values, run on the reference.
    """

    def __init__(
        self,
        static: Executable,
        tail: RuntimeTail,
        compile_graph: Callable[[Any], Executable] | None = None,
        blas: Any = None,
    ):
        super().__init__(static.graph)
        # The target's BLAS pin (enter/exit), held while the tail runs: OpenBLAS's own threads
        # stall on a busy machine (Faster R-CNN's box head, a 150x12544x1024 Gemm in its tail,
        # took 351 ms on two threads of the loaded 2-core machine).
        self._blas = blas
        self.static = static
        self.tail = tail
        self.target = static.target
        self._static_names = [v.name for v in static.graph.outputs]
        self._compile = compile_graph
        outputs = static.graph.outputs
        self._conditions = [
            name
            for name, index in tail.boundary
            if outputs[index].dtype == np.bool_ and outputs[index].size == 1
        ]
        self.specialized: dict[tuple[bool, ...], Executable | None] = {}
        # Bodies of the tail's long Loops, compiled once (eqsat.onnx_loop_compiled).
        self.loop_bodies: dict[Any, Executable | None] = {}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        result = self.static.run(feeds)
        static = [result[name] for name in self._static_names]
        if self._blas is None:
            return self._run_tail(static)
        self._blas.enter()
        try:
            return self._run_tail(static)
        finally:
            self._blas.exit()

    __call__ = run

    def _run_tail(self, static: list[np.ndarray]) -> dict[str, np.ndarray]:
        if self._conditions and self._compile is not None:
            values = {name: static[index] for name, index in self.tail.boundary}
            compiled = self._specialized(values)
            if compiled is not None:
                made = compiled.run({v.name: values[v.name] for v in compiled.input_specs})
                return {
                    name: made[name] if index is None else static[index]
                    for name, index in self.tail.outputs
                }
        from eqsat.onnx_loop_compiled import compiled_bodies

        with compiled_bodies(self._compile, self.loop_bodies):
            return self.tail.run(static)

    def _specialized(self, values: dict[str, np.ndarray]) -> Executable | None:
        key = tuple(bool(np.asarray(values[name]).reshape(-1)[0]) for name in self._conditions)
        if key not in self.specialized:
            if len(self.specialized) >= MAX_SPECIALIZED:
                return None
            self.specialized[key] = self._build({name: values[name] for name in self._conditions})
        return self.specialized[key]

    def _build(self, conditions: dict[str, np.ndarray]) -> Executable | None:
        from eqsat.onnx_io import load_proto

        assert self._compile is not None
        try:
            graph = load_proto(self.tail.model, "the model's run-time tail", constants=conditions)
            if graph.tail is not None:  # still data-dependent: stays on the reference
                return None
            return self._compile(graph)
        except EqsatError:  # the reference path reports it, naming the node, if it runs
            return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.static, name)


def with_tail(
    exe: Executable,
    tail: RuntimeTail | None,
    compile_graph: Callable[[Any], Executable] | None = None,
    blas: Any = None,
) -> Executable:
    """``exe`` itself, or a :class:`TailExecutable` when its graph has a run-time ``tail``
    (``compile_graph``, ``blas``: see TailExecutable)."""
    return exe if tail is None else TailExecutable(exe, tail, compile_graph, blas)


__all__ = [
    "RuntimeTail",
    "TailExecutable",
    "build_tail",
    "export_tail",
    "split_reason",
    "tail_reads",
    "with_tail",
]

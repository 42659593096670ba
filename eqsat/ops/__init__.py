"""The operator table: one :class:`OpDef` per operator, and everything else reads it from here.

An entry holds the op's arity, attribute defaults, shape/dtype rule (``infer``), numpy reference
(``reference``), cost terms (``cost``) and, for elementwise ops, its scalar form (``scalar``) from
which code generators build fused kernels. The families live in submodules (elementwise, nn,
reduce, tensor, control, detection, ...); each registers its ops with :func:`register` when imported.

Conventions every entry follows:

* ``infer(inputs, attrs, num_outputs) -> [(shape, dtype) | None, ...]``: ``inputs`` are
  :class:`~eqsat.ir.Value` (or ``None`` for an omitted optional input); a rule that needs an
  input's content reads ``Value.const`` via :func:`const_of` and raises :class:`ShapeError` when it is
  unknown. Entries for omitted optional outputs are ``None``.
* ``reference(inputs, attrs, outputs) -> [ndarray, ...]``: numpy arrays in, one array per output
  (``None`` for omitted ones); ``outputs`` are the node's output Values, for their dtypes.
* ``cost(inputs, outputs, attrs) -> Cost``: FLOPs and bytes moved for one execution.
* ``attrs`` always holds every declared attribute: defaults are filled in when a node is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqsat.errors import (
    DataDependentShapeError,
    EqsatError,
    InputError,
    ShapeError,
    UnsupportedOperatorError,
)
from eqsat.ir import Node, Value, subgraphs

TensorType = tuple[tuple[int, ...], np.dtype] | None
InferFn = Callable[[list[Value | None], dict[str, Any], int], list[TensorType]]
ReferenceFn = Callable[[list[np.ndarray | None], dict[str, Any], list[Value | None]], list[Any]]

# Sentinel for attributes that have no default and must be given.
REQUIRED = object()


@dataclass(frozen=True)
class Cost:
    """Work of one execution of a node: arithmetic and memory traffic."""

    flops: float
    bytes_read: float
    bytes_written: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops,
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
        )


def default_cost(flops_per_output: float = 0.0) -> Callable[..., Cost]:
    """Cost of an op that reads its inputs once and does ``flops_per_output`` per output element."""

    def cost(
        inputs: list[Value | None], outputs: list[Value | None], attrs: dict[str, Any]
    ) -> Cost:
        read = sum(v.nbytes for v in inputs if v is not None)
        written = sum(v.nbytes for v in outputs if v is not None)
        flops = flops_per_output * sum(v.size for v in outputs if v is not None)
        return Cost(float(flops), float(read), float(written))

    return cost


@dataclass(frozen=True)
class OpDef:
    """Everything eqsat knows about one operator."""

    name: str
    infer: InferFn
    reference: ReferenceFn
    cost: Callable[..., Cost] = field(default_factory=default_cost)
    min_inputs: int = 1
    max_inputs: int = 1
    min_outputs: int = 1
    max_outputs: int = 1
    attrs: dict[str, Any] = field(default_factory=dict)
    # Scalar form of an elementwise op: a template over its operands {0}, {1}, ... in the scalar
    # language that code generators understand (see eqsat.ops.elementwise.SCALAR_FUNCTIONS).
    scalar: str | None = None
    # Elementwise ops broadcast their inputs numpy-style and apply ``scalar`` per element.
    elementwise: bool = False
    # Ops whose result depends only on input shapes (Shape, Size) fold even for unknown inputs.
    shape_only: bool = False
    # Inputs read only for their dtype or shape (CastLike's target_type): a node folds when its
    # other inputs are known (``CastLike(alpha, x)`` of a constant alpha, as ONNX's function
    # bodies of Swish and AffineGrid write their constants).
    type_only_inputs: tuple[int, ...] = ()
    # Random or otherwise non-foldable ops (none in inference graphs so far).
    pure: bool = True
    doc: str = ""

    def complete_attrs(self, attrs: dict[str, Any], node: str) -> dict[str, Any]:
        full = {}
        for key, default in self.attrs.items():
            if key in attrs:
                full[key] = attrs[key]
            elif default is REQUIRED:
                raise ShapeError(
                    f"node {node!r} ({self.name}): required attribute {key!r} is missing"
                )
            else:
                full[key] = default
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise UnsupportedOperatorError(
                [(self.name, node, f"unsupported attribute(s) {sorted(unknown)}")]
            )
        return full

    def check_arity(self, num_inputs: int, num_outputs: int, node: str) -> None:
        if not self.min_inputs <= num_inputs <= self.max_inputs:
            raise ShapeError(
                f"node {node!r} ({self.name}): takes {self.min_inputs}..{self.max_inputs} inputs, "
                f"got {num_inputs}"
            )
        if not self.min_outputs <= num_outputs <= self.max_outputs:
            raise ShapeError(
                f"node {node!r} ({self.name}): has {self.min_outputs}..{self.max_outputs} outputs, "
                f"got {num_outputs}"
            )

    def foldable(self, node: Node) -> bool:
        if not self.pure:
            return False
        if self.shape_only:
            return True
        outer_reads = [v for sub in subgraphs(node) for v in sub.free_values()]
        read = [v for i, v in enumerate(node.inputs) if i not in self.type_only_inputs]
        return all(v is None or v.const is not None for v in [*read, *outer_reads])

    def evaluate(self, node: Node, arrays: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Run the numpy reference for ``node``, checking shapes and fixing dtypes of its results."""
        if node.outputs and all(v is None or v.size == 0 for v in node.outputs):
            # Empty results hold no values, so their shapes say everything. A detector's heads
            # run on zero boxes when nothing was found, and references need not handle that.
            return [None if v is None else np.zeros(v.shape, v.dtype) for v in node.outputs]
        try:
            results = self.reference(arrays, node.attrs, node.outputs)
        except InputError as exc:  # a fed value the op refuses: say which node refused it
            if f"node {node.name!r}" in str(exc):
                raise
            raise InputError(f"node {node.name!r} ({self.name}): {exc}") from None
        except EqsatError:
            raise
        except Exception as exc:  # a reference that fails is a bug or an input it cannot handle
            raise EqsatError(
                f"node {node.name!r} ({self.name}) failed to evaluate: {type(exc).__name__}: {exc}"
            ) from exc
        checked: list[np.ndarray | None] = []
        for value, result in zip(node.outputs, results, strict=False):
            if value is None:
                checked.append(None)
                continue
            array = np.asarray(result)
            if array.shape != value.shape:
                raise ShapeError(
                    f"node {node.name!r} ({self.name}): output {value.name!r} has shape "
                    f"{array.shape}, inferred {value.shape}"
                )
            if array.dtype != value.dtype:
                array = array.astype(value.dtype)
            checked.append(array)
        return checked


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise EqsatError(f"operator {opdef.name!r} is registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get(op: str, node: str = "?") -> OpDef:
    try:
        return OPS[op]
    except KeyError:
        raise UnsupportedOperatorError([(op, node, "operator not implemented")]) from None


def is_supported(op: str) -> bool:
    return op in OPS


# ------------------------------------------------------------------ helpers for the families
def const_of(value: Value | None, what: str) -> np.ndarray:
    """The compile-time content of an input a shape rule depends on, or a ShapeError."""
    if value is None:
        raise ShapeError(f"{what} is missing")
    if value.const is None:
        raise DataDependentShapeError(
            f"{what} ({value.name!r}) must be known at compile time; bind it with "
            f"constants= or give input_shapes= so it can be folded"
        )
    return value.const


def refuse_run_time(value: Value | None, op: str, what: str = "the data") -> None:
    """Raise :class:`DataDependentShapeError` when ``value``, whose content decides ``op``'s
    output shape (``what`` it depends on), is unknown at compile time."""
    if value is not None and value.const is None:
        raise DataDependentShapeError(
            f"{op} of the run-time value {value.name!r}: its output shape depends on {what} "
            "(eqsat.load runs such nodes in the graph's run-time tail; a graph built in Python "
            "must have static shapes)"
        )


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ShapeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast") from None


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def same_dtype(inputs: Sequence[Value | None], what: str = "inputs") -> np.dtype:
    dtypes = {v.dtype for v in inputs if v is not None}
    if len(dtypes) != 1:
        raise ShapeError(f"{what} must share one dtype, got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _load_families() -> None:
    # Imported for their registrations; fused ops derive from the base ops, so they come last.
    from eqsat.ops import (  # noqa: F401
        cache,
        control,
        conv,
        deform,
        detection,
        elementwise,
        nn,
        norm,
        quant,
        quant_linear,
        quant_tensor,
        recurrent,
        reduce,
        resize,
        shape,
        signal,
        tensor,
        tensor_extra,
    )

    importlib.import_module("eqsat.ops.fused")
    importlib.import_module("eqsat.ops.layout")


_load_families()

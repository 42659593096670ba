"""Control flow: ``If``, whose branches are :class:`~eqsat.ir.Graph` objects.

The branches are subgraphs built with ``Graph(outer=g)``: their nodes may read values of the
enclosing graph directly, and they take no inputs. Shapes are static, so both branches must produce
outputs of identical shapes and dtypes; the one exception is a condition known at compile time,
where only the branch that runs matters (and the node folds when everything it reads is constant).

The executors run If themselves with the enclosing graph's environment (see
:func:`eqsat.lowering.numpy.evaluate_graph`); the reference below serves constant folding, where
every value a branch reads from outside is a constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import DataDependentShapeError, ShapeError
from eqsat.ir import Graph, Value
from eqsat.ops import REQUIRED, Cost, OpDef, get, register


def _branches(attrs: dict[str, Any]) -> tuple[Graph, Graph]:
    branches = attrs["then_branch"], attrs["else_branch"]
    for key, branch in zip(("then_branch", "else_branch"), branches, strict=True):
        if not isinstance(branch, Graph):
            raise ShapeError(
                f"attribute {key!r} must be an eqsat Graph, got {type(branch).__name__}"
            )
    return branches


def _types(branch: Graph) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(v.shape, v.dtype) for v in branch.outputs]


def _if_infer(inputs: list[Value | None], attrs: dict[str, Any], num_outputs: int) -> list[Any]:
    cond = inputs[0]
    if cond.dtype != np.bool_ or cond.size != 1:
        raise ShapeError(f"condition must be a single bool, got {cond.dtype}{list(cond.shape)}")
    then_branch, else_branch = _branches(attrs)
    for key, branch in (("then_branch", then_branch), ("else_branch", else_branch)):
        if len(branch.outputs) != num_outputs:
            raise ShapeError(
                f"{key} has {len(branch.outputs)} outputs but the node has {num_outputs}"
            )
    then_types, else_types = _types(then_branch), _types(else_branch)
    if cond.const is not None:
        return then_types if bool(np.asarray(cond.const).reshape(-1)[0]) else else_types
    if then_types != else_types:
        mismatch = [
            f"output {i}: then {t[1]}{list(t[0])} vs else {e[1]}{list(e[0])}"
            for i, (t, e) in enumerate(zip(then_types, else_types, strict=True))
            if t != e
        ]
        # Same dtypes, different shapes: which shape comes out depends on the run-time condition.
        same_dtypes = all(t[1] == e[1] for t, e in zip(then_types, else_types, strict=True))
        raise (DataDependentShapeError if same_dtypes else ShapeError)(
            "branches produce different output shapes/dtypes ("
            + "; ".join(mismatch)
            + "); dynamic shapes are unsupported, so both branches of an If with a condition "
            "unknown at compile time must agree"
        )
    return then_types


def _if_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    from eqsat.lowering.numpy import evaluate_graph  # the executor imports the op table

    then_branch, else_branch = _branches(attrs)
    branch = then_branch if bool(np.asarray(arrays[0]).reshape(-1)[0]) else else_branch
    return evaluate_graph(branch, {})


def _branch_cost(branch: Graph) -> Cost:
    total = Cost(0.0, 0.0, 0.0)
    for node in branch.nodes:
        total = total + get(node.op, node.name).cost(node.inputs, node.outputs, node.attrs)
    return total


def _if_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    # Only one branch runs: price the dearer one, plus reading the condition.
    then_cost, else_cost = (_branch_cost(b) for b in _branches(attrs))
    worst = max(then_cost, else_cost, key=lambda c: (c.flops, c.bytes_read + c.bytes_written))
    return worst + Cost(0.0, float(inputs[0].nbytes), 0.0)


register(
    OpDef(
        "If",
        _if_infer,
        _if_reference,
        _if_cost,
        min_inputs=1,
        max_inputs=1,
        min_outputs=1,
        max_outputs=1 << 30,
        attrs={"then_branch": REQUIRED, "else_branch": REQUIRED},
        doc="Runs then_branch or else_branch (eqsat Graphs reading the outer scope).",
    )
)

"""ONNX Loop at import time: unrolled into constants when everything it reads is known.

A Loop's trip count and the shapes of its results may depend on the data, so eqsat never
compiles one. When every input and every outer value its body reads is a constant (always the
case in a model's run-time tail, see :mod:`eqsat.tail`, where the boundary values are bound),
:func:`unroll_loop` runs it: each iteration imports the body into the enclosing graph with that
iteration's inputs as constants, so that every body node folds, and the Loop's outputs become
constants (carried values as they end, scan outputs stacked on a new first axis). Otherwise it
raises :class:`~eqsat.errors.DataDependentShapeError`, and :func:`eqsat.load` moves the Loop and
what follows into the run-time tail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from eqsat.errors import DataDependentShapeError, LimitError, ModelLoadError, ShapeError
from eqsat.onnx_read import GRAPH, check_supported, np_dtype, outer_reads

# Iterations after which a Loop whose condition never turns false is stopped with an error
# rather than left to hang.
MAX_ITERATIONS = 1_000_000


def unroll_loop(importer: Any, node: onnx.NodeProto, name: str, scope: Any) -> None:
    """Import Loop ``node`` (named ``name``) into ``scope`` as the constants it computes.

    ``importer`` is the :class:`eqsat.onnx_io._Importer` (its scopes, names and node import);
    ``scope`` the :class:`eqsat.onnx_io._Scope` the Loop sits in."""
    what = f"node {name!r} (Loop)"
    body = next((a.g for a in node.attribute if a.name == "body" and a.type == GRAPH), None)
    if body is None:
        raise ModelLoadError(f"{what} has no body")
    inputs = [importer._read(scope, i, what) if i else None for i in node.input]
    if len(inputs) < 2:
        raise ModelLoadError(f"{what} needs its trip count and condition inputs (either empty)")
    outer = [importer._read(scope, n, f"{what}'s body") for n in dict.fromkeys(outer_reads(body))]
    unknown = [v.name for v in [*inputs, *outer] if v is not None and v.const is None]
    if unknown:
        raise DataDependentShapeError(
            f"{what} reads the run-time value(s) {unknown[:3]}: its trip count and the shapes of "
            "its results are known only when it runs"
        )
    check_supported(body, importer.opset, main=False)
    carried = [np.asarray(v.const) for v in inputs[2:] if v is not None]
    if len(carried) != len(inputs) - 2:
        raise ShapeError(f"{what}: a loop-carried input is missing")
    num_scans = len(body.output) - 1 - len(carried)
    if len(body.input) != 2 + len(carried) or num_scans < 0:
        raise ShapeError(
            f"{what}: the body takes {len(body.input)} inputs and makes {len(body.output)} "
            f"outputs for {len(carried)} loop-carried value(s)"
        )
    trip = None if inputs[0] is None else int(np.asarray(inputs[0].const).reshape(-1)[0])
    cond = True if inputs[1] is None else _truth(inputs[1].const)
    scans: list[list[np.ndarray]] = [[] for _ in range(num_scans)]
    iteration = 0
    while cond and (trip is None or iteration < trip):
        if iteration >= MAX_ITERATIONS:
            raise LimitError(f"{what} ran {MAX_ITERATIONS} iterations without its condition ending")
        inner = type(scope)(scope.graph, scope)  # each iteration's names, over the Loop's
        values = [np.array(iteration, np.int64), np.array(cond), *carried]
        for vi, array in zip(body.input, values, strict=True):
            importer._constant(inner, array, vi.name)
        for tensor in body.initializer:
            importer._constant(
                inner, importer._tensor(tensor, f"{what}: body initializer"), tensor.name
            )
        importer._import_nodes(body, inner)
        outs = [importer._read(inner, vi.name, f"{what}'s body output") for vi in body.output]
        pending = [v.name for v in outs if v.const is None]
        if pending:  # a body node that does not fold (too large, or impure)
            raise ShapeError(f"{what}: body output(s) {pending[:3]} could not be computed")
        cond = _truth(outs[0].const)
        carried = [np.asarray(v.const) for v in outs[1 : 1 + len(carried)]]
        for stack, v in zip(scans, outs[1 + len(carried) :], strict=True):
            stack.append(np.asarray(v.const))
        iteration += 1
    results = carried + [
        _stack(stack, body.output[1 + len(carried) + k], what) for k, stack in enumerate(scans)
    ]
    for out_name, array in zip(node.output, results, strict=False):
        if out_name:
            importer._constant(scope, array, out_name)


def _truth(array: Any) -> bool:
    return bool(np.asarray(array).reshape(-1)[0])


def _stack(arrays: list[np.ndarray], vi: onnx.ValueInfoProto, what: str) -> np.ndarray:
    """Scan outputs of every iteration on a new first axis (empty: its declared dtype)."""
    if arrays:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ShapeError(f"{what}: scan output {vi.name!r} changes shape between iterations")
        return np.stack(arrays)
    dtype = np_dtype(vi.type.tensor_type.elem_type, f"{what}: scan output {vi.name!r}")
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return np.zeros((0, *dims), dtype)


__all__ = ["MAX_ITERATIONS", "unroll_loop"]

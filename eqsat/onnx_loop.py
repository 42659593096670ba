"""ONNX Loop at import time: unrolled when its trip count and conditions are known.

A Loop's trip count and the shapes of its results may depend on the data, so eqsat never
compiles a Loop as such. :func:`unroll_loop` imports it as the nodes its iterations run, when the
trip count and every iteration's condition are known at load time: each iteration imports the body
into the enclosing graph with that iteration's inputs, constants where they are known (every body
node then folds: always the case in a model's run-time tail, see :mod:`eqsat.tail`, where the
boundary values are bound) and the run-time values themselves otherwise (tf2onnx's preprocessing
loops of one iteration, RNNs written as loops over a fixed number of steps: the body's nodes then
join the graph, to be optimized and compiled with the rest, up to :data:`MAX_UNROLLED`
iterations). Scan outputs are stacked on a new first axis. Otherwise it raises
:class:`~eqsat.errors.DataDependentShapeError`, and :func:`eqsat.load` moves the Loop and what
follows into the run-time tail.
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
# Iterations over run-time values unrolled into the graph at most (a longer Loop would bloat the
# graph that optimize and the cpu target work on; it runs in the run-time tail instead).
MAX_UNROLLED = 64


def unroll_loop(importer: Any, node: onnx.NodeProto, name: str, scope: Any) -> None:
    """Import Loop ``node`` (named ``name``) into ``scope``, unrolled.

    ``importer`` is the :class:`eqsat.onnx_io._Importer` (its scopes, names and node import);
    ``scope`` the :class:`eqsat.onnx_io._Scope` the Loop sits in. Each iteration imports the body
    with that iteration's inputs: constants where they are known (then every body node folds), the
    run-time values themselves otherwise (then the body's nodes join the graph, to be optimized
    and compiled with the rest). The trip count and every condition must be known at load time;
    with run-time values at most :data:`MAX_UNROLLED` iterations are unrolled."""
    what = f"node {name!r} (Loop)"
    body = next((a.g for a in node.attribute if a.name == "body" and a.type == GRAPH), None)
    if body is None:
        raise ModelLoadError(f"{what} has no body")
    inputs = [importer._read(scope, i, what) if i else None for i in node.input]
    if len(inputs) < 2:
        raise ModelLoadError(f"{what} needs its trip count and condition inputs (either empty)")
    steering = [v.name for v in inputs[:2] if v is not None and v.const is None]
    if steering:
        raise DataDependentShapeError(
            f"{what}: its trip count or condition {steering} is a run-time value, so how many "
            "times it runs (and the shapes of its results) is known only when it runs"
        )
    outer = [importer._read(scope, n, f"{what}'s body") for n in dict.fromkeys(outer_reads(body))]
    known = all(v is None or v.const is not None for v in [*inputs, *outer])
    check_supported(body, importer.opset, main=False)
    carried: list[Any] = [v for v in inputs[2:] if v is not None]
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
    limit = MAX_ITERATIONS if known else MAX_UNROLLED
    scans: list[list[Any]] = [[] for _ in range(num_scans)]
    graph = scope.graph
    iteration = 0
    while cond and (trip is None or iteration < trip):
        if iteration >= limit:
            if not known:  # too long to unroll into the graph: it runs in the run-time tail
                raise DataDependentShapeError(
                    f"{what} runs more than {MAX_UNROLLED} iterations over run-time values"
                )
            raise LimitError(f"{what} ran {MAX_ITERATIONS} iterations without its condition ending")
        inner = type(scope)(graph, scope)  # each iteration's names, over the Loop's
        importer._constant(inner, np.array(iteration, np.int64), body.input[0].name)
        importer._constant(inner, np.array(cond), body.input[1].name)
        for vi, value in zip(body.input[2:], carried, strict=True):
            inner.names[vi.name] = value  # a run-time value is read where it is
        for tensor in body.initializer:
            importer._constant(
                inner, importer._tensor(tensor, f"{what}: body initializer"), tensor.name
            )
        importer._import_nodes(body, inner)
        outs = [importer._read(inner, vi.name, f"{what}'s body output") for vi in body.output]
        if outs[0].const is None:
            raise DataDependentShapeError(
                f"{what}: its condition is computed from run-time values, so how many times it "
                "runs is known only when it runs"
            )
        cond = _truth(outs[0].const)
        carried = outs[1 : 1 + len(carried)]
        for stack, v in zip(scans, outs[1 + len(carried) :], strict=True):
            stack.append(v)
        iteration += 1
    scan_results = [
        _stack(
            importer,
            inner_scope_graph=graph,
            values=stack,
            vi=body.output[1 + len(carried) + k],
            what=what,
            name=name,
        )
        for k, stack in enumerate(scans)
    ]
    for out_name, value in zip(node.output, [*carried, *scan_results], strict=False):
        if not out_name:
            continue
        if isinstance(value, np.ndarray):
            importer._constant(scope, value, out_name)
        elif value.const is not None and value.producer is None:
            importer._constant(scope, np.asarray(value.const), out_name)
        else:
            scope.names[out_name] = value


def _truth(array: Any) -> bool:
    return bool(np.asarray(array).reshape(-1)[0])


def _stack(
    importer: Any,
    inner_scope_graph: Any,
    values: list[Any],
    vi: onnx.ValueInfoProto,
    what: str,
    name: str,
) -> Any:
    """A scan output: every iteration's value on a new first axis (a constant when they all are;
    else Unsqueeze and Concat nodes; with no iteration, an empty array of the declared dtype)."""
    if not values:
        dtype = np_dtype(vi.type.tensor_type.elem_type, f"{what}: scan output {vi.name!r}")
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        return np.zeros((0, *dims), dtype)
    if len({v.shape for v in values}) > 1:
        raise ShapeError(f"{what}: scan output {vi.name!r} changes shape between iterations")
    if all(v.const is not None for v in values):
        return np.stack([np.asarray(v.const) for v in values])
    graph = inner_scope_graph
    axes = graph.constant(np.array([0], np.int64), importer.fresh(graph, f"{name}_axis"))
    rows = [
        graph.add_node(
            "Unsqueeze", [v, axes], [importer.fresh(graph, f"{name}_{vi.name}_{i}")]
        ).outputs[0]
        for i, v in enumerate(values)
    ]
    return graph.add_node(
        "Concat", rows, [importer.fresh(graph, f"{name}_{vi.name}")], {"axis": 0}
    ).outputs[0]


__all__ = ["MAX_ITERATIONS", "MAX_UNROLLED", "unroll_loop"]

"""ONNX Loop and Scan at import time: unrolled when their iteration counts are known.

A Loop's trip count and the shapes of its results may depend on the data, so eqsat never
compiles a Loop as such. :func:`unroll_loop` imports it as the nodes its iterations run, when the
trip count and every iteration's condition are known at load time: each iteration imports the body
into the enclosing graph with that iteration's inputs, constants where they are known (every body
node then folds: always the case in a model's run-time tail, see :mod:`eqsat.tail`, where the
boundary values are bound) and the run-time values themselves otherwise (tf2onnx's preprocessing
loops of one iteration, RNNs written as loops over a fixed number of steps: the body's nodes then
join the graph, to be optimized and compiled with the rest, up to :func:`unroll_limit`
iterations: :data:`MAX_UNROLLED`, more for small bodies). Scan outputs are stacked on a new first axis. Otherwise it raises
:class:`~eqsat.errors.DataDependentShapeError`, and :func:`eqsat.load` moves the Loop and what
follows into the run-time tail, where a long Loop runs on its body compiled once
(:mod:`eqsat.onnx_loop_compiled`).

:func:`unroll_scan` does the same for Scan, whose iteration count is the static
length of its scan inputs: each iteration takes one slice of every scan input (``Gather`` at that
index, along the input's scan axis, from either end), runs the body on the states and slices,
and the scan outputs are stacked along their own axes (again from either end). Scan-8 (opset 8)
has a batch axis before the scan axis: it runs once per batch entry, its results stacked along
the batch axis; its per-batch ``sequence_lens`` must be absent or all full length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from eqsat import onnx_loop_compiled
from eqsat.errors import (
    DataDependentShapeError,
    LimitError,
    ModelLoadError,
    ShapeError,
    UnsupportedOperatorError,
)
from eqsat.onnx_read import GRAPH, check_supported, np_dtype, outer_reads, schema_version
from eqsat.onnx_sequence import SequenceValue, is_known

# Iterations after which a Loop whose condition never turns false is stopped with an error
# rather than left to hang.
MAX_ITERATIONS = 1_000_000
# Iterations over run-time values unrolled into the graph at most: MAX_UNROLLED, or more while the
# unrolled body nodes stay within MAX_UNROLLED_NODES (a longer Loop would bloat the graph that
# optimize and the cpu target work on; it runs in the run-time tail instead, where every
# iteration imports its body over constants: a Keras bidirectional LSTM + GRU of 100 steps,
# exported by tf2onnx as three Loops of 22-28 nodes, ran 220 ms there against 6.6 ms unrolled
# into the graph, optimized in 5.5 s).
MAX_UNROLLED = 64
MAX_UNROLLED_NODES = 4096


def unroll_limit(body: onnx.GraphProto) -> int:
    """How many iterations of ``body`` over run-time values are unrolled into the graph."""
    return max(MAX_UNROLLED, MAX_UNROLLED_NODES // max(1, len(body.node)))


def unroll_loop(importer: Any, node: onnx.NodeProto, name: str, scope: Any) -> None:
    """Import Loop ``node`` (named ``name``) into ``scope``, unrolled.

    ``importer`` is the :class:`eqsat.onnx_io._Importer` (its scopes, names and node import);
    ``scope`` the :class:`eqsat.onnx_io._Scope` the Loop sits in. Each iteration imports the body
    with that iteration's inputs: constants where they are known (then every body node folds), the
    run-time values themselves otherwise (then the body's nodes join the graph, to be optimized
    and compiled with the rest). The trip count and every condition must be known at load time;
    with run-time values at most :func:`unroll_limit` iterations are unrolled."""
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
    outer_names = list(dict.fromkeys(outer_reads(body)))
    outer = [importer._read(scope, n, f"{what}'s body") for n in outer_names]
    known = all(is_known(v) for v in [*inputs, *outer])
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
    tensors = not any(isinstance(v, SequenceValue) for v in [*carried, *outer])
    if known and tensors and onnx_loop_compiled.applies(body, trip):  # a long Loop of a tail
        results = onnx_loop_compiled.run_loop(
            body, importer.opset, trip, cond, [np.asarray(v.const) for v in carried],
            {n: np.asarray(v.const) for n, v in zip(outer_names, outer, strict=True)},
            MAX_ITERATIONS, what,
        )  # fmt: skip
        if results is not None:
            _bind_outputs(importer, scope, node, results)
            return
    limit = MAX_ITERATIONS if known else unroll_limit(body)
    scans: list[list[Any]] = [[] for _ in range(num_scans)]
    graph = scope.graph
    iteration = 0
    while cond and (trip is None or iteration < trip):
        if iteration >= limit:
            if not known:  # too long to unroll into the graph: it runs in the run-time tail
                raise DataDependentShapeError(
                    f"{what} runs more than {limit} iterations over run-time values"
                )
            raise LimitError(f"{what} ran {MAX_ITERATIONS} iterations without its condition ending")
        steering = [np.array(iteration, np.int64), np.array(cond)]
        outs = _run_body(importer, scope, body, [*steering, *carried], name, what)
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
    _bind_outputs(importer, scope, node, [*carried, *scan_results])


def unroll_scan(importer: Any, node: onnx.NodeProto, name: str, scope: Any) -> None:
    """Import Scan ``node`` into ``scope``, one body per step of its scan inputs (see the
    module's docstring); over run-time values at most :func:`unroll_limit` steps, beyond which
    it raises :class:`DataDependentShapeError` and runs in the run-time tail, unrolled there over
    constants. Scan-8 runs the same scan once per entry of its batch axis."""
    what = f"node {name!r} (Scan)"
    batched = (schema_version("Scan", importer.opset) or 9) < 9
    attrs = {a.name: a for a in node.attribute}
    if "body" not in attrs or attrs["body"].type != GRAPH:
        raise ModelLoadError(f"{what} has no body")
    if "num_scan_inputs" not in attrs:
        raise ModelLoadError(f"{what}: required attribute 'num_scan_inputs' is missing")
    body, m = attrs["body"].g, int(attrs["num_scan_inputs"].i)
    inputs = [importer._read(scope, i, what) if i else None for i in node.input]
    lengths_input = inputs.pop(0) if batched and inputs else None
    n = len(inputs) - m
    if m < 1 or n < 0 or any(v is None for v in inputs):
        raise ShapeError(f"{what}: {len(inputs)} inputs for {m} scan input(s), none may be empty")
    if len(body.input) != n + m or len(body.output) < n:
        raise ShapeError(
            f"{what}: the body takes {len(body.input)} inputs and makes {len(body.output)} "
            f"outputs for {n} state(s) and {m} scan input(s)"
        )
    states, xs = inputs[:n], inputs[n:]
    if batched:
        in_axes = [1] * m
        in_back = [bool(d) for d in _ints(attrs, "directions", m, None, what)]
    else:
        in_axes = _ints(attrs, "scan_input_axes", m, [x.rank for x in xs], what)
        in_back = [bool(d) for d in _ints(attrs, "scan_input_directions", m, None, what)]
    if any(axis >= x.rank for x, axis in zip(xs, in_axes, strict=True)):
        raise ShapeError(f"{what}: a scan input has no batch and scan axes (Scan-8)")
    lengths = {x.shape[axis] for x, axis in zip(xs, in_axes, strict=True)}
    if len(lengths) != 1:
        raise ShapeError(f"{what}: its scan inputs differ in length along their scan axes")
    steps = lengths.pop()
    batch = xs[0].shape[0] if batched else 1
    if batched:
        _check_sequence_lens(lengths_input, batch, steps, name, what)
    outer = [importer._read(scope, v, f"{what}'s body") for v in dict.fromkeys(outer_reads(body))]
    limit = unroll_limit(body)
    if steps * batch > limit and not all(is_known(v) for v in [*inputs, *outer]):
        raise DataDependentShapeError(
            f"{what} runs {steps * batch} steps over run-time values, more than the "
            f"{limit} unrolled into the graph"
        )
    check_supported(body, importer.opset, main=False)
    graph = scope.graph
    outputs = body.output[n:]
    if not batched:
        states, scans = _scan(importer, scope, body, states, xs, in_axes, in_back, name, what)
        ranks = [stack[0].rank + 1 if stack else 1 for stack in scans]
        out_axes = _ints(attrs, "scan_output_axes", len(scans), ranks, what)
        out_back = [bool(d) for d in _ints(attrs, "scan_output_directions", len(scans), None, what)]
        results = [
            _stack(importer, graph, stack[::-1] if back else stack, vi, what, name, axis)
            for stack, vi, axis, back in zip(scans, outputs, out_axes, out_back, strict=True)
        ]
        _bind_outputs(importer, scope, node, [*states, *results])
        return
    per_state: list[list[Any]] = [[] for _ in states]
    per_output: list[list[Any]] = [[] for _ in outputs]
    for b in range(batch):  # Scan-8: states (B, ...) and scan inputs (B, T, ...)
        mine = [_take(importer, graph, v, b, 0, f"{name}_b{b}") for v in [*states, *xs]]
        final, scans = _scan(
            importer, scope, body, mine[:n], mine[n:], [0] * m, in_back, name, what
        )
        for out, value in zip(per_state, final, strict=True):
            out.append(value)
        for out, stack, vi in zip(per_output, scans, outputs, strict=True):
            out.append(_stack(importer, graph, stack, vi, what, name, 0))
    results = [
        _stack(importer, graph, values, vi, what, name, 0)
        for values, vi in zip([*per_state, *per_output], body.output, strict=True)
    ]
    _bind_outputs(importer, scope, node, results)


def _check_sequence_lens(value: Any, batch: int, steps: int, name: str, what: str) -> None:
    """Scan-8's optional per-batch lengths must all be the full length (as exporters write)."""
    if value is None:
        return
    if value.const is None:
        raise UnsupportedOperatorError(
            [("Scan", name, "Scan-8 sequence_lens known only at run time")]
        )
    lens = np.asarray(value.const).reshape(-1)
    if lens.size != batch or np.any(lens != steps):
        raise UnsupportedOperatorError(
            [("Scan", name, f"Scan-8 sequence_lens {lens.tolist()} shorter than {steps} steps")]
        )


def _scan(importer: Any, scope: Any, body: onnx.GraphProto, states: list[Any], xs: list[Any],
          axes: list[int], backs: list[bool], name: str, what: str
          ) -> tuple[list[Any], list[list[Any]]]:  # fmt: skip
    """Run ``body`` over every step of ``xs`` (along ``axes``, from the end where ``backs``) from
    ``states``: the final states and, per scan output, every step's value."""
    n, graph = len(states), scope.graph
    steps = xs[0].shape[axes[0]]
    scans: list[list[Any]] = [[] for _ in range(len(body.output) - n)]
    for step in range(steps):
        slices = [
            _take(importer, graph, x, steps - 1 - step if back else step, axis, f"{name}_{vi.name}")
            for vi, x, axis, back in zip(body.input[n:], xs, axes, backs, strict=True)
        ]
        outs = _run_body(importer, scope, body, [*states, *slices], name, what)
        states = outs[:n]
        for stack, value in zip(scans, outs[n:], strict=True):
            stack.append(value)
    return states, scans


def _run_body(importer: Any, scope: Any, body: onnx.GraphProto, inputs: list[Any], name: str,
              what: str) -> list[Any]:  # fmt: skip
    """One iteration of a Loop or Scan ``body`` imported into ``scope``'s graph: its inputs
    bound to ``inputs`` (arrays as constants; values, run-time ones too, read where they are),
    its values named after the node ``name``; its outputs."""
    inner = type(scope)(scope.graph, scope, f"{name}/")  # the iteration's names, over the node's
    for vi, value in zip(body.input, inputs, strict=True):
        if isinstance(value, np.ndarray):
            importer._constant(inner, value, vi.name)
        else:
            inner.names[vi.name] = value
    for tensor in body.initializer:
        importer._constant(
            inner, importer._tensor(tensor, f"{what}: body initializer"), tensor.name
        )
    importer._import_nodes(body, inner)
    return [importer._read(inner, vi.name, f"{what}'s body output") for vi in body.output]


def _ints(
    attrs: dict[str, Any], key: str, count: int, ranks: list[int] | None, what: str
) -> list[int]:
    """Attribute ``key``'s ints (zeros when absent), ``count`` of them, made non-negative
    against ``ranks`` when given (axes)."""
    values = list(attrs[key].ints) if key in attrs else [0] * count
    if len(values) != count:
        raise ShapeError(f"{what}: {key} has {len(values)} values for {count}")
    if ranks is None:
        return values
    out = []
    for value, rank in zip(values, ranks, strict=True):
        if not -rank <= value < rank:
            raise ShapeError(f"{what}: {key} {value} is out of range for rank {rank}")
        out.append(value % rank)
    return out


def _take(importer: Any, graph: Any, x: Any, index: int, axis: int, hint: str) -> Any:
    """Slice ``index`` of ``x`` along ``axis``, that axis dropped."""
    if x.const is not None:
        return graph.constant(
            np.take(np.asarray(x.const), index, axis), importer.fresh(graph, hint)
        )
    where = graph.constant(np.array(index, np.int64), importer.fresh(graph, f"{hint}_index"))
    node = graph.add_node("Gather", [x, where], [importer.fresh(graph, hint)], {"axis": axis})
    return node.outputs[0]


def _bind_outputs(importer: Any, scope: Any, node: onnx.NodeProto, values: list[Any]) -> None:
    """Name ``node``'s outputs in ``scope``: constants as constants, others as they are."""
    for out_name, value in zip(node.output, values, strict=False):
        if not out_name:
            continue
        if isinstance(value, np.ndarray):
            importer._constant(scope, value, out_name)
        elif isinstance(value, SequenceValue):  # a loop-carried list (a TensorArray)
            scope.names[out_name] = value
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
    axis: int = 0,
) -> Any:
    """A scan output: every iteration's value on a new axis ``axis`` (a constant when they all
    are; else Unsqueeze and Concat nodes; with no iteration, an empty array of the declared
    dtype)."""
    if any(isinstance(v, SequenceValue) for v in values):
        raise ShapeError(f"{what}: scan output {vi.name!r} is a sequence; scans stack tensors")
    if not values:
        dtype = np_dtype(vi.type.tensor_type.elem_type, f"{what}: scan output {vi.name!r}")
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        return np.zeros((*dims[:axis], 0, *dims[axis:]), dtype)
    if len({v.shape for v in values}) > 1:
        raise ShapeError(f"{what}: scan output {vi.name!r} changes shape between iterations")
    if all(v.const is not None for v in values):
        return np.stack([np.asarray(v.const) for v in values], axis=axis)
    graph = inner_scope_graph
    axes = graph.constant(np.array([axis], np.int64), importer.fresh(graph, f"{name}_axis"))
    rows = [
        graph.add_node(
            "Unsqueeze", [v, axes], [importer.fresh(graph, f"{name}_{vi.name}_{i}")]
        ).outputs[0]
        for i, v in enumerate(values)
    ]
    return graph.add_node(
        "Concat", rows, [importer.fresh(graph, f"{name}_{vi.name}")], {"axis": axis}
    ).outputs[0]


__all__ = [
    "MAX_ITERATIONS",
    "MAX_UNROLLED",
    "MAX_UNROLLED_NODES",
    "unroll_limit",
    "unroll_loop",
    "unroll_scan",
]

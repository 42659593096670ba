"""Long Loops of a run-time tail on their body compiled once.

A Loop that runs more iterations over run-time values than :func:`eqsat.onnx_loop.unroll_limit`
allows in the graph goes to the model's run-time tail (:mod:`eqsat.tail`). There every value is
known and the importer used to unroll it into constants: each iteration imported its body again,
folding every node through its reference, ~0.7 ms an iteration for a 22-node LSTM cell
(tf2onnx's Keras LSTMs are such Loops; 500 steps took 350 ms).

While a :class:`~eqsat.tail.TailExecutable` runs its tail it lends its target's compiler here
(:func:`compiled_bodies`). A Loop of at least :data:`MIN_ITERATIONS` iterations whose body
reads only tensors then runs as a loop over the body compiled once: the body becomes a model
whose inputs are the iteration number, the condition, the loop-carried values (of their
current shapes) and the enclosing values it reads; it is loaded, compiled by the target's
compiler (optimized and compiled for ``cpu``, the reference for ``numpy``) and kept in the
executable's cache for later runs with the same shapes. Each iteration is one run of it. A body
whose loop-carried values change shape between iterations, that does not load as a static
graph or that fails to compile falls back to the unrolling import, which reports errors by node.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper

from eqsat.errors import EqsatError, LimitError

# Iterations from which a Loop of a tail runs on its compiled body (fewer: the import is cheaper
# than compiling).
MIN_ITERATIONS = 16
# Compiled bodies one executable keeps (by body and shapes).
MAX_CACHED = 8

_COMPILER: contextvars.ContextVar[tuple[Callable[[Any], Any], dict[Any, Any]] | None] = (
    contextvars.ContextVar("eqsat_loop_body_compiler", default=None)
)


@contextlib.contextmanager
def compiled_bodies(compile_graph: Callable[[Any], Any] | None,
                    cache: dict[Any, Any]) -> Iterator[None]:  # fmt: skip
    """While in this context, long Loops that the importer meets run on their bodies compiled by
    ``compile_graph`` (a Graph -> Executable), kept in ``cache``; None: unrolled as before."""
    token = _COMPILER.set(None if compile_graph is None else (compile_graph, cache))
    try:
        yield
    finally:
        _COMPILER.reset(token)


def applies(body: onnx.GraphProto, trip: int | None) -> bool:
    """Whether a Loop of known values with ``trip`` iterations (None: until its condition) is run
    here: a compiler is lent and the body has no subgraphs of its own nor other domains."""
    if _COMPILER.get() is None or (trip is not None and trip < MIN_ITERATIONS):
        return False
    nested = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return all(
        node.domain in ("", "ai.onnx") and not any(a.type in nested for a in node.attribute)
        for node in body.node
    )


def run_loop(body: onnx.GraphProto, opset: int, trip: int | None, cond: bool,
             carried: list[np.ndarray], outer: dict[str, np.ndarray], max_iterations: int,
             what: str) -> list[np.ndarray] | None:  # fmt: skip
    """The Loop's results (final loop-carried values, then each scan output stacked on a new
    first axis) by running its compiled body; None where it cannot (the caller unrolls it)."""
    lent = _COMPILER.get()
    if lent is None:
        return None
    compile_graph, cache = lent
    names = [vi.name for vi in body.input]
    if len(names) != 2 + len(carried) or set(names) & set(outer):
        return None
    first = {
        names[0]: np.array(0, np.int64), names[1]: np.array(cond),
        **dict(zip(names[2:], carried, strict=True)), **outer,
    }  # fmt: skip
    exe = _compiled(body, opset, first, compile_graph, cache)
    if exe is None:
        return None
    outputs = [vi.name for vi in body.output]
    count = len(carried)
    state = list(carried)
    scans: list[list[np.ndarray]] = [[] for _ in outputs[1 + count :]]
    iteration = 0
    while cond and (trip is None or iteration < trip):
        if iteration >= max_iterations:
            raise LimitError(f"{what} ran {max_iterations} iterations without its condition ending")
        feeds = {names[0]: np.array(iteration, np.int64), names[1]: np.array(cond), **outer}
        feeds.update(zip(names[2:], state, strict=True))
        made = exe.run(feeds)
        new = [np.array(made[n]) for n in outputs[1 : 1 + count]]
        if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(new, state, strict=True)):
            return None  # shapes that change between iterations: the import handles them
        state = new
        for stack, n in zip(scans, outputs[1 + count :], strict=True):
            stack.append(np.array(made[n]))
        cond = bool(np.asarray(made[outputs[0]]).reshape(-1)[0])
        iteration += 1
    if any(not stack for stack in scans):
        return None  # no iteration: the import gives empty scan outputs their declared shapes
    return [*state, *(np.stack(stack) for stack in scans)]


def _compiled(body: onnx.GraphProto, opset: int, feeds: dict[str, np.ndarray],
              compile_graph: Callable[[Any], Any], cache: dict[Any, Any]) -> Any:  # fmt: skip
    """The body compiled for inputs of the shapes and dtypes of ``feeds`` (cached; None where
    it does not load as a static graph or fails to compile)."""
    signature = tuple((n, a.shape, a.dtype.str) for n, a in feeds.items())
    key = (hashlib.sha1(body.SerializeToString()).hexdigest(), opset, signature)
    if key not in cache:
        if len(cache) >= MAX_CACHED:
            cache.pop(next(iter(cache)))
        cache[key] = _compile(body, opset, feeds, compile_graph)
    return cache[key]


def _compile(body: onnx.GraphProto, opset: int, feeds: dict[str, np.ndarray],
             compile_graph: Callable[[Any], Any]) -> Any:  # fmt: skip
    from eqsat.onnx_io import load_proto

    graph = onnx.GraphProto()
    graph.CopyFrom(body)
    del graph.input[:]
    for name, array in feeds.items():
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        graph.input.append(helper.make_tensor_value_info(name, elem, array.shape))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        loaded = load_proto(model, "a Loop's body")
        if loaded.tail is not None:
            return None
        return compile_graph(loaded)
    except (EqsatError, ValueError, onnx.checker.ValidationError):
        return None  # the unrolling import runs it instead, and reports by node what fails


__all__ = ["MAX_CACHED", "MIN_ITERATIONS", "applies", "compiled_bodies", "run_loop"]

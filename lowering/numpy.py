"""The numpy reference target: runs each node's numpy reference in topological order.

It is the oracle for every other target and for rule checking, so it favours exactness over speed:
no fusion, no buffer reuse, float arithmetic exactly as the operator table defines it.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.executable import Executable

from eqsat import ops
from eqsat.errors import EqsatError
from eqsat.ir import Graph, Value, subgraphs
from eqsat.tail import with_tail


def evaluate_graph(graph: Graph, env: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Evaluate ``graph``; ``env`` maps ``id(Value)`` to arrays (inputs, outer-scope values)."""

    def read(value: Value) -> np.ndarray:
        if value.const is not None:
            return value.const
        try:
            return env[id(value)]
        except KeyError:
            raise EqsatError(
                f"graph {graph.name!r}: value {value.name!r} has no producer"
            ) from None

    with np.errstate(all="ignore"):  # inf/nan follow IEEE rules, as in onnxruntime
        for node in graph.nodes:
            opdef = ops.get(node.op, node.name)
            arrays = [read(v) if v is not None else None for v in node.inputs]
            if node.op == "If":  # control flow reads the enclosing scope, so it runs here
                branch = node.attrs["then_branch" if bool(arrays[0]) else "else_branch"]
                results = evaluate_graph(branch, env)
            else:
                results = opdef.evaluate(node, arrays)
            for value, array in zip(node.outputs, results, strict=False):
                if value is not None:
                    env[id(value)] = array
    return [read(v) for v in graph.outputs]


class NumpyExecutable(Executable):
    target = "numpy"

    def _execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = {id(v): feeds[v.name] for v in self.input_specs}
        outputs = evaluate_graph(self.graph, env)
        fed = {id(a) for a in feeds.values()}
        results = {}
        for value, array in zip(self.graph.outputs, outputs, strict=True):
            array = np.asarray(array)
            # Never hand out the graph's constants, the caller's feeds or views of them.
            if value.const is not None or id(array) in fed or not array.flags.owndata:
                array = array.copy()
            results[value.name] = array
        return results


def _check_ops(graph: Graph) -> None:
    for node in graph.nodes:
        ops.get(node.op, node.name)
        for sub in subgraphs(node):
            _check_ops(sub)


def compile(graph: Graph) -> Executable:
    """The reference executable of ``graph`` (with its run-time tail, when it has one)."""
    _check_ops(graph)
    return with_tail(NumpyExecutable(graph), graph.tail, compile)

"""A run-time tail's nodes run straight through their numpy references, without an import.

:meth:`eqsat.tail.RuntimeTail.run` loaded the tail as a model each run (every node imported into
a graph, typed, checked and folded), ~37 us a node: torchvision's SSDlite post-processing is
1466 nodes (its 91 classes unrolled by the exporter), 55 ms a run against 9 ms for the
network, where onnxruntime takes ~3 us a node. Here the tail's nodes are read once into a plan
(attributes decoded, each op's schema version and operator found), and a run takes each node in
turn: the opset upgrade (:func:`eqsat.onnx_upgrade.upgrade`, which may add constants), the op's
shape rule on the known inputs, then its reference; an If runs the branch its condition picks.
The numbers are the references' as in a load; only the bookkeeping of a graph is skipped.

A tail with anything else (Loop, Scan, sequences, functions, other domains, an op the
upgrade expands into several nodes) returns None from :func:`plan`, or raises
:class:`Fallback` while running, and the caller loads it the old way, which handles all of
those and reports every error as it did.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from eqsat import ops
from eqsat.ir import Graph, Node, Value, tensor_dtype
from eqsat.onnx_io import COUNTED_OUTPUTS, _constant_value
from eqsat.onnx_read import GRAPH, SEQUENCE_OPS, plain_attribute, schema_version
from eqsat.onnx_upgrade import RENAMED, upgrade

_UNSUPPORTED = {"Loop", "Scan", *SEQUENCE_OPS}


class Fallback(Exception):
    """A node the lean path does not take: load the tail instead."""


@dataclass
class _Step:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    version: int
    branches: dict[str, _Plan]


@dataclass
class _Plan:
    constants: dict[str, np.ndarray]
    steps: list[_Step]
    outputs: list[str]


def _attribute(attr: onnx.AttributeProto) -> Any:
    if attr.type == onnx.AttributeProto.TENSOR:
        array = numpy_helper.to_array(attr.t)
        array.flags.writeable = False
        return array
    return plain_attribute(attr)


def _graph_plan(proto: onnx.GraphProto, opset: int) -> _Plan | None:
    constants = {}
    for tensor in proto.initializer:
        array = numpy_helper.to_array(tensor)
        array.flags.writeable = False
        constants[tensor.name] = array
    steps = []
    for index, node in enumerate(proto.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op in _UNSUPPORTED:
            return None
        if RENAMED.get(op, op) not in ops.OPS and op != "Constant":
            return None
        branches: dict[str, _Plan] = {}
        attrs: dict[str, Any] = {}
        for attr in node.attribute:
            if attr.type == GRAPH:
                if op != "If":
                    return None
                branch = _graph_plan(attr.g, opset)
                if branch is None:
                    return None
                branches[attr.name] = branch
            else:
                attrs[attr.name] = _attribute(attr)
        outputs = list(node.output)
        if op not in COUNTED_OUTPUTS:
            while outputs and outputs[-1] == "":
                outputs.pop()
        version = schema_version(op, opset) or opset
        name = node.name or f"{op}_{index}"
        steps.append(_Step(op, name, list(node.input), outputs, attrs, version, branches))
    return _Plan(constants, steps, [vi.name for vi in proto.output])


def plan(model: onnx.ModelProto) -> _Plan | None:
    """The lean plan of a tail model, or None where it needs the full import."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not opset or model.functions:
        return None
    return _graph_plan(model.graph, opset)


class _Run:
    """One run's values by ONNX name (an If's branch reads its enclosing scopes')."""

    def __init__(self) -> None:
        self.graph = Graph("lean tail")  # holds the constants that upgrades add
        self.names = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}__lean{next(self.names)}"

    def execute(self, plan: _Plan, env: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = {**env, **plan.constants}
        for step in plan.steps:
            self.step(step, env)
        try:
            return [env[name] for name in plan.outputs]
        except KeyError:
            raise Fallback from None

    def step(self, step: _Step, env: dict[str, np.ndarray]) -> None:
        if step.op == "Constant":  # read as the importer reads its forms
            env[step.outputs[0]] = np.asarray(_constant_value(step.attrs, step.name))
            return
        try:
            arrays = [env[name] if name else None for name in step.inputs]
        except KeyError:
            raise Fallback from None
        if step.op == "If":
            cond = arrays[0]
            if cond is None or cond.size != 1:
                raise Fallback
            branch = step.branches.get(
                "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
            )
            if branch is None:
                raise Fallback
            made = self.execute(branch, env)
            for name, value in zip(step.outputs, made, strict=False):
                if name:
                    env[name] = value
            return
        while arrays and arrays[-1] is None:
            arrays.pop()
        inputs = [
            None
            if a is None
            else Value(f"{step.name}:{i}", a.shape, tensor_dtype(a.dtype, step.name), a)
            for i, a in enumerate(arrays)
        ]
        up = upgrade(
            self.graph, step.op, step.version, inputs, dict(step.attrs), step.name,
            num_outputs=len(step.outputs), namer=self.fresh,
        )  # fmt: skip
        if up.expand is not None:
            raise Fallback
        opdef = ops.get(up.op, step.name)
        attrs = opdef.complete_attrs(up.attrs, step.name)
        opdef.check_arity(len(up.inputs), len(step.outputs), step.name)
        # (Any error here sends the run to the load, which reports it by node as an import does.)
        types = list(opdef.infer(up.inputs, attrs, len(step.outputs)))
        outs = [
            None if kind is None or not name else Value(name, kind[0], kind[1])
            for name, kind in zip(step.outputs, types, strict=False)
        ]
        node = Node(up.op, up.inputs, outs, attrs, step.name)
        results = opdef.evaluate(node, [None if v is None else v.const for v in up.inputs])
        for value, result in zip(outs, results, strict=False):
            if value is not None:
                env[value.name] = result


def run(lean: _Plan, bound: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The tail's outputs (in its model's order) from its bound inputs; raises
    :class:`Fallback` where a node needs the full import."""
    return _Run().execute(lean, dict(bound))

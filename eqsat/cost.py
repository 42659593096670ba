"""Target profiles and the cost of e-nodes: a roofline over the op table's FLOP and byte counts.

The cost of one e-node executing on a target is ``max(flops / peak, bytes / bandwidth) + launch``
seconds, from :attr:`OpDef.cost <eqsat.ops.OpDef.cost>` evaluated on the e-class types. E-nodes
whose inputs are all constants cost nothing: they are folded at compile time (principle 3), and so
are graph inputs, constants and output projections. These numbers are a first model; calibration
per machine refines the profiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eqsat import ops
from eqsat.errors import TargetError
from eqsat.ir import Graph, Value

if TYPE_CHECKING:
    from eqsat.decode import ENode, View


def is_plain(raw: dict) -> bool:
    from eqsat.decode import is_plain as plain

    return plain(raw)


@dataclass(frozen=True)
class Profile:
    """What one target can do per second, and what starting one kernel costs."""

    name: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    launch: float  # seconds per kernel

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.bandwidth) + self.launch


PROFILES: dict[str, Profile] = {
    # numpy: one interpreted dispatch per node, single-threaded ufuncs.
    "numpy": Profile("numpy", 5e9, 8e9, 5e-6),
    "cpu": Profile("cpu", 50e9, 15e9, 1e-6),
    "cuda": Profile("cuda", 30e12, 1.5e12, 5e-6),
}


def profile(target: str | Profile) -> Profile:
    if isinstance(target, Profile):
        return target
    try:
        return PROFILES[target]
    except KeyError:
        raise TargetError(
            f"no cost profile for target {target!r}; known: {sorted(PROFILES)}"
        ) from None


def op_seconds(
    op: str, inputs: list[Value | None], outputs: list[Value | None], attrs: dict, prof: Profile
) -> float:
    c = ops.get(op).cost(inputs, outputs, attrs)
    return prof.seconds(c.flops, c.bytes_read + c.bytes_written)


def node_costs(view: View, target: str | Profile = "numpy") -> dict[str, float]:
    """Cost in seconds of every e-node of a serialized e-graph (``inf`` for unusable ones).

    Non-tensor e-nodes (attributes, primitives, lists) cost 0; egglog function entries (shape,
    dtype, ...) are ``inf`` so that no extractor reaches a tensor through them.
    """
    prof = profile(target)
    costs: dict[str, float] = {}
    for nid, raw in view.raw.items():
        node = view.nodes.get(nid)
        if node is None:
            costs[nid] = 0.0 if is_plain(raw) else math.inf
        elif nid in view.invalid:
            costs[nid] = math.inf
        elif node.kind != "op" or (node.eclass in view.const_classes and view.is_const_node(node)):
            costs[nid] = 0.0
        else:
            costs[nid] = _enode_seconds(view, node, prof)
    return costs


def _fake(view: View, eclass: str | None, name: str) -> Value | None:
    if eclass is None:
        return None
    shape, dt = view.types[eclass]
    return Value(name, tuple(shape), np.dtype(dt))


def _enode_seconds(view: View, node: ENode, prof: Profile) -> float:
    ins = [_fake(view, c, f"i{k}") for k, c in enumerate(view.op_inputs(node))]
    t = view.types.get(node.eclass)
    if t is None:
        return math.inf
    if node.mask == "1":
        outs: list[Value | None] = [Value("o", tuple(t[0]), np.dtype(t[1]))]
    else:
        outs = [None if x is None else Value(f"o{k}", tuple(x[0]), x[1]) for k, x in enumerate(t)]
    try:
        return op_seconds(node.op, ins, outs, node.attrs, prof)
    except Exception:
        return math.inf


def graph_cost(graph: Graph, target: str | Profile = "numpy") -> float:
    """Cost of running ``graph`` once: every node not computable at compile time."""
    prof = profile(target)
    total = 0.0
    for node in graph.nodes:
        if all(v is None or v.const is not None for v in node.outputs):
            continue
        total += op_seconds(node.op, node.inputs, node.outputs, node.attrs, prof)
    return total

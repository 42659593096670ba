"""Sound pruning of a serialized e-graph before exact extraction.

Every rule here only removes e-nodes that no acyclic extraction can use, or that no extraction
cheaper than a known one can use, so the optimum over what is left is the optimum of the e-graph
(or the known answer is):

* **unbuildable**: infinite cost, a child that is the node's own e-class (a self-loop), or a child
  e-class with no buildable node (a bottom-up worklist, so e-classes only on cycles go too);
* **needs itself**: for each e-class the set of e-classes that *every* acyclic extraction of it
  contains (``need(c) = {c} | AND over c's nodes n of OR over n's children k of need(k)``, the least
  fixpoint, so each iterate is sound by induction on the extraction's height). A node whose
  children need its own e-class closes a cycle in every extraction; this catches Tensat's
  ``split(concat(a, b))`` nodes in the e-class of ``a``, which self-loop removal does not;
* **dominated**: another node of the same e-class costs no more and needs a subset of its child
  e-classes;
* **too dear** (given an upper bound ``ub``, and no negative cost): a node whose needed e-classes,
  together with the roots' needed e-classes, cost more than ``ub`` even at their cheapest nodes, or
  whose longest path (:mod:`eqsat.extract.ilp_bounds`: the cheapest path from a root down to it and
  on down to a leaf) costs more than ``ub``. Removals raise both bounds, so this repeats a few
  times. The longest-path bound of the roots is kept as a lower bound of every answer.

``need`` of the roots also tells which e-classes every extraction contains; the ILP fixes those.
Sets of e-classes are Python ints used as bit sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from eqsat.extract import Index, ilp_bounds

MAX_ROUNDS = 12  # of too-dear pruning: each round's removals raise the next round's bounds
MIN_SHARE = 0.01  # another round only if this one removed at least this share of the nodes


@dataclass
class Pruned:
    """What is left: e-classes reachable from the roots, each with its usable nodes."""

    classes: dict[str, list[str]]
    required: set[str]  # e-classes every acyclic extraction from the roots contains
    removed: dict[str, int] = field(default_factory=dict)  # reason -> nodes removed
    bit: dict[str, int] = field(default_factory=dict)  # e-class -> its bit in the sets below
    need: dict[str, int] = field(default_factory=dict)  # e-class -> e-classes it always needs
    node_need: dict[str, int] = field(default_factory=dict)  # node -> e-classes it always needs
    bound: dict[str, float] = field(default_factory=dict)  # node -> path bound of answers using it
    lower: float = -math.inf  # no answer (in what is left) costs less

    def needs(self, node: str, eclass: str) -> bool:
        """Whether every acyclic extraction of ``node`` contains ``eclass``."""
        return bool(self.node_need[node] >> self.bit[eclass] & 1)

    def conflicts(self, component: list[str]) -> list[tuple[str, str, list[str]]]:
        """``(n, k, ok)`` for nodes n of ``component``'s e-classes that always need e-class k of
        the component, where some node of k always needs n's e-class: an acyclic answer with n
        picks one of k's nodes ``ok`` that do not need n's e-class."""
        out = []
        for c in component:
            for n in self.classes[c]:
                for k in component:
                    if k == c or not self.needs(n, k):
                        continue
                    ok = [m for m in self.classes[k] if not self.needs(m, c)]
                    if len(ok) < len(self.classes[k]):
                        out.append((n, k, ok))
        return out


def prune(idx: Index, roots: list[str], ub: float = math.inf) -> Pruned:
    """The usable nodes of each e-class reachable from ``roots`` (see the module docstring)."""
    removed: dict[str, int] = {}
    usable = _buildable(idx, {n for n in idx.cost if math.isfinite(idx.cost[n])})
    removed["unbuildable"] = len(idx.cost) - len(usable)
    while True:
        usable = _undominated(idx, usable, removed)
        need, node_need = _need(idx, usable)
        loops = {n for n in usable if node_need[n] >> need.bit_index[idx.nodes[n]["eclass"]] & 1}
        if loops:
            removed["needs itself"] = removed.get("needs itself", 0) + len(loops)
            before = len(usable)
            usable = _buildable(idx, usable - loops)
            removed["unbuildable"] += before - len(loops) - len(usable)
            continue
        break
    for r in roots:
        if r not in need.sets:
            raise ValueError(f"e-class {r} has no acyclic extraction")
    root_need = 0
    for r in roots:
        root_need |= need.sets[r]
    bound: dict[str, float] = {}
    lower = -math.inf
    # Both too-dear bounds add up costs of e-classes an answer contains, leaving the others out:
    # a lower bound only if no cost is negative.
    nonneg = ilp_bounds.applies(idx, usable)
    slack = 1e-9 * max(1.0, abs(ub)) if math.isfinite(ub) else 0.0
    for _ in range(MAX_ROUNDS if nonneg else 0):
        required = [c for c, i in need.bit_index.items() if root_need >> i & 1]
        bound, lower = ilp_bounds.node_bounds(idx, usable, roots, required)
        if lower > ub + slack:
            raise ValueError(f"no extraction is cheaper than {ub}: its longest path costs more")
        dear = {n for n, b in bound.items() if b > ub + slack}
        if math.isfinite(ub):
            dear |= _too_dear(idx, usable, need, node_need, root_need, ub, skip=dear)
        if not dear:
            break
        removed["too dear"] = removed.get("too dear", 0) + len(dear)
        before = len(usable)
        usable = _buildable(idx, usable - dear)
        removed["unbuildable"] += before - len(dear) - len(usable)
        need, node_need = _need(idx, usable)
        root_need = 0
        for r in roots:
            if r not in need.sets:
                raise ValueError(f"e-class {r} has no extraction cheaper than {ub}")
            root_need |= need.sets[r]
        if len(dear) < MIN_SHARE * before:
            break  # little left to gain; ``bound`` (from more nodes) is still a valid bound
    classes: dict[str, list[str]] = {}
    stack = list(dict.fromkeys(roots))
    members: dict[str, list[str]] = {}
    for n in usable:
        members.setdefault(idx.nodes[n]["eclass"], []).append(n)
    while stack:
        c = stack.pop()
        if c in classes:
            continue
        classes[c] = sorted(members[c])
        stack.extend(k for n in classes[c] for k in idx.kids[n] if k not in classes)
    required = {c for c in classes if root_need >> need.bit_index[c] & 1}
    return Pruned(classes, required, removed, need.bit_index, need.sets, node_need, bound, lower)


def _buildable(idx: Index, allowed: set[str]) -> set[str]:
    """Nodes of ``allowed`` whose child e-classes can all be built from ``allowed`` nodes."""
    missing = {n: len(idx.kids[n]) for n in allowed if idx.nodes[n]["eclass"] not in idx.kids[n]}
    built: set[str] = set()
    out: set[str] = set()
    ready = [n for n, count in missing.items() if count == 0]
    while ready:
        n = ready.pop()
        out.add(n)
        c = idx.nodes[n]["eclass"]
        if c in built:
            continue
        built.add(c)
        for parent in idx.parents.get(c, ()):
            if parent in missing:
                missing[parent] -= 1
                if missing[parent] == 0:
                    ready.append(parent)
    return out


def _undominated(idx: Index, usable: set[str], removed: dict[str, int]) -> set[str]:
    members: dict[str, list[str]] = {}
    for n in usable:
        members.setdefault(idx.nodes[n]["eclass"], []).append(n)
    out: set[str] = set()
    for ms in members.values():
        kept: list[set[str]] = []
        for n in sorted(ms, key=lambda n: (idx.cost[n], len(idx.kids[n]), n)):
            kids = set(idx.kids[n])
            if any(k <= kids for k in kept):
                continue
            kept.append(kids)
            out.add(n)
    removed["dominated"] = removed.get("dominated", 0) + len(usable) - len(out)
    return out


class _Need:
    def __init__(self, classes: list[str]):
        self.bit_index = {c: i for i, c in enumerate(classes)}
        self.classes = classes
        self.sets: dict[str, int] = {}


def _need(idx: Index, usable: set[str]) -> tuple[_Need, dict[str, int]]:
    """``need`` per e-class and the union of its children's ``need`` per node (a worklist)."""
    members: dict[str, list[str]] = {}
    for n in sorted(usable):
        members.setdefault(idx.nodes[n]["eclass"], []).append(n)
    need = _Need(sorted(members))
    bit = need.bit_index
    sets = need.sets
    for c in members:
        sets[c] = 1 << bit[c]
    node_need: dict[str, int] = {}

    def union(n: str) -> int:
        u = 0
        for k in idx.kids[n]:
            u |= sets[k]
        return u

    # Bottom-up first (leaves before their parents) so that most e-classes settle in one pass.
    order = _topological(idx, members)
    queue = list(reversed(order))
    queued = set(queue)
    while queue:
        c = queue.pop()
        queued.discard(c)
        inter = -1
        for n in members[c]:
            u = union(n)
            node_need[n] = u
            inter &= u
        new = sets[c] | inter | (1 << bit[c])
        if new != sets[c]:
            sets[c] = new
            for p in idx.parents.get(c, ()):
                pc = idx.nodes[p]["eclass"]
                if p in usable and pc not in queued:
                    queue.append(pc)
                    queued.add(pc)
    for n in usable:
        node_need[n] = union(n)
    return need, node_need


def _topological(idx: Index, members: dict[str, list[str]]) -> list[str]:
    """E-classes with children (through usable nodes) mostly before parents (cycles broken)."""
    state: dict[str, int] = {}
    order: list[str] = []
    for root in members:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter([k for n in members[root] for k in idx.kids[n]]))]
        while stack:
            c, it = stack[-1]
            for k in it:
                if k not in state and k in members:
                    state[k] = 1
                    stack.append((k, iter([x for n in members[k] for x in idx.kids[n]])))
                    break
            else:
                stack.pop()
                order.append(c)
    return order


def _too_dear(
    idx: Index,
    usable: set[str],
    need: _Need,
    node_need: dict[str, int],
    root_need: int,
    ub: float,
    skip: set[str] | frozenset[str] = frozenset(),
) -> set[str]:
    """Nodes (not in ``skip``) whose cheapest possible extraction (with the roots') costs more
    than ``ub``."""
    cheapest = np.zeros(len(need.classes))
    for c, i in need.bit_index.items():
        cheapest[i] = min(idx.cost[n] for n in idx.classes[c] if n in usable)
    nbytes = (len(need.classes) + 7) // 8
    slack = 1e-9 * max(1.0, abs(ub))

    def bound(bits: int) -> float:
        arr = np.unpackbits(
            np.frombuffer(bits.to_bytes(nbytes, "little"), dtype=np.uint8), bitorder="little"
        )[: len(need.classes)]
        return float(cheapest @ arr)

    out: set[str] = set()
    cache: dict[int, float] = {}
    for n in usable:
        if n in skip:
            continue
        c = idx.nodes[n]["eclass"]
        bits = node_need[n] | root_need
        value = cache.get(bits)
        if value is None:
            value = cache[bits] = bound(bits)
        # The node's own cost replaces its e-class's cheapest one (if the roots need the class).
        i = need.bit_index[c]
        extra = idx.cost[n] - (cheapest[i] if bits >> i & 1 else 0.0)
        if value + extra > ub + slack:
            out.add(n)
    return out

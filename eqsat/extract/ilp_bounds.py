"""Path lower bounds for exact extraction: no acyclic answer is cheaper than its longest path.

With non-negative costs, an acyclic extraction's DAG cost is at least the cost of any path in it
(a path visits distinct e-classes, each paid once). So, for the chosen node ``n`` of a reachable
e-class ``c``::

    cost(answer) >= depth(c) + cost(n) + max(height(k) for k in kids(n))

* ``height(k)``: the least, over finite derivations of ``k``, of the costliest root-to-leaf path
  (``height(c) = min over n of cost(n) + max over kids height(kid)``). Knuth's generalisation of
  Dijkstra computes it bottom-up; a derivation is a finite tree, so the zero-cost cycles through
  Tensat's ``split(concat(...))`` merges, which make a linear relaxation nearly free, cannot lower
  it. For a sequential network such as VGG, ``height`` of the root is the optimum itself.
* ``depth(c)``: the cheapest path from a root down to ``c`` (the nodes on it, ``c``'s excluded),
  Dijkstra over the e-class graph with each edge priced at its parent node's cost. The chosen path
  from a root to ``c`` is one such path, and it shares no e-class with the path below ``c``.

E-classes that every answer contains (``required``) are paid at least their cheapest node's cost
whether or not the path visits them, so they are counted once up front and a path pays only what
its nodes cost beyond that (``weight(n) = cost(n) - cheapest(c)`` for a required ``c``): the
bound is ``sum(cheapest(required)) + weighted path``.

Both only need the nodes an answer may use, so they grow as pruning removes nodes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from eqsat.extract import Index


def heights(
    idx: Index, usable: set[str], weight: dict[str, float] | None = None
) -> dict[str, float]:
    """``height`` of every e-class that ``usable`` nodes can build (Knuth's algorithm), with
    node weights ``weight`` (default: the costs)."""
    w = idx.cost if weight is None else weight
    waiting = {n: len(idx.kids[n]) for n in usable}
    height: dict[str, float] = {}
    heap = [(w[n], n) for n in usable if not idx.kids[n]]
    heapq.heapify(heap)
    while heap:
        value, n = heapq.heappop(heap)
        c = idx.nodes[n]["eclass"]
        if c in height:
            continue
        height[c] = value  # the smallest tentative value is final: costs are non-negative
        for p in idx.parents.get(c, ()):
            if p not in waiting:
                continue
            waiting[p] -= 1
            if waiting[p] == 0:
                below = max(height[k] for k in idx.kids[p])
                heapq.heappush(heap, (w[p] + below, p))
    return height


def depths(
    idx: Index,
    members: dict[str, list[str]],
    roots: Iterable[str],
    weight: dict[str, float] | None = None,
) -> dict[str, float]:
    """``depth`` of every e-class reachable from ``roots`` through the nodes in ``members``."""
    w = idx.cost if weight is None else weight
    depth: dict[str, float] = {}
    heap = [(0.0, r) for r in roots]
    heapq.heapify(heap)
    while heap:
        value, c = heapq.heappop(heap)
        if c in depth:
            continue
        depth[c] = value
        for n in members.get(c, ()):
            below = value + w[n]
            for k in idx.kids[n]:
                if k not in depth:
                    heapq.heappush(heap, (below, k))
    return depth


def node_bounds(
    idx: Index, usable: set[str], roots: list[str], required: Iterable[str] = ()
) -> tuple[dict[str, float], float]:
    """The path bound of every usable node reachable from ``roots`` (nodes of e-classes the roots
    cannot reach are left out), and the bound of the whole answer, from its costliest root.
    ``required``: e-classes that every answer contains. The plain bound and the one that pays
    them up front are both valid; neither is always the larger (the weighted paths above and
    below a node may each leave out the same required e-class), so each node gets the larger."""
    members: dict[str, list[str]] = {}
    for n in usable:
        members.setdefault(idx.nodes[n]["eclass"], []).append(n)
    out: dict[str, float] = {}
    whole = -math.inf
    base = 0.0
    weight = {n: idx.cost[n] for n in usable}
    for paid in (False, True):
        if paid:
            required = set(required)
            if not required:
                break
            for c in required:
                cheapest = min(idx.cost[n] for n in members[c])
                base += cheapest
                for n in members[c]:
                    weight[n] = idx.cost[n] - cheapest
        height = heights(idx, usable, weight)
        depth = depths(idx, members, [r for r in roots if r in height], weight)
        for c, d in depth.items():
            for n in members.get(c, ()):
                below = max((height.get(k, math.inf) for k in idx.kids[n]), default=0.0)
                out[n] = max(out.get(n, -math.inf), base + d + weight[n] + below)
        top = max((height.get(r, math.inf) for r in roots), default=0.0)
        whole = max(whole, base + top)
    return out, whole


def applies(idx: Index, usable: Iterable[str]) -> bool:
    """Whether the bounds are valid: every usable cost is non-negative."""
    return all(idx.cost[n] >= 0.0 for n in usable)

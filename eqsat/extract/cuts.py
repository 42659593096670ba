"""Cycle cuts for the extraction ILP: which ones a (fractional) solution violates.

For a set S of e-classes and one of them, d: if d picks a node with a child in S, then some other
e-class of S picks a node with no child in S (the lowest picked e-class of S in an acyclic answer
has no picked child in S, and it is not d). As a row::

    sum(x[n] for n in d if kids(n) & S) - sum(x[n] for c in S - {d} for n in c if not kids(n) & S) <= 0

Unlike "at most |S| - 1 of S's e-classes pick a node into S", this holds with the e-classes'
own (possibly fractional) pick levels, so a relaxation cannot satisfy it by picking every e-class of
a cycle half-way. Separation: with ``z[c]`` the pick level of e-class c and ``y[c->k]`` the total
of c's nodes with child k, give the edge c->k the weight ``z[c] - y[c->k]`` (at least the mass of
c's nodes that leave a cycle through that edge); a cycle d->k ~> d whose path k ~> d weighs less
than ``y[d->k]`` gives a violated row. Shortest paths from every e-class at once (SciPy's
Dijkstra) find them for all d of a strongly connected component together. On integer solutions
every cycle has weight 0, so the same search finds every cycle that an answer contains.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from eqsat.extract import Index

Cut = tuple[list[int], list[float]]  # columns and coefficients of a row "<= 0"

_EPS = 1e-9


class Separator:
    """Finds violated cycle rows for the classes and columns of one program."""

    def __init__(
        self,
        idx: Index,
        classes: dict[str, list[str]],
        col: dict[str, int],
        components: list[list[str]],
    ):
        self.idx = idx
        self.classes = classes
        self.col = col
        self.components = [c for c in components if len(c) > 1]
        self.seen: set[tuple[frozenset[str], str]] = set()
        # Per component: its e-classes' edges (c, k, the columns of c's nodes with child k).
        self._edges: list[tuple[list[str], list[tuple[int, int, list[int]]]]] = []
        for comp in self.components:
            pos = {c: i for i, c in enumerate(comp)}
            by_edge: dict[tuple[int, int], list[int]] = {}
            for c in comp:
                for n in classes[c]:
                    for k in idx.kids[n]:
                        if k in pos:
                            by_edge.setdefault((pos[c], pos[k]), []).append(col[n])
            edges = [(a, b, cols) for (a, b), cols in by_edge.items()]
            self._edges.append((comp, edges))

    def separate(self, x: np.ndarray, limit: int = 4000, tol: float = 1e-6) -> list[Cut]:
        """Rows that ``x`` violates by more than ``tol``, most violated first, at most ``limit``."""
        found: list[tuple[float, Cut]] = []
        for comp, edges in self._edges:
            for viol, d, s in self._component(comp, edges, x, tol):
                key = (frozenset(s), d)
                if key in self.seen:
                    continue
                row = self.row(d, key[0])
                actual = sum(v * x[c] for c, v in zip(*row, strict=True))
                if actual > tol:
                    self.seen.add(key)
                    found.append((max(viol, actual), row))
        found.sort(key=lambda t: -t[0])
        return [row for _, row in found[:limit]]

    def _component(
        self, comp: list[str], edges: list[tuple[int, int, list[int]]], x: np.ndarray, tol: float
    ) -> Iterator[tuple[float, str, list[str]]]:
        n = len(comp)
        z = np.zeros(n)
        for i, c in enumerate(comp):
            z[i] = sum(x[self.col[m]] for m in self.classes[c])
        src, dst, wt, ys = [], [], [], []
        for a, b, cols in edges:
            y = float(x[cols].sum()) if len(cols) > 1 else float(x[cols[0]])
            if y <= tol:
                continue
            src.append(a)
            dst.append(b)
            ys.append(y)
            wt.append(max(z[a] - y, 0.0) + _EPS)  # Dijkstra drops explicit zeros
        if not src:
            return
        graph = csr_array((np.array(wt), (np.array(src), np.array(dst))), shape=(n, n))
        starts = sorted(set(dst))
        dist, pred = dijkstra(graph, indices=starts, return_predecessors=True, limit=1.0)
        row_of = {s: i for i, s in enumerate(starts)}
        for a, b, y in zip(src, dst, ys, strict=True):
            viol = y - dist[row_of[b], a]
            if viol <= tol:
                continue
            path = [a]
            r = row_of[b]
            v = a
            while v != b:
                v = int(pred[r, v])
                if v < 0:
                    break
                path.append(v)
            else:
                yield viol, comp[a], [comp[i] for i in path]

    def row(self, d: str, s: frozenset[str]) -> Cut:
        cols: list[int] = []
        vals: list[float] = []
        kids = self.idx.kids
        for n in self.classes[d]:
            if any(k in s for k in kids[n]):
                cols.append(self.col[n])
                vals.append(1.0)
        for c in s:
            if c == d:
                continue
            for n in self.classes[c]:
                if not any(k in s for k in kids[n]):
                    cols.append(self.col[n])
                    vals.append(-1.0)
        return cols, vals

    def cycle_rows(self, cycle: list[str]) -> list[Cut]:
        """The row for every e-class of ``cycle`` (a cycle of an integer answer) not yet added."""
        s = frozenset(cycle)
        out = []
        for d in cycle:
            if (s, d) not in self.seen:
                self.seen.add((s, d))
                out.append(self.row(d, s))
        return out

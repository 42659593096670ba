"""Exact DAG extraction as a 0-1 integer program solved by HiGHS, acyclic on cyclic e-graphs too.

One binary ``x[n]`` per usable e-node: minimize ``sum cost[n] * x[n]`` subject to

* each root e-class (and each e-class that every extraction contains) picks one e-node, and no
  e-class picks more than one;
* a picked e-node's child e-classes pick one each (``sum(x[n] for n in c using k) <= sum(x[m]
  for m in k)`` for each e-class ``c`` and child e-class ``k``: at most one of c's nodes is picked);
* inside a cyclic strongly connected component of the e-class graph, a picked e-class is needed by
  a picked parent (any answer can drop the e-classes it does not reach, so this loses nothing);
* the picked nodes form no cycle.

Each optional e-class with several nodes also gets a binary ``use[c] = sum(x[n] for n in c)``:
redundant, but HiGHS's presolve, probing and branching then work on "is this e-class computed?";
on Tensat's BERT (equal-cost merges in many nestings) that turns hundreds of branch-and-bound nodes
that left a 6% gap at 60 s into a proof at the root.

First the e-graph is pruned soundly (:mod:`eqsat.extract.prune`): nodes no acyclic extraction can
use (self-loops, nodes whose children always need their own e-class, unbuildable ones), dominated
nodes, and nodes that cannot be part of an answer cheaper than the greedy-ls incumbent. Pruning
also gives a lower bound, the longest path every answer pays (:mod:`eqsat.extract.ilp_bounds`);
when it reaches the incumbent's cost (a sequential network such as VGG), no program is solved.
That bound is what the relaxation misses on Tensat's e-graphs: zero-cost ``split(concat(...))``
cycles let a fractional solution circulate through merges and pay almost nothing (VGG: 1.43
against 4.85), and no family of cycle rows closes that gap quickly. Otherwise it becomes one row,
``sum(cost[n] * x[n]) >= bound``, which no cheap cyclic answer satisfies.

Acyclicity (``acyclic="lazy"``, the default) is enforced by cycle cuts (:mod:`eqsat.extract.cuts`),
only inside cyclic components: a cutting-plane loop on the linear relaxation adds the rows its
fractional solutions violate (all the short cycles the relaxation cheats through, at once), then
the integer program is solved; if its answer has a cycle, that cycle's rows are added and it is
solved again, after greedy-dag over the cyclic answer's and the incumbent's nodes has offered a
new incumbent (often the optimum, which the bound then proves). Every row is valid for every
acyclic answer, so the solver's bound is a lower bound of the true optimum, and the first acyclic
answer of a solve that HiGHS proves optimal is optimal.
The incumbent's cost is passed as an objective cutoff, so "no better solution" (infeasible) proves
the incumbent optimal. ``acyclic="order"`` instead adds a topological level per e-class of a cyclic
component (``level[c] >= level[k] + 1`` when a node of ``c`` with child ``k`` is picked, the big-M
form Tensat uses); it is exact but its relaxation is weak. When the time limit hits, the best valid
answer found so far is returned with the solver's lower bound, and :class:`Extraction` carries the
optimality gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import EqsatError
from eqsat.extract import Choices, Extraction, Index, dag_cost, find_cycle, is_acyclic, sccs
from eqsat.extract.cuts import Cut, Separator
from eqsat.extract.prune import Pruned, prune

DEFAULT_TIME_LIMIT = 60.0
PROOF_TOL = 1e-9  # relative: an incumbent within this of a lower bound is optimal
HIGHS_SHARE = 0.95  # of the time left, given to the MIP solver (see _mip_loop)
ROOT_LP_SHARE = 0.5  # at most this share of the time limit goes to the root cutting-plane loop


def extract(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None = None,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    acyclic: str = "lazy",
    initial: Choices | None = None,
    progress: Callable[[str], None] | None = None,
) -> Extraction:
    """The cheapest acyclic DAG extraction, or the best one found within ``time_limit`` seconds."""
    try:
        import highspy
    except ImportError:  # pragma: no cover - highspy is a dependency
        raise EqsatError("the ilp extractor needs highspy (pip install highspy)") from None
    if acyclic not in ("lazy", "order"):
        raise EqsatError(f"ilp: acyclic must be 'lazy' or 'order', not {acyclic!r}")
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    roots = list(dict.fromkeys(roots))
    idx = Index(egraph, cost)
    if initial is None:
        from eqsat.extract import local_search

        initial = local_search.extract(egraph, roots, cost)
    best: Choices | None = None
    best_cost = math.inf
    try:
        # Only a valid incumbent may bound the search (a cyclic one could undercut the optimum).
        if is_acyclic(egraph, roots, initial):
            best_cost = dag_cost(egraph, roots, initial, cost)
            best = dict(initial)
    except (EqsatError, KeyError):
        best_cost = math.inf
    solve = _Solve(start, time_limit, best, best_cost)
    try:
        pruned = prune(idx, roots, best_cost)
    except ValueError:
        if best is None:
            raise EqsatError("ilp: the e-graph has no acyclic extraction from its roots") from None
        return solve.result(egraph, roots, cost, "optimal", "pruning left no cheaper answer")
    solve.lower = max(solve.lower, pruned.lower)
    if best is not None and pruned.lower >= best_cost - PROOF_TOL * max(1.0, abs(best_cost)):
        return solve.result(egraph, roots, cost, "optimal", "the longest-path bound proves it")
    model = _Model(idx, roots, pruned)
    say(f"ilp: {model.ncols} columns after pruning ({_removed(pruned)}), "
        f"cyclic components {sorted(len(c) for c in model.components)[-4:]}")  # fmt: skip

    h = highspy.Highs()
    h.silent()
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 1e-12)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("threads", 1)  # deterministic
    model.build(h, order=acyclic == "order")
    sep = Separator(idx, model.classes, model.col, model.components)
    if acyclic == "lazy" and model.components:
        _root_loop(h, model, sep, solve, say)
    model.integral(h)
    status = _mip_loop(h, model, sep, solve, egraph, roots, cost, say)
    return solve.result(egraph, roots, cost, status, model.detail())


class _Solve:
    """The clock, the incumbent and the lower bound."""

    def __init__(self, start: float, limit: float, best: Choices | None, best_cost: float):
        self.start = start
        self.limit = limit
        self.best = best
        self.best_cost = best_cost
        self.lower = -math.inf
        self.rounds = 0

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.start)

    def offer(self, choices: Choices, cost: float) -> None:
        if cost < self.best_cost:
            self.best, self.best_cost = choices, cost

    def result(
        self,
        egraph: dict[str, Any],
        roots: list[str],
        cost: dict[str, float] | None,
        status: str,
        detail: str,
    ) -> Extraction:
        if self.best is None:
            raise EqsatError(f"ilp: no valid extraction found within {self.limit:g} s")
        best_cost = self.best_cost
        lower = best_cost if status == "optimal" else min(self.lower, best_cost)
        gap = 0.0 if best_cost <= 0 else max(0.0, (best_cost - lower) / abs(best_cost))
        return Extraction(
            self.best,
            cost=best_cost,
            lower_bound=lower,
            gap=gap,
            optimal=status == "optimal" or gap <= 1e-7,
            seconds=time.perf_counter() - self.start,
            detail=f"{self.rounds} solver rounds, {detail}",
        )


def _root_loop(h: Any, model: _Model, sep: Separator, solve: _Solve, say: Callable) -> None:
    """Cutting planes on the linear relaxation until it violates no cycle row (or stalls)."""
    budget = solve.start + ROOT_LP_SHARE * solve.limit
    history: list[float] = []
    while time.perf_counter() < budget:
        h.setOptionValue("time_limit", max(budget - time.perf_counter(), 1e-3))
        h.run()
        if "optimal" not in h.modelStatusToString(h.getModelStatus()).lower():
            return
        value = float(h.getInfo().objective_function_value)
        solve.lower = max(solve.lower, value)
        history.append(value)
        x = np.asarray(h.getSolution().col_value)
        cuts = sep.separate(x)
        say(f"ilp: relaxation {value:.6g}, {len(cuts)} cycle rows added")
        if not cuts:
            return
        model.add_cuts(h, cuts)
        if len(history) > 8 and history[-1] - history[-9] <= 1e-7 * max(1.0, abs(value)):
            return  # stalled: the integer solver's branching does the rest


def _mip_loop(
    h: Any,
    model: _Model,
    sep: Separator,
    solve: _Solve,
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None,
    say: Callable,
) -> str:
    while True:
        left = solve.left()
        if left <= 0:
            return "time limit"
        # HiGHS checks its clock between phases and overruns by a few seconds on large models.
        h.setOptionValue("time_limit", max(HIGHS_SHARE * left - 0.5, 1e-3))
        if math.isfinite(solve.best_cost):
            # Only strictly cheaper answers are of interest: the incumbent has the rest.
            h.setOptionValue("objective_bound", solve.best_cost)
        h.run()
        solve.rounds += 1
        ms = h.modelStatusToString(h.getModelStatus()).lower()
        say(f"ilp round {solve.rounds}: {ms} in {h.getRunTime():.1f} s (of {left:.1f} s left)")
        info = h.getInfo()
        if "infeasible" in ms:
            if solve.best is None:
                raise EqsatError("ilp: the e-graph has no acyclic extraction from its roots")
            return "optimal"  # nothing cheaper than the incumbent satisfies valid rows
        bound = float(info.mip_dual_bound)
        if math.isfinite(bound):
            solve.lower = max(solve.lower, bound)
        x = np.asarray(h.getSolution().col_value)
        if x.size == 0 or int(info.primal_solution_status) == 0:
            return "time limit"
        cuts = sep.separate(np.round(x), tol=0.5)
        found = model.choices(x)
        if not cuts:
            # The separator sees every cycle of an integer answer; a direct check costs little
            # and keeps an invalid answer from ever being returned.
            cycle = find_cycle(model.idx, model.roots, found)
            if cycle is not None:
                cuts = sep.cycle_rows(cycle)
                if not cuts:
                    return "time limit"
        if not cuts and all(r in found for r in model.roots):
            solve.offer(found, dag_cost(egraph, roots, found, cost))
            if "optimal" in ms:
                solve.lower = max(solve.lower, min(bound, solve.best_cost))
                return "optimal"
            return "time limit"
        if not cuts:
            return "time limit"  # an incomplete answer: the solver stopped early
        model.add_cuts(h, cuts)
        say(f"ilp round {solve.rounds}: {len(cuts)} cycle rows cut, bound {solve.lower:.6g}")
        _repair(egraph, roots, cost, model.idx, found, solve)
        if solve.best_cost - solve.lower <= PROOF_TOL * max(1.0, abs(solve.best_cost)):
            return "optimal"  # a repaired answer reached the lower bound


def _repair(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None,
    idx: Index,
    found: Choices,
    solve: _Solve,
) -> None:
    """Offer greedy-dag's answer over the nodes of a cyclic integer answer and the incumbent: the
    cyclic answer is often a cheap one with a cycle or two where the incumbent is acyclic."""
    from eqsat.extract import greedy_dag

    allowed = set(found.values()) | set((solve.best or {}).values())
    only = {n: (c if n in allowed else math.inf) for n, c in idx.cost.items()}
    try:
        answer = dict(greedy_dag.extract(egraph, roots, only))
        if is_acyclic(egraph, roots, answer):
            solve.offer(answer, dag_cost(egraph, roots, answer, cost))
    except (EqsatError, KeyError):
        pass  # no acyclic answer over those nodes


class _Model:
    """The pruned e-graph and its program's columns and rows."""

    def __init__(self, idx: Index, roots: list[str], pruned: Pruned):
        self.idx = idx
        self.roots = roots
        self.pruned = pruned
        self.classes = pruned.classes
        self.col_nodes = [n for members in self.classes.values() for n in members]
        self.col = {n: i for i, n in enumerate(self.col_nodes)}
        self.ncols = len(self.col_nodes)
        graph = {c: {k for n in ms for k in idx.kids[n]} for c, ms in self.classes.items()}
        self.components = [comp for comp in sccs(graph) if len(comp) > 1]
        self.comp = {c: i for i, comp in enumerate(self.components) for c in comp}
        self.cuts = 0
        self.conflicts = 0
        self.class_cols: list[int] = []  # see _class_columns

    def build(self, h: Any, order: bool) -> None:
        idx, n = self.idx, self.ncols
        costs = np.array([idx.cost[x] for x in self.col_nodes], dtype=np.float64)
        h.addCols(n, costs, np.zeros(n), np.ones(n), 0, [], [], [])
        rows = _Rows()
        required = self.pruned.required | set(self.roots)
        for c, members in self.classes.items():
            cols = [self.col[m] for m in members]
            rows.add(cols, [1.0] * len(cols), 1.0 if c in required else 0.0, 1.0)
        parents: dict[str, list[int]] = {}
        for members in self.classes.values():
            users: dict[str, list[int]] = {}  # child e-class -> this e-class's nodes using it
            for m in members:
                for k in idx.kids[m]:
                    parents.setdefault(k, []).append(self.col[m])
                    users.setdefault(k, []).append(self.col[m])
            for k, us in users.items():
                if k in required:
                    continue  # picked anyway
                # At most one of ``us`` is picked, so their sum (not just each) needs k.
                cols = [self.col[x] for x in self.classes[k]]
                rows.add([*cols, *us], [1.0] * len(cols) + [-1.0] * len(us), 0.0)
        for c in self.comp:
            if c not in required:
                # A picked e-class of a cyclic component has a picked parent that needs it.
                cols = [self.col[m] for m in self.classes[c]]
                ps = parents.get(c, [])
                rows.add([*ps, *cols], [1.0] * len(ps) + [-1.0] * len(cols), 0.0)
        for comp in self.components:
            for n, _k, ok in self.pruned.conflicts(comp):
                # n needs k, and k's other nodes need n's e-class: picking n picks one of ok.
                cols = [self.col[m] for m in ok]
                rows.add([self.col[n], *cols], [1.0] + [-1.0] * len(cols), -math.inf, 0.0)
                self.conflicts += 1
        if order:
            self._order_rows(h, rows)
        self._class_columns(h, rows, required)
        lower = self.pruned.lower
        if math.isfinite(lower) and lower > 0:
            # Every acyclic answer pays its longest path: this one row removes all the cheap
            # cyclic answers (through free split/concat merges) the cycle rows would otherwise
            # cut one solve at a time. The slack absorbs rounding in the bound's sums.
            rows.add(list(range(self.ncols)), costs.tolist(), lower - PROOF_TOL * max(1.0, lower))
        rows.flush(h)

    def _class_columns(self, h: Any, rows: _Rows, required: set[str]) -> None:
        """The ``use[c]`` columns (see the module docstring)."""
        classes = [c for c, ms in self.classes.items() if c not in required and len(ms) > 1]
        base = h.getNumCol()
        k = len(classes)
        if not k:
            return
        h.addCols(k, np.zeros(k), np.zeros(k), np.ones(k), 0, [], [], [])
        for i, c in enumerate(classes):
            cols = [self.col[m] for m in self.classes[c]]
            rows.add([*cols, base + i], [1.0] * len(cols) + [-1.0], 0.0, 0.0)
        self.class_cols = list(range(base, base + k))

    def integral(self, h: Any) -> None:
        import highspy

        cols = np.array([*range(self.ncols), *self.class_cols], dtype=np.int32)
        h.changeColsIntegrality(
            len(cols), cols, np.full(len(cols), highspy.HighsVarType.kInteger, np.uint8)
        )

    def _order_rows(self, h: Any, rows: _Rows) -> None:
        level: dict[str, int] = {}
        for c in self.comp:
            level[c] = self.ncols + len(level)
        if not level:
            return
        k = len(level)
        size = [len(self.components[self.comp[c]]) for c in level]
        h.addCols(k, np.zeros(k), np.zeros(k), np.array(size, dtype=np.float64) - 1, 0, [], [], [])
        for c, members in self.classes.items():
            if c not in self.comp:
                continue
            big = float(len(self.components[self.comp[c]]))
            for m in members:
                for kid in self.idx.kids[m]:
                    if self.comp.get(kid) == self.comp[c]:
                        # level[c] - level[kid] - big * x[m] >= 1 - big
                        rows.add([level[c], level[kid], self.col[m]], [1.0, -1.0, -big], 1 - big)

    def add_cuts(self, h: Any, cuts: list[Cut]) -> None:
        rows = _Rows()
        for cols, vals in cuts:
            rows.add(cols, vals, -math.inf, 0.0)
        rows.flush(h)
        self.cuts += len(cuts)

    def choices(self, values: np.ndarray) -> Choices:
        out: Choices = {}
        for c, members in self.classes.items():
            best = max(members, key=lambda m: values[self.col[m]])
            if values[self.col[best]] > 0.5:
                out[c] = best
        return out

    def detail(self) -> str:
        return f"{self.cuts} cycle rows, {self.conflicts} conflict rows, {self.ncols} columns ({_removed(self.pruned)})"


def _removed(pruned: Pruned) -> str:
    parts = [f"{v} {k}" for k, v in pruned.removed.items() if v]
    return "pruned " + (", ".join(parts) if parts else "nothing")


class _Rows:
    """Rows collected in CSR form and passed to HiGHS in one call."""

    def __init__(self) -> None:
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, cols: list[int], vals: list[float], lo: float, hi: float = math.inf) -> None:
        self.starts.append(len(self.index))
        self.index.extend(cols)
        self.value.extend(vals)
        self.lo.append(lo)
        self.hi.append(hi)

    def flush(self, h: Any) -> None:
        if not self.lo:
            return
        inf = h.getInfinity()
        lo = np.clip(np.array(self.lo), -inf, inf)
        hi = np.clip(np.array(self.hi), -inf, inf)
        h.addRows(
            len(self.lo), lo, hi, len(self.index), np.array(self.starts, dtype=np.int32),
            np.array(self.index, dtype=np.int32), np.array(self.value, dtype=np.float64),
        )  # fmt: skip

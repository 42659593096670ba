"""Greedy DAG extraction refined by local search to a local optimum: re-choose e-classes.

Starting from greedy-dag's bottom-up answer, every e-class of the extracted DAG tries each other
usable e-node (:mod:`eqsat.extract.refine`, moves priced incrementally); a move switches that
class (any class it newly needs comes with its kept choice) and is kept when the whole DAG is still
acyclic and cheaper. A move that is not cheaper alone is tried with the best of a few partners:
another DAG class switched to a node that reuses a class the first move newly needs (sharing pays
off only when both switch). After greedy-dag's own sweeps (so the answer is never worse than its),
this strategy tries more partners per move and sweeps until one finds nothing; then it also tries
each move with the children its new node newly needs re-picked given what the DAG already holds
(their kept choices were priced bottom-up, without it), and alternates the two kinds of sweep
until neither finds anything (at most ``max_passes`` sweeps each, within ``time_limit`` seconds).
"""

from __future__ import annotations

import time
from typing import Any

from eqsat.extract import Extraction, greedy_dag
from eqsat.extract.dense import Dense
from eqsat.extract.refine import improve

PAIRS = 8  # partners tried per move (greedy-dag tries fewer)


def extract(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None = None,
    *,
    time_limit: float | None = None,
    max_passes: int = 16,
) -> Extraction:
    start = time.perf_counter()
    d = Dense(egraph, cost)
    sol = greedy_dag.solution(d, d.class_numbers(roots), greedy_dag.choose(d))
    if time_limit is None:
        time_limit = max(0.5, 20 * (time.perf_counter() - start))
    deadline = start + time_limit
    # greedy-dag's sweeps first (so the answer is never worse than its), then wider pair moves
    # and the re-picking moves, alternating until neither finds anything.
    improve(sol, passes=greedy_dag.SWEEPS)
    improve(sol, passes=max_passes, pairs=PAIRS, deadline=deadline)
    while improve(sol, passes=max_passes, pairs=0, refill=True, deadline=deadline):
        if not improve(sol, passes=max_passes, pairs=PAIRS, deadline=deadline):
            break
    return Extraction(sol.choices(), cost=sol.total, seconds=time.perf_counter() - start)

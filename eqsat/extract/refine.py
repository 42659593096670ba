"""Local search over a DAG extraction, with the cost of each move computed incrementally.

A :class:`Solution` holds one chosen e-node per e-class (classes outside the extracted DAG keep a
choice too, used when a move makes them needed) and, for the classes in the DAG, how many chosen
parents use them. Switching an e-class's node adds the child classes it newly needs (with their
kept choices, recursively) and drops those no chosen node uses any more, so a move costs time in
proportion to the part of the DAG it changes, not to the DAG's size; every change is logged and a
rejected move is undone. A cheaper move is checked for cycles by a depth-first search from the
switched classes that skips every class below them in the DAG's topological order (such a class
cannot reach them); use counts cannot see a cycle cut off from the roots, so that search also
rejects those.

:func:`improve` sweeps the classes of the DAG (dearest chosen node first), trying every other
usable node; a move is kept when the DAG gets cheaper. A merged node (one matmul for two, split in
two) pays off only when two classes switch to it together, so a switch that is not cheaper alone is
tried with up to ``pairs`` partners: switches of other DAG classes to a node that needs a class the
first switch newly needs (those saving most on their own node first); the cheapest pair is kept
if it beats the DAG. With ``refill``, the children the new node newly needs are also re-picked
given the DAG (their kept choices were priced bottom-up, without its sharing).
"""

from __future__ import annotations

import math
import time

from eqsat.extract.dense import Dense

_OUT = 1 << 62  # topological position of a class outside the current DAG
_TOL = 1e-12  # relative improvement a move must make (summation noise is far below it)
PAIRS = 2  # partner switches tried with a move that is not cheaper alone (greedy-dag's)


class Solution:
    """A DAG extraction under local changes: ``choice`` per class, use counts, total cost."""

    def __init__(self, d: Dense, roots: list[int], choice: list[int]):
        self.d = d
        self.roots = roots
        self.choice = list(choice)
        self.ref = [0] * d.classes  # chosen parents (and root pins) using a class
        self.pos = [_OUT] * d.classes  # topological position in the DAG, children first
        self.members: list[int] = []
        self.total = 0.0
        self.bad = False  # a needed class has no choice
        self._rlog: list[int] = []  # k: ref[k] was raised, ~k: lowered
        self._clog: list[tuple[int, int]] = []  # (class, previous choice)
        self._seen = [0] * d.classes
        self._path = [0] * d.classes
        self._epoch = 0
        self._alts: dict[int, list[int]] = {}
        self._users: dict[int, list[tuple[float, int, int]]] | None = None
        self._inc(list(roots))
        self.valid = not self.bad and self._order()
        self._rlog.clear()
        if self.valid:
            self.total = self.exact_total()

    def exact_total(self) -> float:
        cost, choice = self.d.node_cost, self.choice
        return math.fsum(cost[choice[c]] for c in self.members)

    def _inc(self, stack: list[int]) -> None:
        ref, choice, log = self.ref, self.choice, self._rlog
        kids, cost = self.d.kids, self.d.node_cost
        total = self.total
        while stack:
            k = stack.pop()
            log.append(k)
            r = ref[k]
            ref[k] = r + 1
            if r == 0:
                n = choice[k]
                if n < 0:
                    self.bad = True
                    continue
                total += cost[n]
                stack.extend(kids[n])
        self.total = total

    def switch(self, c: int, n: int) -> None:
        """Choose node ``n`` for class ``c``, updating the DAG if ``c`` is in it."""
        choice = self.choice
        old = choice[c]
        self._clog.append((c, old))
        choice[c] = n
        if self.ref[c] == 0:
            return
        kids, cost = self.d.kids, self.d.node_cost
        self.total += cost[n] - (cost[old] if old >= 0 else 0.0)
        self._inc(list(kids[n]))  # first, so shared children never leave and come back
        if old < 0:
            return
        ref, log, total = self.ref, self._rlog, self.total
        stack = list(kids[old])
        while stack:
            k = stack.pop()
            log.append(~k)
            r = ref[k] - 1
            ref[k] = r
            if r == 0:
                m = choice[k]
                if m >= 0:
                    total -= cost[m]
                    stack.extend(kids[m])
        self.total = total

    def mark(self) -> tuple[int, int, float, bool]:
        return len(self._rlog), len(self._clog), self.total, self.bad

    def rollback(self, mark: tuple[int, int, float, bool]) -> None:
        r, c, self.total, self.bad = mark
        ref, rlog, clog, choice = self.ref, self._rlog, self._clog, self.choice
        if len(rlog) > r:
            for k in reversed(rlog[r:]):
                if k >= 0:
                    ref[k] -= 1
                else:
                    ref[~k] += 1
            del rlog[r:]
        if len(clog) > c:
            for cls, old in reversed(clog[c:]):
                choice[cls] = old
            del clog[c:]

    def entered(self, mark: tuple[int, int, float, bool]) -> list[int]:
        """Classes in the DAG now that were not in it when it was last committed."""
        ref, pos = self.ref, self.pos
        out = {k: None for k in self._rlog[mark[0] :] if k >= 0 and ref[k] > 0 and pos[k] == _OUT}
        return list(out)

    def acyclic(self) -> bool:
        """Whether the classes in use are still acyclic after the switches since the last commit:
        a new cycle runs through a switched class or one that came into use (a search from those
        finds it, even one cut off from the roots, which use counts keep alive)."""
        ref, pos = self.ref, self.pos
        changed = [c for c, _ in self._clog if ref[c] > 0]
        starts = changed + self.entered((0, 0, 0.0, False))
        if not starts:
            return True
        choice, kids = self.choice, self.d.kids
        lim = min(pos[c] for c in changed) if changed else _OUT
        self._epoch += 1
        ep, seen, path = self._epoch, self._seen, self._path
        for s in starts:
            if seen[s] == ep:
                continue
            seen[s] = path[s] = ep
            stack = [(s, iter(kids[choice[s]]))]
            while stack:
                k, it = stack[-1]
                for j in it:
                    if pos[j] < lim:
                        continue  # unchanged and below every switch: reaches none of them
                    if seen[j] == ep:
                        if path[j] == ep:
                            return False
                        continue
                    seen[j] = path[j] = ep
                    stack.append((j, iter(kids[choice[j]])))
                    break
                else:
                    stack.pop()
                    path[k] = 0
        return True

    def alternatives(self, c: int) -> list[int]:
        """The usable e-nodes of class ``c``."""
        alts = self._alts.get(c)
        if alts is None:
            d = self.d
            alts = self._alts[c] = [n for n in d.class_nodes[c] if d.usable(n)]
        return alts

    def users(self) -> dict[int, list[tuple[float, int, int]]]:
        """For each class outside the DAG, the switches ``(gain, class, node)`` of DAG classes to
        a node that needs it, the ones saving most on their own node first (rebuilt after each
        commit)."""
        if self._users is None:
            kids, pos, choice, cost = self.d.kids, self.pos, self.choice, self.d.node_cost
            users: dict[int, list[tuple[float, int, int]]] = {}
            for o in self.members:
                now = cost[choice[o]]
                for p in self.alternatives(o):
                    if p != choice[o]:
                        for k in kids[p]:
                            if pos[k] == _OUT:
                                users.setdefault(k, []).append((cost[p] - now, o, p))
            for switches in users.values():
                switches.sort()
            self._users = users
        return self._users

    def commit(self) -> None:
        self._users = None
        self._rlog.clear()
        self._clog.clear()
        ok = self._order()
        assert ok, "a committed move closed a cycle"
        self.total = self.exact_total()

    def _order(self) -> bool:
        """Recompute the DAG's members in topological order (children first); False on a cycle."""
        pos, choice, kids = self.pos, self.choice, self.d.kids
        for c in self.members:
            pos[c] = _OUT
        state = self._seen
        self._epoch += 1
        on, done = self._epoch, self._epoch + 1
        self._epoch += 1
        order: list[int] = []
        for root in self.roots:
            if state[root] == done:
                continue
            state[root] = on
            stack = [(root, iter(kids[choice[root]]))]
            while stack:
                k, it = stack[-1]
                for j in it:
                    s = state[j]
                    if s == on:
                        self.members = []
                        return False
                    if s != done:
                        state[j] = on
                        stack.append((j, iter(kids[choice[j]])))
                        break
                else:
                    stack.pop()
                    state[k] = done
                    pos[k] = len(order)
                    order.append(k)
        self.members = order
        return True

    def choices(self) -> dict[str, str]:
        return self.d.choices(self.members, self.choice)


def improve(
    sol: Solution,
    *,
    passes: int = 1,
    pairs: int = PAIRS,
    refill: bool = False,
    deadline: float | None = None,
) -> int:
    """Improving moves over ``passes`` sweeps (fewer if one finds none, or once past the
    ``time.perf_counter()`` value ``deadline``); the number kept.

    A class whose moves all failed is not tried again until some move is kept: the search is
    deterministic, so they would fail again (a last sweep only re-tries the classes before the
    last kept move)."""
    cost = sol.d.node_cost
    kept = 0
    failed: dict[int, int] = {}  # class -> moves kept so far when all of its moves failed
    for _ in range(passes):
        before = kept
        choice = sol.choice
        order = sorted(
            (c for c in sol.members if len(sol.alternatives(c)) > 1),
            key=lambda c: -cost[choice[c]],
        )
        for c in order:
            if failed.get(c) == kept or sol.ref[c] == 0:
                continue
            if deadline is not None and time.perf_counter() > deadline:
                return kept
            here = kept
            for n in sol.alternatives(c):
                if sol.ref[c] > 0 and n != sol.choice[c] and _try(sol, c, n, pairs, refill):
                    kept += 1
            if kept == here:
                failed[c] = kept
        if kept == before:
            break
    return kept


def _try(sol: Solution, c: int, n: int, pairs: int, refill: bool) -> bool:
    """Switch ``c`` to ``n`` if that is cheaper: alone, with the best of ``pairs`` partner
    switches, or with the classes it newly needs re-picked given the DAG (``refill``). Acyclicity is
    checked only for a cheaper candidate."""
    best = sol.total - _TOL * abs(sol.total)
    mark = sol.mark()
    sol.switch(c, n)
    if sol.bad:
        sol.rollback(mark)
        return False
    if sol.total < best:
        if sol.acyclic():
            sol.commit()
            return True
        sol.rollback(mark)
        return False
    entered = sol.entered(mark)
    if pairs:
        users, ref = sol.users(), sol.ref
        partners: set[tuple[float, int, int]] = set()
        for k in entered:
            taken = 0
            for switch in users.get(k, ()):
                if switch[1] != c and ref[switch[1]] > 0:
                    partners.add(switch)
                    taken += 1
                    if taken == pairs:
                        break
        ranked = [(o, p) for _, o, p in sorted(partners)]
        found: tuple[int, int] | None = None
        for o, p in ranked[:pairs]:
            m2 = sol.mark()
            sol.switch(o, p)
            if not sol.bad and sol.total < best and sol.acyclic():
                found, best = (o, p), sol.total
            sol.rollback(m2)
        if found is not None:
            sol.switch(*found)
            sol.commit()
            return True
    if refill and _refill_may_pay(sol, entered, best):
        # The children the new node newly needs were priced bottom-up, without the DAG's
        # sharing: re-pick each (the node that makes the whole DAG cheapest).
        ref, pos = sol.ref, sol.pos
        for k in sol.d.kids[n]:
            alts = sol.alternatives(k)
            if pos[k] != _OUT or ref[k] == 0 or len(alts) < 2:
                continue
            here, pick = sol.total, -1
            for p in alts:
                if p == sol.choice[k]:
                    continue
                m2 = sol.mark()
                sol.switch(k, p)
                if not sol.bad and sol.total < here - _TOL * abs(here):
                    here, pick = sol.total, p
                sol.rollback(m2)
            if pick >= 0:
                sol.switch(k, pick)
        if sol.total < best and sol.acyclic():
            sol.commit()
            return True
    sol.rollback(mark)
    return False


def _refill_may_pay(sol: Solution, entered: list[int], best: float) -> bool:
    """Whether re-picking the classes a move newly needs could make it cheaper than ``best``: at
    most all of their cost goes (re-picking them frees nothing the DAG held before)."""
    ref, choice, cost = sol.ref, sol.choice, sol.d.node_cost
    added = math.fsum(cost[choice[k]] for k in entered if ref[k] > 0)
    return sol.total - added < best

"""Numerical soundness checking of rewrite rules (``eqsat check-rules``).

For each rule, its left side is instantiated as a small graph on random tensors with random shapes
(inputs, random constants, and constants of one repeated value such as 0 or 1, so that conditions
like ``splat(c) == 1`` can hold); attribute variables get random valid values (a permutation for a
Transpose, a data type for a Cast). The graph is encoded, the rule alone runs once, and every
alternative the rule added to the root e-class is decoded and run with the numpy reference against
the original on random inputs. A rule fails if an alternative differs numerically, has another
shape or dtype, or is not shape-correct; it is "not exercised" if no sample made it fire.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from egglog.declarations import (
    BiRewriteDecl,
    CallDecl,
    ClassMethodRef,
    EqDecl,
    ExprFactDecl,
    FunctionRef,
    InitRef,
    LitDecl,
    RewriteDecl,
    RuleDecl,
    UnboundVarDecl,
)

from eqsat import ops
from eqsat.decode import View, prune
from eqsat.egraph import Limits, Rule, saturate, spec
from eqsat.encode import encode
from eqsat.errors import EqsatError
from eqsat.extract import tree
from eqsat.ir import Graph, Value
from eqsat.optimize import compare

SPLATS = (0.0, 1.0, 0.0, 1.0, -1.0, 2.0, 0.5)
CAST_TO = (1, 10, 11, 6, 7)  # float, float16, double, int32, int64


@dataclass
class RuleCheck:
    """The outcome for one rule: ``status`` is "ok", "FAILED" or "not exercised"."""

    name: str
    status: str
    fired: int = 0  # samples in which the rule fired
    compared: int = 0  # alternatives compared numerically
    detail: str = ""


class _Skip(Exception):
    """This sample cannot be instantiated (shapes do not fit); try another."""


def lhs_of(decl: Any) -> Any:
    """The pattern a rule matches: a rewrite's left side, or a rule's ``eq(var).to(term)``."""
    if isinstance(decl, RewriteDecl | BiRewriteDecl):
        return decl.lhs
    if isinstance(decl, RuleDecl):
        for fact in decl.body:
            if isinstance(fact, EqDecl):
                for side in (fact.right, fact.left):
                    if isinstance(side, CallDecl) and isinstance(side.callable, FunctionRef):
                        return side
            if isinstance(fact, ExprFactDecl) and isinstance(fact.typed_expr.expr, CallDecl):
                return fact.typed_expr.expr
    return None


class Instantiator:
    """Builds a random graph for one left side."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.g = Graph("rule")
        self.env: dict[str, Any] = {}
        self.dtype = np.dtype(rng.choice(["float32"] * 6 + ["float16", "float64"] * 2))
        rank = int(rng.choice([0, 1, 2, 2, 3, 3, 4, 5, 6]))
        if rng.random() < 0.3:  # square matrices: every MatMul chain fits
            n = int(rng.integers(2, 5))
            self.base = (n,) * rank
        else:
            self.base = tuple(int(d) for d in rng.integers(2, 5, size=rank))

    def leaf_shape(self) -> tuple[int, ...]:
        r = self.rng.random()
        base = self.base
        if r < 0.5:
            return base
        if r < 0.65:
            return tuple(1 if self.rng.random() < 0.5 else d for d in base)
        if r < 0.8:
            return base[int(self.rng.integers(0, len(base) + 1)) :]
        if r < 0.9:
            return ()
        return tuple(int(d) for d in self.rng.integers(2, 4, size=2))

    def leaf(self, name: str) -> Value:
        shape = self.leaf_shape()
        r = self.rng.random()
        if r < 0.5:
            return self.g.input(self.g.fresh_name(name), shape, self.dtype)
        if r < 0.8:
            value = SPLATS[int(self.rng.integers(0, len(SPLATS)))]
            return self.g.constant(np.full(shape, value, self.dtype), f"{name}_splat")
        data = self.rng.uniform(0.5, 2.0, size=shape) * self.rng.choice([-1, 1], size=shape)
        return self.g.constant(data.astype(self.dtype), f"{name}_const")

    def tensor(self, decl: Any) -> Value | None:
        if isinstance(decl, UnboundVarDecl):
            if decl.name not in self.env:
                self.env[decl.name] = self.leaf(decl.name)
            return self.env[decl.name]
        if isinstance(decl, CallDecl) and isinstance(decl.callable, ClassMethodRef):
            if decl.callable.method_name == "none":
                return None
            raise _Skip(f"cannot instantiate T.{decl.callable.method_name} in a pattern")
        if not (isinstance(decl, CallDecl) and isinstance(decl.callable, FunctionRef)):
            raise _Skip(f"cannot instantiate {type(decl).__name__}")
        op = decl.callable.ident.name
        if not ops.is_supported(op):
            raise _Skip(f"unknown op {op}")
        s = spec(op)
        args = [a.expr for a in decl.args]
        if s.variadic:
            items, lst = [], args[0]
            while isinstance(lst, CallDecl) and lst.callable.method_name == "cons":  # type: ignore[union-attr]
                items.append(self.tensor(lst.args[0].expr))
                lst = lst.args[1].expr
            inputs, rest = items, args[1:]
        else:
            inputs = []
            for k, a in enumerate(args[: s.num_inputs]):
                special = isinstance(a, UnboundVarDecl) and a.name not in self.env and inputs
                value = self.shape_input(op, k, inputs) if special else None
                if value is not None:
                    self.env[a.name] = value
                inputs.append(value if value is not None else self.tensor(a))
            rest = args[s.num_inputs :]
        attrs = {}
        for name, a in zip(s.attrs, rest, strict=False):
            attrs[name] = self.attr(op, name, a, inputs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        try:
            return self.g.op(op, *inputs, **attrs)
        except EqsatError as exc:
            raise _Skip(str(exc)) from None

    def shape_input(self, op: str, k: int, inputs: list[Value | None]) -> Value | None:
        """A constant for an input that shapes depend on (Reshape's shape, axes, Dropout mode)."""
        x, rng = inputs[0], self.rng
        if x is None:
            return None
        if op == "Reshape" and k == 1:
            dims = [d for d in x.shape if d != 1]
            rng.shuffle(dims)
            if dims and rng.random() < 0.5:
                dims = [int(np.prod(dims))]
            return self.g.constant(np.array(dims, np.int64), "shape")
        if op == "Unsqueeze" and k == 1:
            axis = int(rng.integers(-x.rank - 1, x.rank + 1))
            return self.g.constant(np.array([axis], np.int64), "axes")
        if op == "Squeeze" and k == 1:
            ones = [i for i, d in enumerate(x.shape) if d == 1]
            if not ones:
                raise _Skip("nothing to squeeze")
            return self.g.constant(np.array(ones, np.int64), "axes")
        if op == "Dropout" and k == 1:
            return self.g.constant(np.array(0.5, np.float32), "ratio")
        if op == "Dropout" and k == 2:
            return self.g.constant(np.array(False), "training_mode")
        return None

    def attr(self, op: str, name: str, decl: Any, inputs: list[Value | None]) -> Any:
        try:
            return _ground(decl)
        except _Skip:
            pass
        key = _var_name(decl)
        if key is not None and key in self.env:
            return self.env[key]
        value = self.sample(op, name, inputs)
        if key is not None:
            self.env[key] = value
        return value

    def sample(self, op: str, name: str, inputs: list[Value | None]) -> Any:
        rng = self.rng
        first = inputs[0] if inputs else None
        if op == "Transpose" and name == "perm":
            return [int(i) for i in rng.permutation(first.rank if first is not None else 0)]
        if op == "Cast" and name == "to":
            return int(rng.choice(CAST_TO))
        if name in ("transA", "transB"):
            return int(rng.integers(0, 2))
        if name in ("alpha", "beta"):
            return float(rng.choice([1.0, 0.5, 2.0]))
        default = ops.get(op).attrs[name]
        if default is ops.REQUIRED:
            raise _Skip(f"no way to choose {op}.{name}")
        return default


def _var_name(decl: Any) -> str | None:
    if isinstance(decl, UnboundVarDecl):
        return decl.name
    if isinstance(decl, CallDecl):
        for a in decl.args:
            found = _var_name(a.expr)
            if found is not None:
                return found
    return None


def _ground(decl: Any) -> Any:
    """The Python value of a variable-free attribute term."""
    if isinstance(decl, LitDecl):
        return decl.value
    if isinstance(decl, CallDecl):
        args = [_ground(a.expr) for a in decl.args]
        if isinstance(decl.callable, InitRef):  # Vec[i64](...)
            return list(args)
        if isinstance(decl.callable, ClassMethodRef):
            method = decl.callable.method_name
            if method == "none":
                return None
            if method in ("int", "float", "str", "ints"):
                return args[0]
    raise _Skip("attribute has variables")


def check_rule(rule: Rule, samples: int = 200, fires: int = 3, seed: int = 0) -> RuleCheck:
    lhs = lhs_of(rule.rewrite.decl)
    if lhs is None:
        return RuleCheck(rule.name, "not exercised", detail="no left side to instantiate")
    result = RuleCheck(rule.name, "not exercised")
    rng = np.random.default_rng(seed)
    reasons: dict[str, int] = {}
    for _ in range(samples):
        inst = Instantiator(rng)
        try:
            root = inst.tensor(lhs)
        except _Skip as exc:
            reasons[str(exc)[:80]] = reasons.get(str(exc)[:80], 0) + 1
            continue
        if root is None or root.const is not None:
            continue
        g = inst.g
        g.output(root)
        failure = _check_instance(rule, g, result)
        if failure:
            result.status, result.detail = "FAILED", failure
            return result
        if result.fired >= fires:
            break
    if result.fired and result.compared:
        result.status = "ok"
    elif result.fired:
        result.detail = "fired, but every alternative was cyclic"
    elif reasons:
        result.detail = "no sample fired; " + max(reasons, key=lambda k: reasons[k])
    return result


def _check_instance(rule: Rule, g: Graph, result: RuleCheck) -> str:
    enc = encode(g)
    sat = saturate(enc, [rule], Limits(iterations=1, seconds=5.0))
    if not sat.matches.get(rule.name):
        return ""
    result.fired += 1
    serialized = prune(json.loads(enc.egraph._serialize().to_json()))
    view = View(serialized, enc)
    root = view.roots()[0]
    original = view.original_choices()
    lhs_node = view.value_node[id(g.outputs[0])]
    unit = {nid: (math.inf if nid in view.invalid else 1.0) for nid in view.nodes}
    # As optimize() does: the extractor sees the tensor e-nodes reachable from the root only.
    tensors = view.tensor_egraph(unit, keep=original)
    base = tree.extract(tensors, [root], unit)  # covers every class it can price
    for nid in view.classes[root]:
        if nid == lhs_node or view.nodes[nid].kind == "none":
            continue
        if nid in view.invalid:
            return (
                f"not shape-correct: {view.nodes[nid].op or view.nodes[nid].kind} in {g.summary()}"
            )
        choices = {**base, **original, root: nid}
        try:
            decoded = view.decode(choices)
        except EqsatError:
            continue  # a cyclic or unusable combination, not evidence against the rule
        ok, err = compare(g, decoded)
        result.compared += 1
        if not ok:
            return f"max abs error {err:.3g} on\n{g.summary()}\nrewritten to\n{decoded.summary()}"
    return ""


def check_rules(rules: list[Rule], samples: int = 200, seed: int = 0) -> list[RuleCheck]:
    return [check_rule(r, samples=samples, seed=seed + i) for i, r in enumerate(rules)]


def format_checks(checks: list[RuleCheck]) -> str:
    width = max((len(c.name) for c in checks), default=4)
    lines = []
    for c in checks:
        line = f"{c.status:<13} {c.name:<{width}}  fired {c.fired}, compared {c.compared}"
        if c.detail and c.status != "ok":
            line += "  " + c.detail.splitlines()[0]
        lines.append(line)
    failed = sum(c.status == "FAILED" for c in checks)
    unexercised = sum(c.status == "not exercised" for c in checks)
    lines.append(f"{len(checks)} rules: {failed} failed, {unexercised} not exercised")
    return "\n".join(lines)

"""Rewrite-rule families for the e-graph optimizer, one module per family, and how to load them.

A family module makes a :class:`Family` and declares rules on it; a rule is a function whose
parameters (typed :class:`~eqsat.egraph.T`, ``Vec[i64]``, ...) become pattern variables and which
returns ``(lhs, rhs, *conditions)``::

    from eqsat.egraph import E, T
    from eqsat.rules import Family

    family = Family("mine")

    @family.rewrite("relu-relu", caveat="exact")
    def _(x: T):
        return E.Relu(E.Relu(x)), E.Relu(x)

``@family.rule(name)`` takes a function returning any egglog rewrite or rule instead (for rules that
compute new attribute values in their action). ``optimize(rules=...)`` and ``eqsat check-rules``
accept family names (see :data:`FAMILIES`), paths of such modules or folders of them, egglog
rulesets, rules and families.

Only the rules that can fire on a graph run on it (:func:`relevant`): a rule whose pattern names
an op that is neither in the graph nor made by another rule that can fire is dropped before
saturation. Families that generate many rules per op declare them with :meth:`Family.defer`, so
that they are built only for ops a graph can hold (building fusion's ~290 elementwise rules took
~5 s, longer than optimizing most models).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from egglog import Ruleset, rewrite, var

from eqsat.egraph import Rule
from eqsat.errors import RuleError

# Family name -> "module" (every Family in it) or "module:attribute" (one Family).
FAMILIES = {
    "algebraic": "eqsat.rules.algebraic",
    "fusion": "eqsat.rules.fusion",
    "fusion-elementwise": "eqsat.rules.fusion:elementwise",
    "fusion-epilogue": "eqsat.rules.fusion:epilogue",
    "fusion-bn": "eqsat.rules.fusion:bn",
    "fusion-composite": "eqsat.rules.fusion:composite",
    "layout": "eqsat.rules.layout",
    "layout-nhwc": "eqsat.rules.layout:nhwc",
    "layout-transpose": "eqsat.rules.layout:transpose",
    "horizontal": "eqsat.rules.horizontal",
}
# Fusion is on by default: its rules run in their own stage (see eqsat.egraph.saturate) and add
# kernels next to the ops they replace, so extraction keeps the unfused graph where it is cheaper.
DEFAULT_FAMILIES = ("algebraic", "fusion")


class Family:
    """A named group of rules, declared with :meth:`rewrite` or :meth:`rule`."""

    def __init__(self, name: str, doc: str = "", *, stage: str = ""):
        self.name = name
        self.doc = doc
        self.stage = (
            stage  # for all its rules: "" (by ``explosive``), "simplify", "fuse", "explore"
        )
        self.rules: list[Rule] = []
        # op -> builders that declare the rules matching that op, run by :meth:`build`.
        self.deferred: dict[str, list[Callable[[], Any]]] = {}

    def defer(self, op: str, build: Callable[[], Any]) -> None:
        """Run ``build`` (which declares rules on this family whose patterns match ``op``) only
        when a graph can hold ``op`` (see :meth:`build`)."""
        self.deferred.setdefault(op, []).append(build)

    def build(self, ops: Collection[str] | None = None) -> list[Rule]:
        """Declare the deferred rules of ``ops`` (all of them when None); returns :attr:`rules`."""
        for op in list(self.deferred) if ops is None else [o for o in ops if o in self.deferred]:
            for build in self.deferred.pop(op):
                build()
        return self.rules

    def _vars(self, fn: Callable[..., Any]) -> list[Any]:
        hints = get_type_hints(fn)
        # Parameters with defaults are loop values bound at declaration, not pattern variables.
        params = [p.name for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
        missing = [p for p in params if p not in hints]
        if missing:
            raise RuleError(f"rule {fn.__name__}: parameters {missing} need a type annotation")
        return [var(p, hints[p]) for p in params]

    def _add(self, rule: Rule) -> None:
        if any(r.name == rule.name for r in self.rules):
            raise RuleError(f"family {self.name!r} already has a rule named {rule.name!r}")
        self.rules.append(rule)

    def rewrite(
        self, name: str, *, caveat: str = "", explosive: bool = False, bidirectional: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare ``lhs -> rhs`` (when the conditions hold); the function returns all three."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            try:
                lhs, rhs, *conditions = fn(*self._vars(fn))
                rw = rewrite(lhs).to(rhs, *conditions)
            except RuleError:
                raise
            except Exception as exc:
                raise RuleError(f"rule {name!r}: {type(exc).__name__}: {exc}") from exc
            self._add(Rule(f"{self.name}/{name}", rw, self.name, caveat, explosive, self.stage))
            if bidirectional:
                back = rewrite(rhs).to(lhs, *conditions)
                self._add(
                    Rule(f"{self.name}/{name}-rev", back, self.name, caveat, explosive, self.stage)
                )
            return fn

        return decorate

    def rule(
        self, name: str, *, caveat: str = "", explosive: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an egglog rewrite or rule built by the function (for computed right sides)."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            try:
                built = fn(*self._vars(fn))
            except Exception as exc:
                raise RuleError(f"rule {name!r}: {type(exc).__name__}: {exc}") from exc
            self._add(Rule(f"{self.name}/{name}", built, self.name, caveat, explosive, self.stage))
            return fn

        return decorate

    def __repr__(self) -> str:
        return f"<rule family {self.name!r}: {len(self.rules)} rules>"


def family(name: str, deferred: bool = True) -> list[Rule]:
    """The rules of the built-in family ``name`` (without its deferred ones unless ``deferred``)."""
    if name not in FAMILIES:
        raise RuleError(f"no rule family {name!r}; known: {sorted(FAMILIES)}")
    module_name, _, attribute = FAMILIES[name].partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        fam = getattr(module, attribute)
        return list(fam.build() if deferred else fam.rules)
    return collect(module, deferred)[0]


def families(spec: Any) -> list[Family]:
    """The Family objects that ``optimize(rules=spec)`` names: built-in family names (None: the
    defaults) and Family objects."""
    items = DEFAULT_FAMILIES if spec is None else spec
    items = [items] if isinstance(items, str | os.PathLike | Family) else list(items)
    found: list[Family] = []
    for item in items:
        values: list[Any] = [item]
        if isinstance(item, str) and item in FAMILIES:
            module_name, _, attribute = FAMILIES[item].partition(":")
            module = importlib.import_module(module_name)
            values = [getattr(module, attribute)] if attribute else list(vars(module).values())
        found += [v for v in values if isinstance(v, Family) and v not in found]
    return found


def collect(module: Any, deferred: bool = True) -> tuple[list[Rule], list[Ruleset]]:
    """The rules a module declares: its Family objects (their deferred rules too when
    ``deferred``), Rule objects and egglog rulesets."""
    rules: list[Rule] = []
    extra: list[Ruleset] = []
    for value in vars(module).values():
        if isinstance(value, Family):
            rules.extend(value.build() if deferred else value.rules)
        elif isinstance(value, Rule):
            rules.append(value)
        elif isinstance(value, Ruleset):
            extra.append(value)
    return rules, extra


def load_path(path: str | os.PathLike) -> tuple[list[Rule], list[Ruleset]]:
    """Rules from a ``.py`` file, or from every ``.py`` file (not starting with ``_``) in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
        if not files:
            raise RuleError(f"{path}: no rule modules (*.py) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise RuleError(f"{path}: no such rule file or folder")
    rules: list[Rule] = []
    extra: list[Ruleset] = []
    for file in files:
        digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
        name = f"eqsat_user_rules_{file.stem}_{digest}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise RuleError(f"{file}: cannot import")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except RuleError:
                del sys.modules[name]
                raise
            except Exception as exc:
                del sys.modules[name]
                raise RuleError(f"{file}: {type(exc).__name__}: {exc}") from exc
        found, more = collect(module)
        if not found and not more:
            raise RuleError(f"{file}: declares no rules (no Family, Rule or egglog Ruleset)")
        rules.extend(found)
        extra.extend(more)
    return rules, extra


def resolve(spec: Any, deferred: bool = True) -> tuple[list[Rule], list[Ruleset]]:
    """Rules and opaque egglog rulesets for ``optimize(rules=spec)``; without the families'
    deferred rules unless ``deferred`` (:func:`relevant` builds those a graph needs)."""
    if spec is None:
        spec = DEFAULT_FAMILIES
    if isinstance(spec, str | os.PathLike) or not isinstance(spec, Iterable):
        spec = [spec]
    rules: list[Rule] = []
    extra: list[Ruleset] = []
    for item in spec:
        if isinstance(item, Rule):
            rules.append(item)
        elif isinstance(item, Family):
            rules.extend(item.build() if deferred else item.rules)
        elif isinstance(item, Ruleset):
            extra.append(item)
        elif isinstance(item, str) and item in FAMILIES:
            rules.extend(family(item, deferred))
        elif isinstance(item, str | os.PathLike) and (
            Path(item).exists() or str(item).endswith(".py") or os.sep in str(item)
        ):
            found, more = load_path(item)
            rules.extend(found)
            extra.extend(more)
        else:
            raise RuleError(
                f"rules: {item!r} is not a family ({', '.join(sorted(FAMILIES))}), "
                f"a rule file or folder, an egglog ruleset or a rule"
            )
    seen: set[str] = set()
    unique = []
    for r in rules:
        if r.name not in seen:
            seen.add(r.name)
            unique.append(r)
    return unique, extra


def rule_ops(rule: Rule, names: Collection[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The ops (of ``names``) that ``rule``'s pattern matches, and those its action builds.

    Read from the egglog declaration (its pattern: a rewrite's left side and conditions, a rule's
    facts), not from its printed form, which took ~75 ms per rule."""
    decl = rule.rewrite.decl
    kind = type(decl).__name__
    if kind == "RewriteDecl":
        parts = ((decl.lhs, decl.conditions), (decl.rhs,))
    elif kind == "RuleDecl":
        parts = ((decl.body,), (decl.head,))
    else:  # a bidirectional rewrite (either side may match) or a form not known here
        return frozenset(), frozenset(_calls(decl, names))
    return frozenset(_calls(parts[0], names)), frozenset(_calls(parts[1], names))


def _calls(decl: Any, names: Collection[str]) -> set[str]:
    found: set[str] = set()
    stack = [decl]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        elif type(item).__name__ == "FunctionRef":
            if item.ident.name in names:
                found.add(item.ident.name)
        elif is_dataclass(item):
            stack.extend(getattr(item, f.name) for f in fields(item) if f.name != "tp")
    return found


# Rule (by identity, the rule kept so the id stays its own) -> (rule, ops it needs, ops it builds).
# Rules are declared once per process; walking all their declarations took ~90 ms per optimize().
_RULE_OPS: dict[int, tuple[Rule, frozenset[str], frozenset[str]]] = {}


def _ops_of(rule: Rule) -> tuple[frozenset[str], frozenset[str]]:
    from eqsat import ops

    cached = _RULE_OPS.get(id(rule))
    if cached is None or cached[0] is not rule:
        cached = _RULE_OPS[id(rule)] = (rule, *rule_ops(rule, ops.OPS))
    return cached[1], cached[2]


def relevant(rules: list[Rule], graph_ops: Collection[str], spec: Any = ()) -> list[Rule]:
    """The rules of ``rules``, and the deferred ones of the families ``spec`` names as
    ``optimize(rules=spec)`` does (None: the defaults; built as needed), that can fire on a
    graph of ``graph_ops``: those whose pattern's ops such a graph can come to hold, starting
    from ``graph_ops`` and adding what every such rule builds."""
    from eqsat.egraph import ANALYSIS_BUILDS

    pending = families(spec)
    reach = set(graph_ops) | set(ANALYSIS_BUILDS)
    pool = {r.name: r for r in rules}
    while True:
        for fam in pending:
            # In sorted order: rule order decides extraction's ties, and set order changes from
            # one process to the next (ppocr_det gave 45 or 44 FusedConvs at equal cost).
            for r in fam.build(sorted(reach)):
                pool.setdefault(r.name, r)
        grown = set(reach)
        for r in pool.values():
            needs, builds = _ops_of(r)
            if needs <= reach:
                grown |= builds
        if grown == reach:
            return [r for r in pool.values() if _ops_of(r)[0] <= reach]
        reach = grown


__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "Family",
    "collect",
    "families",
    "family",
    "load_path",
    "relevant",
    "resolve",
    "rule_ops",
]

"""The e-graph's term language, rule bookkeeping and the saturation runner with limits and a report.

Terms (one e-class per IR value; :mod:`eqsat.encode` loads a graph into them):

* sort :class:`T` is a tensor. Graph inputs are ``T.input(name)``, constants ``T.const(key)`` (the
  arrays stay on the Python side in :attr:`~eqsat.encode.Encoding.constants`; equal constants share
  one key), an omitted optional input is ``T.none()``.
* every op of the operator table has a constructor of the same name, built from its
  :class:`~eqsat.ops.OpDef` (principle 5): inputs first (``T`` each, padded with ``T.none()``; ops
  with unbounded arity take one :class:`TList`), then one :class:`Attr` per declared attribute in
  declaration order, then, for ops that can have several outputs, an output mask string such as
  ``"101"``. A node used with one output *is* its value; otherwise it is a tuple whose outputs are
  ``node.out(i)``. Build terms with :data:`E`: ``E.Transpose(x, perm=[1, 0])`` fills defaults in.
* facts rules can test: ``shape(t)`` (``Vec[i64]``), ``dtype(t)`` (ONNX data type number) and, for
  constants whose elements are all equal, ``splat(t)`` (that value as ``f64``); for small 1-D
  integer constants (at most :data:`INT_VALUES_MOST` elements: Pad's pads, axes lists),
  ``int_values(t)`` (their elements, a ``Vec[i64]``). Terms made by
  rules get a shape only where a rule or :data:`analysis` sets one, so a rule that requires a shape
  simply does not fire on terms whose shape is unknown. Values computed at run time are
  ``dynamic(t)``; fusion rules only build kernels for those.

Saturation runs the rules in stages (see :func:`saturate`): simplifying rules, then fusing rules,
then exploring rules (associativity, commutativity) under back-off, each until nothing changes or
a limit (rounds, e-nodes, seconds) is hit, so that neither the explorers nor the fusers swamp the
e-graph.

``encode`` and ``Encoding`` live in :mod:`eqsat.encode`; importing them from here still works.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from egglog import (
    EGraph,
    Expr,
    Ruleset,
    String,
    StringLike,
    Vec,
    back_off,
    eq,
    f64,
    f64Like,
    function,
    i64,
    i64Like,
    relation,
    rewrite,
    rule,
    ruleset,
    run,
    set_,
    union,
    var,
    vars_,
)
from onnx import helper

from eqsat import ops
from eqsat.errors import EqsatError
from eqsat.ir import Graph
from eqsat.ops import fused as _fused  # noqa: F401  (registers the fused ops)

if TYPE_CHECKING:
    from eqsat.encode import Encoding

# Ops with more inputs than this take their inputs as one TList (Concat, Max, Einsum, ...).
MAX_POSITIONAL_INPUTS = 8
# Fused elementwise kernels take a TList too, so that fusion rules can append input lists.
LIST_ENCODED = frozenset({"FusedElementwise"})


class T(Expr):
    """A tensor: one e-class per IR value."""

    @classmethod
    def input(cls, name: StringLike) -> T: ...

    @classmethod
    def const(cls, key: StringLike) -> T: ...

    @classmethod
    def none(cls) -> T: ...

    def out(self, index: i64Like) -> T: ...


class TList(Expr):
    """The inputs of a variadic op, as a cons list."""

    @classmethod
    def nil(cls) -> TList: ...

    @classmethod
    def cons(cls, head: T, tail: TList) -> TList: ...

    def append(self, other: TList) -> TList: ...


class Attr(Expr):
    """One attribute value; ``key`` names a value kept on the Python side (tensors, graphs)."""

    @classmethod
    def none(cls) -> Attr: ...

    @classmethod
    def int(cls, value: i64Like) -> Attr: ...

    @classmethod
    def float(cls, value: f64Like) -> Attr: ...

    @classmethod
    def str(cls, value: StringLike) -> Attr: ...

    @classmethod
    def ints(cls, value: Vec[i64]) -> Attr: ...

    @classmethod
    def key(cls, value: StringLike) -> Attr: ...


@function(merge=lambda old, new: old)
def shape(t: T) -> Vec[i64]: ...


@function(merge=lambda old, new: old)
def dtype(t: T) -> i64: ...


@function(merge=lambda old, new: old)
def splat(t: T) -> f64: ...


# Largest 1-D integer constant whose elements the encoding states (int_values).
INT_VALUES_MOST = 16


@function(merge=lambda old, new: old)
def int_values(t: T) -> Vec[i64]: ...


@function(merge=lambda old, new: old)
def arity(items: TList) -> i64: ...


# The numpy name of an ONNX data type number (fused ops carry their dtype by name).
@function(merge=lambda old, new: old)
def dtype_name(code: i64Like) -> String: ...


# Holds for terms computed from constants only (they fold at compile time).
is_const = relation("is_const", T)
# A Reshape target shape with no 0 or -1 entries: the encoder rewrites every Reshape to one, so
# Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) is valid whenever s2 is static.
static_shape = relation("static_shape", T)
# Holds for the values of the encoded graph that are computed at run time (not constants): fusion
# rules only build kernels for these, not for the constant arithmetic other rules introduce.
dynamic = relation("dynamic", T)
# Constants of one element (shape () or (1,)) of a floating-point type whose value is finite:
# fusion writes them into kernel bodies as literals instead of passing them as inputs.
scalar_const = relation("scalar_const", T)


# Fused elementwise kernels, as fusion rules record them: fbody(t, items) is the body of the kernel
# computing t from the input list items; analysis builds the kernel, so a tensor gets at most one
# kernel per input list however many ways the same computation can be written (the first body
# recorded is kept). fsize(t) is the number of ops the largest kernel of t fuses and flist(t, n)
# the inputs of that kernel: a consumer absorbs only this largest kernel of each operand, so a
# tensor gets a few kernels (one per operand cut or absorbed), not one per way to cut the whole
# elementwise region below it into kernels.
@function(merge=lambda old, new: old)
def fbody(t: T, items: TList) -> String: ...


@function(merge=lambda old, new: old.max(new))
def fsize(t: T) -> i64: ...


# fsize of a kernel: this much per op fused, plus one per scalar constant written as a literal.
FSIZE_PER_OP = 64


@function(merge=lambda old, new: old)
def flist(t: T, size: i64Like) -> TList: ...


# lossless(a, b): every value of ONNX type a is exactly representable in type b (for Cast chains).
lossless = relation("lossless", i64, i64)

_FLOAT_BITS = {np.dtype(np.float16): 11, np.dtype(np.float32): 24, np.dtype(np.float64): 53}
_CAST_TYPES = [np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64,
)]  # fmt: skip


def is_lossless(a: np.dtype, b: np.dtype) -> bool:
    """Whether every value of dtype ``a`` converts to dtype ``b`` and back exactly."""
    if a == b or a.kind == "b":
        return True
    if b.kind == "b" or (a.kind == "f" and b.kind != "f"):
        return False
    if b.kind == "f":
        if a.kind == "f":
            return _FLOAT_BITS[a] <= _FLOAT_BITS[b]
        return a.itemsize * 8 - (a.kind == "i") <= _FLOAT_BITS[b]
    return bool(np.can_cast(a, b, "safe"))


# ------------------------------------------------------------------ op constructors
@dataclass(frozen=True)
class OpSpec:
    """How one op's constructor lays out its arguments."""

    name: str
    num_inputs: int  # positional T arguments; 0 with variadic=True
    variadic: bool
    attrs: tuple[str, ...]
    multi_output: bool
    fn: Any = field(repr=False, compare=False)


_SPECS: dict[str, OpSpec] = {}


def spec(op: str) -> OpSpec:
    """The constructor of ``op`` (made from the op table on first use)."""
    found = _SPECS.get(op)
    if found is not None:
        return found
    opdef = ops.get(op)
    variadic = opdef.max_inputs > MAX_POSITIONAL_INPUTS or op in LIST_ENCODED
    n = 0 if variadic else opdef.max_inputs
    attrs = tuple(opdef.attrs)
    multi = opdef.max_outputs > 1
    params = ["args: TList"] if variadic else [f"i{k}: T" for k in range(n)]
    params += [f"a_{a}: Attr" for a in attrs]
    if multi:
        params.append("outs: StringLike")
    namespace: dict[str, Any] = {"T": T, "TList": TList, "Attr": Attr, "StringLike": StringLike}
    exec(f"def {op}({', '.join(params)}) -> T: ...", namespace)  # a typed stub for egglog
    fn = function(egg_fn=f"op_{op}")(namespace[op])
    found = OpSpec(op, n, variadic, attrs, multi, fn)
    _SPECS[op] = found
    return found


def attr(value: Any, keys: dict[str, Any] | None = None) -> Attr:
    """An attribute value as an :class:`Attr` term (egglog expressions pass through)."""
    if value is None:
        return Attr.none()
    if isinstance(value, bool | int | np.integer):
        return Attr.int(int(value))
    if isinstance(value, float | np.floating):
        return Attr.float(float(value))
    if isinstance(value, str):
        return Attr.str(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value
    ):
        return Attr.ints(Vec[i64](*(i64(int(v)) for v in value)))
    if not isinstance(value, np.ndarray | Graph | list | tuple):
        if isinstance(value, Attr):
            return value
        if isinstance(value, Vec):
            return Attr.ints(value)
    key = attr_key(value)
    if keys is not None:
        keys[key] = value
    return Attr.key(key)


def attr_key(value: Any) -> str:
    """A content key for an attribute egglog cannot hold (tensor, float list, subgraph)."""
    if isinstance(value, np.ndarray):
        digest = hashlib.sha1(value.tobytes()).hexdigest()[:16]
        return f"array:{value.dtype}:{value.shape}:{digest}"
    if isinstance(value, Graph):
        return f"graph:{id(value)}"
    return f"repr:{value!r}"


def tlist(items: Sequence[T]) -> TList:
    out = TList.nil()
    for item in reversed(items):
        out = TList.cons(item, out)
    return out


def make(op: str, *inputs: T | None, outs: str = "1", keys: dict | None = None, **attrs: Any) -> T:
    """The term ``op(inputs; attrs)``; attributes not given take the op's defaults."""
    s = spec(op)
    opdef = ops.get(op)
    unknown = set(attrs) - set(s.attrs)
    if unknown:
        raise EqsatError(f"{op} has no attribute(s) {sorted(unknown)}")
    args: list[Any]
    terms = [T.none() if v is None else v for v in inputs]
    if s.variadic:
        args = [tlist(terms)]
    else:
        if len(terms) > s.num_inputs:
            raise EqsatError(f"{op} takes at most {s.num_inputs} inputs, got {len(terms)}")
        args = terms + [T.none()] * (s.num_inputs - len(terms))
    for name in s.attrs:
        if name in attrs:
            args.append(attr(attrs[name], keys))
        elif opdef.attrs[name] is ops.REQUIRED:
            raise EqsatError(f"{op}: attribute {name!r} is required")
        else:
            args.append(attr(opdef.attrs[name], keys))
    if s.multi_output:
        args.append(String(outs))
    return s.fn(*args)


class _Builders:
    """``E.Add(x, y)``, ``E.Transpose(x, perm=p)``: term builders for every registered op."""

    def __getattr__(self, op: str) -> Any:
        if op.startswith("__") or not ops.is_supported(op):
            raise AttributeError(op)
        return lambda *inputs, **attrs: make(op, *inputs, **attrs)

    def __dir__(self) -> list[str]:
        return sorted(ops.OPS)


E = _Builders()


def onnx_type(dt: np.dtype) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dt)))


# Constants that rules may introduce (axes for Unsqueeze, ...): key -> array. Every encoding
# knows them, so T.const(key) built by a rule decodes like a constant of the graph.
RULE_CONSTANTS: dict[str, np.ndarray] = {}


def rule_const(key: str, array: Any) -> T:
    """``T.const`` of a constant that rules build; registered once under ``key``."""
    key = f"eqsat:{key}"
    array = np.asarray(array)
    known = RULE_CONSTANTS.setdefault(key, array)
    if known.dtype != array.dtype or not np.array_equal(known, array):
        raise EqsatError(f"rule constant {key!r} is registered with another value")
    return T.const(key)


# ------------------------------------------------------------------ rules and analysis
SIMPLIFY, FUSE, EXPLORE = "simplify", "fuse", "explore"
STAGES = (SIMPLIFY, FUSE, EXPLORE)


@dataclass
class Rule:
    """One named rewrite: the egglog rule, its family, floating-point caveat and stage."""

    name: str
    rewrite: Any  # egglog RewriteOrRule
    family: str = ""
    caveat: str = ""
    explosive: bool = False  # associativity/commutativity: run under back-off, after simplifying
    stage: str = ""  # SIMPLIFY, FUSE or EXPLORE; "" means EXPLORE if explosive else SIMPLIFY

    @property
    def phase(self) -> str:
        if self.stage and self.stage not in STAGES:
            raise EqsatError(f"rule {self.name}: unknown stage {self.stage!r}; known: {STAGES}")
        return self.stage or (EXPLORE if self.explosive else SIMPLIFY)


analysis = ruleset(name="eqsat_analysis")
# The ops the analysis rules build (a kernel from the body fusion rules record): every graph
# can come to hold them (see eqsat.rules.relevant).
ANALYSIS_BUILDS = frozenset({"FusedElementwise"})


def _register_analysis() -> None:
    """Shape, dtype and constness of terms that rules create (elementwise ops keep their input's)."""
    x, y, t = vars_("x y t", T)
    s = var("s", Vec[i64])
    d = var("d", i64)
    k = var("k", String)
    rules: list[Any] = [rule(eq(t).to(T.const(k))).then(is_const(t))]
    # Fused kernels from the bodies fusion rules record (one per tensor and input list).
    items = var("items", TList)
    body, dn = var("body", String), var("dn", String)
    kernel = spec("FusedElementwise").fn
    rules.append(
        rule(eq(body).to(fbody(t, items)), eq(dtype(t)).to(d), eq(dtype_name(d)).to(dn)).then(
            union(t).with_(kernel(items, Attr.str(body), Attr.str(dn)))
        )
    )
    # A kernel made some other way (in the input graph, by a composite rule) can be absorbed too.
    rules.append(
        rule(eq(t).to(kernel(items, Attr.str(body), Attr.str(dn)))).then(
            set_(fbody(t, items)).to(body),
            set_(fsize(t)).to(i64(FSIZE_PER_OP)),
            set_(flist(t, i64(FSIZE_PER_OP))).to(items),
        )
    )
    # TList concatenation and length, for fusion rules that merge input lists.
    h = var("h", T)
    tail, other, lst = vars_("tail other lst", TList)
    n = var("n", i64)
    rules += [
        rewrite(TList.nil().append(other)).to(other),
        rewrite(TList.cons(h, tail).append(other)).to(TList.cons(h, tail.append(other))),
        rule(eq(lst).to(TList.nil())).then(set_(arity(lst)).to(i64(0))),
        rule(eq(lst).to(TList.cons(h, tail)), eq(arity(tail)).to(n)).then(
            set_(arity(lst)).to(n + 1)
        ),
    ]
    for op in ("Add", "Sub", "Mul", "Div"):
        rules.append(rule(eq(t).to(make(op, x, y)), is_const(x), is_const(y)).then(is_const(t)))
    for op in ("Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Identity", "Erf", "Sqrt"):
        if ops.is_supported(op):
            rules.append(
                rule(eq(t).to(make(op, x)), eq(shape(x)).to(s), eq(dtype(x)).to(d)).then(
                    set_(shape(t)).to(s), set_(dtype(t)).to(d)
                )
            )
    for op in ("Add", "Sub", "Mul", "Div"):
        rules.append(
            rule(
                eq(t).to(make(op, x, y)),
                eq(shape(x)).to(s),
                eq(shape(y)).to(s),
                eq(dtype(x)).to(d),
            ).then(set_(shape(t)).to(s), set_(dtype(t)).to(d))
        )
    analysis.register(*rules)


_register_analysis()


# ------------------------------------------------------------------ saturation
@dataclass
class Limits:
    """Saturation budget; whichever is reached first stops the run (not an error)."""

    iterations: int = 12  # rounds per stage (simplify, fuse, explore)
    nodes: int = 60_000
    seconds: float = 10.0
    match_limit: int = 2_000  # back-off scheduler: matches per rule before it is banned
    ban_length: int = 4

    @classmethod
    def of(cls, limits: Limits | dict[str, Any] | None) -> Limits:
        if limits is None:
            return cls()
        if isinstance(limits, Limits):
            return limits
        return cls(**limits)


@dataclass
class SaturationReport:
    iterations: int = 0
    stop_reason: str = ""
    enodes: int = 0
    eclasses: int = 0
    matches: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def enode_count(egraph: EGraph) -> int:
    return sum(size for _, size in egraph.all_function_sizes())


_RULESETS: dict[tuple[int, ...], tuple[Ruleset, list[Rule]]] = {}


def _ruleset_of(rules: Sequence[Rule], name: str) -> Ruleset | None:
    """One egglog ruleset per distinct list of rules (declaring rules again is slow)."""
    if not rules:
        return None
    key = tuple(id(r) for r in rules)
    cached = _RULESETS.get(key)
    if cached is None:
        rs = ruleset(name=f"{name}_{len(_RULESETS)}")
        rs.register(*(r.rewrite for r in rules))
        cached = _RULESETS[key] = (rs, list(rules))  # the list keeps the ids valid
    return cached[0]


def saturate(
    enc: Encoding,
    rules: Sequence[Rule],
    limits: Limits | None = None,
    extra: Sequence[Ruleset] = (),
) -> SaturationReport:
    """Run ``rules`` (plus opaque egglog rulesets ``extra``) on the encoding's e-graph.

    Three stages, each until nothing changes or ``limits.iterations`` rounds: the simplifying
    rules (and ``extra``); then the fusing rules with them; then the exploring rules under the
    back-off scheduler, interleaved with the simplifying ones. Fusion comes before exploration so
    that the orderings commutativity and associativity add do not multiply the fused
    alternatives (each ordering of an elementwise tree would get its own kernels, the same
    kernels up to the order of their operands). An iteration limit ends one stage; the e-node and
    time limits end the run.
    """
    limits = limits or Limits()
    egraph = enc.egraph
    report = SaturationReport()
    start = time.perf_counter()
    by_phase: dict[str, list[Rule]] = {stage: [] for stage in STAGES}
    for r in rules:
        by_phase[r.phase].append(r)
    simple_rs = _ruleset_of(by_phase[SIMPLIFY], "simplify")
    fuse_rs = _ruleset_of(by_phase[FUSE], "fuse")
    explore_rs = _ruleset_of(by_phase[EXPLORE], "explore")
    names: dict[Any, str] = {r.rewrite.decl: r.name for r in rules}
    # Simplifying rules could still grow without end (a rule that builds ever larger constants),
    # so even they run a bounded number of rounds.
    step = run(analysis).saturate()
    if simple_rs is not None:
        step = step + run(simple_rs)
    for rs in extra:
        step = step + run(rs)
    stages: list[tuple[str, list[Any]]] = [(SIMPLIFY, [step * 3])]
    if fuse_rs is not None:
        stages.append((FUSE, [(step + run(fuse_rs)) * 3]))
    if explore_rs is not None:
        explore = run(explore_rs, scheduler=back_off(limits.match_limit, limits.ban_length))
        stages.append((EXPLORE, [step * 3, explore]))
    limit_hit = ""
    stopped = False
    for _stage, schedules in stages:
        for round_ in range(limits.iterations):
            before = enode_count(egraph)
            changed = False
            for schedule in schedules:
                if time.perf_counter() - start > limits.seconds:
                    break
                result = egraph.run(schedule)
                changed |= result.updated
                for decl, count in result.num_matches_per_rule.items():
                    name = names.get(decl)
                    if name is not None and count:
                        report.matches[name] = report.matches.get(name, 0) + count
            report.iterations += 1
            after = enode_count(egraph)
            if after > limits.nodes:
                limit_hit = f"node limit ({after} > {limits.nodes} e-nodes)"
                stopped = True
                break
            if time.perf_counter() - start > limits.seconds:
                limit_hit = f"time limit ({limits.seconds:g} s)"
                stopped = True
                break
            if not changed and after == before:
                break
            if round_ == limits.iterations - 1:
                limit_hit = limit_hit or f"iteration limit ({limits.iterations})"
        if stopped:
            break
    report.stop_reason = limit_hit or "saturated"
    report.enodes = enode_count(egraph)
    report.seconds = time.perf_counter() - start
    return report


def __getattr__(name: str) -> Any:
    # The encoder moved to eqsat.encode, which imports this module: re-export it lazily.
    if name in ("encode", "Encoding"):
        import importlib

        return getattr(importlib.import_module("eqsat.encode"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Fusion rules: each one adds a fused kernel next to the ops it replaces; extraction decides.

Families (each switchable by name, see :data:`FAMILY_NAMES`):

* ``fusion-elementwise``: generic elementwise fusion with no per-pattern code. Every elementwise
  op gets a one-op ``FusedElementwise`` (its body is the op's scalar template), and an elementwise
  op whose operands are fused kernels becomes one kernel whose body composes theirs and whose input
  list is their lists appended (operand numbers shifted). Broadcasting composes, so this is valid
  across broadcasts. At most :data:`~eqsat.ops.fused.MAX_FUSED_INPUTS` inputs per kernel: the bound
  keeps the number of alternatives per e-class finite and the generated kernels small.
* ``fusion-epilogue``: a fused elementwise kernel whose first input is a Conv, ConvTranspose,
  MatMul or Gemm becomes that op with an epilogue (bias, activation, residual add, ...).
* ``fusion-bn``: BatchNormalization after a Conv (or a Gemm) with constant parameters folds into
  the weights and bias (computed once at compile time); any other inference BatchNormalization
  with constant parameters is also ``x * k + c`` with per-channel constants, which the
  elementwise family fuses with its neighbours (DenseNet's BN + ReLU after each Concat).
* ``fusion-composite``: decomposed exporter patterns as single ops: SiLU, HardSwish, GELU (erf
  and tanh forms), LayerNorm, Softmax, attention; and a QDQ model's per-tensor QuantizeLinear/
  DequantizeLinear as the elementwise QuantizePerTensor/DequantizePerTensor, which the fusion
  families then take into kernels and epilogues (exact: the same arithmetic).

Floating point: fused kernels compute the same expressions in one pass (exact, except that
float16 intermediates are no longer rounded); BN folding and the composite ops round differently
(a few ulp); Sub(c, c) = 0 in BN folding assumes finite constants.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

from egglog import String, Vec, eq, f64, i64, rule, set_, union, var
from eqsat.rules import Family

from eqsat import ops
from eqsat.egraph import (
    FSIZE_PER_OP,
    FUSE,
    Attr,
    E,
    T,
    TList,
    arity,
    dtype,
    dtype_name,
    dynamic,
    fbody,
    flist,
    fsize,
    is_const,
    make,
    rule_const,
    scalar_const,
    shape,
    spec,
    splat,
)
from eqsat.ops.elementwise import SCALAR_VARIANTS, VARIADIC
from eqsat.ops.fused import EPILOGUE_BASES, MAX_FUSED_INPUTS
from eqsat.ops.quant_tensor import INT8, RANGES, UINT8

EXACT = "exact (float16 intermediates are not rounded)"
ROUNDING = "changes rounding (a few ulp)"

elementwise = Family("fusion-elementwise", "generic elementwise fusion", stage=FUSE)
epilogue = Family(
    "fusion-epilogue", "Conv/ConvTranspose/MatMul/Gemm with elementwise epilogues", stage=FUSE
)
bn = Family("fusion-bn", "BatchNormalization folded into Conv/Gemm weights")
composite = Family("fusion-composite", "exporter patterns as single ops")
FAMILY_NAMES = {f.name: f for f in (elementwise, epilogue, bn, composite)}

# Ops whose operands are never floating-point scalars (see _kinds).
NO_LITERALS = {"And", "Or", "Xor", "Not", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
NO_LITERALS |= {"BitwiseNot", "IsNaN", "IsInf"}
# Positions of the base op in a fused kernel's inputs that epilogue rules try (a residual add of
# two convolutions has either first).
EPILOGUE_POSITIONS = 4
# ... and how far after it (as the first input) a second listing of the base is looked for (see
# _epilogue_rule): the next input (PP-OCRv4's convs), or the one after (a MatMul's bias added to
# both uses: CLIP's QuickGELU). Each position further costs saturation time: with the one after
# for convs too, PP-OCRv4's detector saturated in 1.3 s rather than 0.9, with two after 2.0.
EPILOGUE_AGAIN = {"MatMul": 2, "Gemm": 2}
# Elementwise ops fusion leaves alone: no-ops that algebraic rules remove, multi-output Dropout.
SKIP = {"Identity", "Dropout"}
MAX_SHIFT = MAX_FUSED_INPUTS


def fe(items: Any, body: Any, dt: Any) -> T:
    """The term ``FusedElementwise(items; body, dtype)`` from a TList and String terms."""
    return spec("FusedElementwise").fn(items, Attr.str(body), Attr.str(dt))


def shifted(body: Any, offset: Any) -> Any:
    """``body`` with operand ``{k}`` renamed ``{k + offset}`` (highest first: no collisions)."""
    for k in reversed(range(MAX_SHIFT)):
        body = body.replace(String(f"{{{k}}}"), String("{") + (offset + k).to_string() + "}")
    return body


def _pieces(template: str, n: int, attr_names: list[str]) -> list[tuple[str, Any]]:
    """Split a template into ("lit", text), ("op", index) and ("attr", name) pieces."""
    marks = {f"\x00o{i}\x00": ("op", i) for i in range(n)}
    marks |= {f"\x00a{a}\x00": ("attr", a) for a in attr_names}
    text = template.format(
        *[f"\x00o{i}\x00" for i in range(n)], **{a: f"\x00a{a}\x00" for a in attr_names}
    )
    out: list[tuple[str, Any]] = []
    for part in text.split("\x00"):
        key = f"\x00{part}\x00"
        if key in marks:
            out.append(marks[key])
        elif part:
            out.append(("lit", part))
    return out


def _literal_of(kind: str, v: Any) -> Any:
    return String("(") + v.to_string() + ")" if kind != "str" else v


def _elementwise_rules(op: str) -> None:
    opdef = ops.OPS[op]
    template = opdef.scalar
    n = 2 if op in VARIADIC else opdef.max_inputs
    attr_kinds: dict[str, str] = {}
    fixed: dict[str, Any] = {}
    for name, default in opdef.attrs.items():
        if isinstance(default, float):
            attr_kinds[name] = "float"
        elif isinstance(default, int) or default is ops.REQUIRED:
            attr_kinds[name] = "int"
        else:
            attr_kinds[name] = "skip"
    cases: list[
        tuple[str, str, dict[str, Any], tuple[int, ...]]
    ] = []  # (suffix, template, fixed, omitted)
    variants = SCALAR_VARIANTS.get(op, {})
    if op == "Clip":
        cases = [("", template, {}, ()), ("-min", variants[("omitted", (2,))], {}, (2,))]
        cases.append(("-max", variants[("omitted", (1,))], {}, (1,)))
    elif op == "Gelu":
        cases = [("", template, {"approximate": "none"}, ())]
        cases.append(("-tanh", variants[("approximate", "tanh")], {"approximate": "tanh"}, ()))
    elif op == "Mod":
        cases = [("", template, {"fmod": 0}, ()), ("-fmod", variants[("fmod", 1)], {"fmod": 1}, ())]
    else:
        cases = [("", template, {}, ())]
    for suffix, tmpl, fixed, omitted in cases:
        present = [i for i in range(n) if i not in omitted]
        free_attrs = [a for a in opdef.attrs if a not in fixed and attr_kinds[a] != "skip"]
        pieces = _pieces(tmpl, n, free_attrs)
        for kinds in itertools.product(*(_kinds(op, i) for i in present)):
            if set(kinds) != {"c"}:  # all scalars: a constant, not a kernel
                _one_rule(op, suffix, n, present, "".join(kinds), pieces, fixed, attr_kinds)


def _kinds(op: str, position: int) -> str:
    """What operand ``position`` of ``op`` may be: ``t`` input, ``f`` fused kernel, ``c`` literal.

    Literals are floating-point scalars, so operands that are bool or integer (logical and
    bitwise ops, Where's condition) are never ``c``; Clip's bounds are inputs or literals (a
    kernel computing a bound is not worth a rule).
    """
    if op in NO_LITERALS or (op == "Where" and position == 0):
        return "tf"
    if op == "Clip" and position > 0:
        return "tc"
    return "tfc"


def _one_rule(
    op: str,
    suffix: str,
    n: int,
    present: list[int],
    kinds: str,
    pieces: list[tuple[str, Any]],
    fixed: dict[str, Any],
    attr_kinds: dict[str, str],
) -> None:
    """One operand pattern of one op: each operand is a tensor input (``t``), a fused kernel
    whose body and inputs are spliced in (``f``), or a scalar constant written into the body as
    a literal (``c``: it takes no input slot, and kernels that differ only in how they write
    constants read the same inputs)."""
    name = f"{op}{suffix}-{kinds}"

    @elementwise.rule(name, caveat=EXACT)
    def _(y: T, d: i64, dn: String) -> Any:
        operands: list[Any] = [T.none()] * n
        conditions: list[Any] = [dynamic(y), eq(dtype(y)).to(d), eq(dtype_name(d)).to(dn)]
        lists: list[Any] = []
        bodies: dict[int, Any] = {}
        offset: Any = i64(0)
        # Which kernel consumers absorb: the one fusing most ops, then inlining most scalars.
        size: Any = i64(FSIZE_PER_OP)
        for k, (i, kind) in enumerate(zip(present, kinds, strict=True)):
            if kind == "f":
                x, items, body = var(f"x{k}", T), var(f"l{k}", TList), var(f"b{k}", String)
                count, ops_in = var(f"n{k}", i64), var(f"m{k}", i64)
                operands[i] = x
                conditions += [
                    eq(fsize(x)).to(ops_in),
                    eq(flist(x, ops_in)).to(items),
                    eq(fbody(x, items)).to(body),
                    eq(arity(items)).to(count),
                ]
                bodies[i] = body if not lists else shifted(body, offset)
                lists.append(items)
                offset = offset + count
                size = size + ops_in
            elif kind == "c":
                x, value = var(f"x{k}", T), var(f"s{k}", f64)
                operands[i] = x
                conditions += [scalar_const(x), eq(splat(x)).to(value)]
                bodies[i] = _literal_of("float", value)
                size = size + 1
            else:
                x = var(f"x{k}", T)
                operands[i] = x
                bodies[i] = String("{") + offset.to_string() + "}"
                lists.append(TList.cons(x, TList.nil()))
                offset = offset + 1
        attrs: dict[str, Any] = dict(fixed)
        attr_vals: dict[str, Any] = {}
        for a, kind in attr_kinds.items():
            if a in fixed:
                continue
            if kind == "skip":
                attrs[a] = var(f"attr_{a}", Attr)
                continue
            v = var(f"v_{a}", f64 if kind == "float" else i64)
            attrs[a] = Attr.float(v) if kind == "float" else Attr.int(v)
            attr_vals[a] = _literal_of(kind, v)
        lhs = make(op, *operands[:2]) if op in VARIADIC else make(op, *operands, **attrs)
        body: Any = String("")
        for kind, val in pieces:
            part = String(val) if kind == "lit" else bodies[val] if kind == "op" else attr_vals[val]
            body = body + part
        items = lists[0]
        for extra in lists[1:]:
            items = items.append(extra)
        if "f" in kinds:
            conditions.append(offset <= i64(MAX_FUSED_INPUTS))
        # One kernel per (tensor, input list); the largest is what consumers absorb (see fbody).
        return rule(eq(y).to(lhs), *conditions).then(
            set_(fbody(y, items)).to(body), set_(fsize(y)).to(size), set_(flist(y, size)).to(items)
        )


# Built only for the ops a graph can hold (see eqsat.rules.relevant): ~290 rules, ~5 s to build.
for _op, _def in sorted(ops.OPS.items()):
    if _def.elementwise and _def.scalar is not None and _op not in SKIP:
        elementwise.defer(_op, functools.partial(_elementwise_rules, _op))


# ------------------------------------------------------------------ epilogues
def _epilogue_rule(fused: str, base: str, k: int, again: int | None = None) -> None:
    """The base op as input ``k`` of a fused kernel: it becomes the fused op, the other inputs
    its epilogue tensors (in order), so either operand of ``conv_a + conv_b`` can be the base.

    With ``again``, the kernel lists the base a second time, at input ``again`` > ``k``, and
    both become ``{0}``. Splicing kernels appends their input lists, so a kernel of ``t * f(t)``
    over ``t = conv + b`` lists the conv twice (PP-OCRv4's learnable affine after HardSwish);
    as an epilogue input the conv would be computed on its own as well."""
    bdef = ops.OPS[base]
    name = f"{base}-epilogue" if k == 0 else f"{base}-epilogue-{k}"
    if again is not None:
        name += f"-again-{again}"

    @epilogue.rule(name, caveat=EXACT)
    def _(y: T, c: T, rest: TList, body: String, dn: String, count: i64) -> Any:
        ins = [var(f"i{j}", T) for j in range(bdef.max_inputs)]
        before = [var(f"x{j}", T) for j in range(k)]
        between = [var(f"m{j}", T) for j in range(0 if again is None else again - k - 1)]
        attrs = {a: var(f"a_{a}", Attr) for a in bdef.attrs}
        after = rest if again is None else TList.cons(c, rest)
        kept = rest
        for x in reversed(between):
            after, kept = TList.cons(x, after), TList.cons(x, kept)
        kernel_items = TList.cons(c, after)
        for x in reversed(before):
            kernel_items = TList.cons(x, kernel_items)
        items = kept
        for x in reversed([*ins, *before]):
            items = TList.cons(x, items)
        # {k} (and {again}) become the base result {0}; inputs before {k} move up by one, those
        # after {again} down by one.
        epi: Any = body
        if k or again is not None:
            epi = epi.replace(String(f"{{{k}}}"), String("{@}"))
            if again is not None:
                epi = epi.replace(String(f"{{{again}}}"), String("{@}"))
                for j in range(again + 1, MAX_FUSED_INPUTS):
                    epi = epi.replace(String(f"{{{j}}}"), String(f"{{{j - 1}}}"))
            for j in reversed(range(k)):
                epi = epi.replace(String(f"{{{j}}}"), String(f"{{{j + 1}}}"))
            epi = epi.replace(String("{@}"), String("{0}"))
        fattrs = [*attrs.values(), Attr.int(bdef.max_inputs), Attr.str(epi)]
        return rule(
            eq(y).to(fe(kernel_items, body, dn)),
            eq(c).to(make(base, *ins, **attrs)),
            eq(arity(rest)).to(count),
            count + k <= i64(MAX_FUSED_INPUTS),
        ).then(union(y).with_(spec(fused).fn(items, *fattrs)))


for _fused, _base in EPILOGUE_BASES.items():
    for _k in range(EPILOGUE_POSITIONS):
        _epilogue_rule(_fused, _base, _k)
    for _again in range(1, 1 + EPILOGUE_AGAIN.get(_base, 1)):
        _epilogue_rule(_fused, _base, 0, _again)


# ------------------------------------------------------------------ BatchNormalization folding
AXES0 = rule_const("axes0", [0])


def _bn_of(x: Any, s: T, b: T, m: T, v: T, eps: Attr, mom: Attr) -> T:
    return make("BatchNormalization", x, s, b, m, v, epsilon=eps, momentum=mom, training_mode=0)


def _bias_fold(b: Any, s: T, bb: T, m: T, v: T, eps: Attr, mom: Attr) -> T:
    # BN of a [1, C] tensor: (b - mean) / sqrt(var + eps) * scale + bias, the folded bias.
    return E.Squeeze(_bn_of(E.Unsqueeze(b, AXES0), s, bb, m, v, eps, mom), AXES0)


def bn_scale_shift(s: T, bb: T, m: T, v: T, eps: Attr, mom: Attr) -> tuple[T, T]:
    """An inference BatchNormalization's per-channel ``k = scale / sqrt(var + eps)`` and
    ``c = bias - mean * k`` ([C] each), folded from its constants as BN of [1, C] rows of ones
    and zeros (the ones are ``exp(mean - mean)``: this assumes a finite mean)."""
    zero_m = E.Sub(m, m)
    ones = E.Unsqueeze(E.Exp(zero_m), AXES0)
    k = E.Squeeze(_bn_of(ones, s, E.Sub(bb, bb), zero_m, v, eps, mom), AXES0)
    c = E.Squeeze(_bn_of(E.Unsqueeze(zero_m, AXES0), s, bb, m, v, eps, mom), AXES0)
    return k, c


def _params_const(*ts: T) -> list[Any]:
    return [is_const(t) for t in ts]


for _rank in (3, 4, 5):
    _swap = [1, 0, *range(2, _rank)]

    for _has_bias in (False, True):

        @bn.rule(f"conv{_rank - 2}d{'-bias' if _has_bias else ''}", caveat=ROUNDING)
        def _(
            y: T, x: T, w: T, s: T, bb: T, m: T, v: T, eps: Attr, mom: Attr, ap: Attr, dl: Attr,
            gr: Attr, ks: Attr, pd: Attr, st: Attr, cb: T, sw: Vec[i64],
            _rank: int = _rank, _swap: list[int] = _swap, _has_bias: bool = _has_bias,
        ) -> Any:  # fmt: skip
            conv_attrs = dict(
                auto_pad=ap, dilations=dl, group=gr, kernel_shape=ks, pads=pd, strides=st
            )
            b = cb if _has_bias else T.none()
            conv = E.Conv(x, w, b, **conv_attrs)
            # Scaling output channel o of W by s[o]: BN over axis 1 of W with axes 0, 1 swapped.
            zero_b, zero_m = E.Sub(bb, bb), E.Sub(m, m)
            w2 = E.Transpose(
                _bn_of(E.Transpose(w, perm=_swap), s, zero_b, zero_m, v, eps, mom), perm=_swap
            )
            b2 = _bias_fold(b if _has_bias else E.Sub(m, m), s, bb, m, v, eps, mom)
            extra = [is_const(cb), eq(shape(cb)).to(Vec[i64](sw[0]))] if _has_bias else []
            return rule(
                eq(y).to(_bn_of(conv, s, bb, m, v, eps, mom)),
                *_params_const(w, s, bb, m, v),
                eq(shape(w)).to(sw),
                eq(sw.length()).to(i64(_rank)),
                eq(shape(s)).to(Vec[i64](sw[0])),
                eq(shape(bb)).to(Vec[i64](sw[0])),
                eq(shape(m)).to(Vec[i64](sw[0])),
                eq(shape(v)).to(Vec[i64](sw[0])),
                *extra,
            ).then(union(y).with_(E.Conv(x, w2, b2, **conv_attrs)))


@bn.rule("gemm", caveat=ROUNDING)
def _(
    y: T, a: T, w: T, c: T, s: T, bb: T, m: T, v: T, eps: Attr, mom: Attr, ta: Attr, sw: Vec[i64]
) -> Any:
    # Gemm(a, w) with w [K, N] (transB=0); the bias c must be [N].
    g = E.Gemm(a, w, c, alpha=1.0, beta=1.0, transA=ta, transB=0)
    zero_b, zero_m = E.Sub(bb, bb), E.Sub(m, m)
    w2 = _bn_of(w, s, zero_b, zero_m, v, eps, mom)
    c2 = _bias_fold(c, s, bb, m, v, eps, mom)
    n = Vec[i64](sw[1])
    return rule(
        eq(y).to(_bn_of(g, s, bb, m, v, eps, mom)),
        *_params_const(w, c, s, bb, m, v),
        eq(shape(w)).to(sw),
        eq(sw.length()).to(i64(2)),
        eq(shape(c)).to(n),
        eq(shape(s)).to(n),
        eq(shape(bb)).to(n),
        eq(shape(m)).to(n),
        eq(shape(v)).to(n),
    ).then(union(y).with_(E.Gemm(a, w2, c2, alpha=1.0, beta=1.0, transA=ta, transB=0)))


for _rank in (2, 3, 4, 5):
    # [C] -> [C, 1, ...]: a per-channel vector broadcast over the spatial axes of N x C x D...
    _trailing = rule_const(f"bn_trailing_{_rank}", list(range(1, _rank - 1))) if _rank > 2 else None

    @bn.rule(f"affine-{_rank - 2}d", caveat=ROUNDING + "; assumes a finite mean")
    def _(
        y: T, x: T, s: T, bb: T, m: T, v: T, eps: Attr, mom: Attr, sy: Vec[i64], d: i64,
        _rank: int = _rank, _trailing: Any = _trailing,
    ) -> Any:  # fmt: skip
        # A BN that no Conv/Gemm absorbs (DenseNet's after each Concat) as x * k + c, so that
        # fusion-elementwise takes it into one kernel with the ReLU after it.
        k, c = bn_scale_shift(s, bb, m, v, eps, mom)
        if _trailing is not None:
            k, c = E.Unsqueeze(k, _trailing), E.Unsqueeze(c, _trailing)
        scaled = E.Mul(x, k)
        n = Vec[i64](sy[1])
        return rule(
            eq(y).to(_bn_of(x, s, bb, m, v, eps, mom)),
            *_params_const(s, bb, m, v),
            dynamic(y),
            eq(shape(y)).to(sy),
            eq(sy.length()).to(i64(_rank)),
            eq(dtype(y)).to(d),
            eq(shape(s)).to(n),
            eq(shape(bb)).to(n),
            eq(shape(m)).to(n),
            eq(shape(v)).to(n),
        ).then(
            union(y).with_(E.Add(scaled, c)),
            dynamic(scaled),
            set_(shape(scaled)).to(sy),
            set_(dtype(scaled)).to(d),
        )


# ------------------------------------------------------------------ composite patterns
def near(t: T, value: float, tol: float = 1e-5) -> list[Any]:
    """Conditions: ``t`` is a constant of one repeated value within ``tol`` of ``value``."""
    f = splat(t)
    if tol == 0:
        return [eq(f).to(f64(value))]
    return [
        f > f64(value - tol * max(1.0, abs(value))),
        f < f64(value + tol * max(1.0, abs(value))),
    ]


SILU = "({0} / (1 + exp(-{0})))"


@composite.rule("silu", caveat=ROUNDING)
def _(y: T, x: T, d: i64, dn: String) -> Any:
    return rule(
        eq(y).to(E.Mul(x, E.Sigmoid(x))), eq(dtype(y)).to(d), eq(dtype_name(d)).to(dn)
    ).then(union(y).with_(fe(TList.cons(x, TList.nil()), String(SILU), dn)))


@composite.rule("silu-swapped", caveat=ROUNDING)
def _(y: T, x: T, d: i64, dn: String) -> Any:
    return rule(
        eq(y).to(E.Mul(E.Sigmoid(x), x)), eq(dtype(y)).to(d), eq(dtype_name(d)).to(dn)
    ).then(union(y).with_(fe(TList.cons(x, TList.nil()), String(SILU), dn)))


@composite.rewrite("hardswish-hardsigmoid", caveat=ROUNDING)
def _(x: T, a: f64, b: f64) -> tuple:
    hs = E.HardSigmoid(x, alpha=Attr.float(a), beta=Attr.float(b))
    return E.Mul(x, hs), E.HardSwish(x), a > f64(0.16666), a < f64(0.16667), eq(b).to(f64(0.5))


@composite.rewrite("hardswish-relu6", caveat=ROUNDING)
def _(x: T, c3: T, lo: T, hi: T, c6: T) -> tuple:
    # x * clip(x + 3, 0, 6) / 6, as torch exports it.
    lhs = E.Div(E.Mul(x, E.Clip(E.Add(x, c3), lo, hi)), c6)
    return (lhs, E.HardSwish(x), *near(c3, 3.0), *near(lo, 0.0, 0), *near(hi, 6.0), *near(c6, 6.0),
            eq(shape(lhs)).to(shape(x)))  # fmt: skip


@composite.rewrite("gelu-erf", caveat=ROUNDING)
def _(x: T, c1: T, c2: T, c3: T) -> tuple:
    # x * (erf(x / sqrt(2)) + 1) * 0.5, as torch exports nn.GELU().
    lhs = E.Mul(E.Mul(x, E.Add(E.Erf(E.Div(x, c1)), c2)), c3)
    return (lhs, E.Gelu(x), *near(c1, math.sqrt(2.0)), *near(c2, 1.0), *near(c3, 0.5),
            eq(shape(lhs)).to(shape(x)))  # fmt: skip


@composite.rewrite("gelu-erf-half-first", caveat=ROUNDING)
def _(x: T, c1: T, c2: T, c3: T) -> tuple:
    lhs = E.Mul(E.Mul(x, c3), E.Add(E.Erf(E.Div(x, c1)), c2))
    return (lhs, E.Gelu(x), *near(c1, math.sqrt(2.0)), *near(c2, 1.0), *near(c3, 0.5),
            eq(shape(lhs)).to(shape(x)))  # fmt: skip


@composite.rewrite("gelu-tanh", caveat=ROUNDING)
def _(x: T, c05: T, c1: T, k: T, c3: T, a: T) -> tuple:
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    inner = E.Mul(k, E.Add(x, E.Mul(a, E.Pow(x, c3))))
    lhs = E.Mul(E.Mul(c05, x), E.Add(c1, E.Tanh(inner)))
    return (lhs, E.Gelu(x, approximate="tanh"), *near(c05, 0.5), *near(c1, 1.0),
            *near(k, math.sqrt(2 / math.pi)), *near(c3, 3.0), *near(a, 0.044715),
            eq(shape(lhs)).to(shape(x)))  # fmt: skip


@composite.rule("layernorm", caveat=ROUNDING)
def _(y: T, x: T, ax1: T, ax2: T, two: T, epsc: T, g: T, b: T, sx: Vec[i64], eps: f64) -> Any:
    mean = E.ReduceMean(x, ax1, keepdims=1)
    diff = E.Sub(x, mean)
    var_ = E.ReduceMean(E.Pow(diff, two), ax2, keepdims=1)
    normed = E.Div(diff, E.Sqrt(E.Add(var_, epsc)))
    last = Vec[i64](sx[sx.length() - 1])
    return rule(
        eq(y).to(E.Add(E.Mul(normed, g), b)),
        eq(splat(ax1)).to(f64(-1.0)),
        eq(splat(ax2)).to(f64(-1.0)),
        *near(two, 2.0, 0),
        eq(splat(epsc)).to(eps),
        eq(shape(x)).to(sx),
        eq(shape(g)).to(last),
        eq(shape(b)).to(last),
        eq(shape(y)).to(sx),
    ).then(union(y).with_(E.LayerNormalization(x, g, b, axis=-1, epsilon=Attr.float(eps))))


def _rms_norm_rule(y: T, x: T, inv: T, ms: T, two: T, ax: T, epsc: T, g: T, sx: Vec[i64],
                   eps: f64, conditions: list[Any]) -> Any:  # fmt: skip
    """y = x * inv * g where inv is 1 / sqrt(mean(x^2) + eps) over the last axis, as ``inv`` (a
    reciprocal or a division) is written."""
    last = Vec[i64](sx[sx.length() - 1])
    return rule(
        eq(y).to(E.Mul(E.Mul(x, inv), g)),
        *conditions,
        eq(ms).to(E.ReduceMean(E.Pow(x, two), ax, keepdims=1)),
        eq(splat(ax)).to(f64(-1.0)),
        *near(two, 2.0, 0),
        eq(splat(epsc)).to(eps),
        eq(shape(x)).to(sx),
        eq(shape(g)).to(last),
        eq(shape(y)).to(sx),
    ).then(union(y).with_(E.RMSNormalization(x, g, axis=-1, epsilon=Attr.float(eps))))


@composite.rule("rmsnorm-reciprocal", caveat=ROUNDING)
def _(y: T, x: T, inv: T, ms: T, two: T, ax: T, epsc: T, g: T, sx: Vec[i64], eps: f64) -> Any:
    # 1 / sqrt(ms + eps) as the dynamo exporter writes it (torch.rsqrt)
    found = [eq(inv).to(E.Reciprocal(E.Sqrt(E.Add(ms, epsc))))]
    return _rms_norm_rule(y, x, inv, ms, two, ax, epsc, g, sx, eps, found)


@composite.rule("rmsnorm-divide", caveat=ROUNDING)
def _(y: T, x: T, inv: T, ms: T, two: T, ax: T, epsc: T, g: T, sx: Vec[i64], eps: f64,
      one: T) -> Any:  # fmt: skip
    # 1 / sqrt(ms + eps) as the TorchScript exporter writes it
    found = [eq(inv).to(E.Div(one, E.Sqrt(E.Add(ms, epsc)))), *near(one, 1.0, 0)]
    return _rms_norm_rule(y, x, inv, ms, two, ax, epsc, g, sx, eps, found)


@composite.rule("softmax", caveat=ROUNDING)
def _(y: T, x: T, ax1: T, ax2: T) -> Any:
    e = E.Exp(E.Sub(x, E.ReduceMax(x, ax1, keepdims=1)))
    return rule(
        eq(y).to(E.Div(e, E.ReduceSum(e, ax2, keepdims=1))),
        eq(splat(ax1)).to(f64(-1.0)),
        eq(splat(ax2)).to(f64(-1.0)),
    ).then(union(y).with_(E.Softmax(x, axis=-1)))


# Attention: softmax(scores) @ v, scores = q @ kT times a scale, plus an additive mask or not.
# The scale forms exporters write, each the scale attribute it amounts to (all scalars, so that
# a scale moves across the matmul): torch's eager (q @ kT) / sqrt(d) or * c, and SDPA's
# q * sqrt(c) @ kT * sqrt(c) (the split keeps float16 scores in range), where c = a * b.
_KT = [0, 1, 3, 2]
SCALE_FORMS = ("div", "mul", "split")
# The guard SDPA exports put after the softmax, Where(IsNaN(p), 0, p): a fully masked row (all
# scores -inf) has a NaN softmax, and the guard makes it 0; Attention's nan_to_zero does the same.
GUARDS = {"": 0, "-guarded": 1}


def _scores(form: str, q: T, kt: T, a: T, b: T, sa: f64, sb: f64) -> tuple[T, list[Any], Any]:
    """The scaled scores of ``form``, the conditions on its scalars and the scale they give."""
    qk = E.MatMul(q, kt)
    if form in ("div", "mul"):
        scaled = E.Div(qk, a) if form == "div" else E.Mul(qk, a)
        conds = [eq(splat(a)).to(sa), eq(shape(scaled)).to(shape(qk))]
        return scaled, conds, f64(1.0) / sa if form == "div" else sa
    # q*a @ kT*b = (q @ kT) * (a*b) needs a and b scalars: shapes are kept, not broadcast up.
    scaled_q, scaled_k = E.Mul(q, a), E.Mul(kt, b)
    conds = [eq(splat(a)).to(sa), eq(splat(b)).to(sb)]
    conds += [eq(shape(scaled_q)).to(shape(q)), eq(shape(scaled_k)).to(shape(kt))]
    return E.MatMul(scaled_q, scaled_k), conds, sa * sb


def _attention_rule(form: str, masked: bool, guard: str) -> None:
    """softmax(scores [+ mask]) [guarded] @ v as one Attention, for rank-4 q, kT, v."""
    name = f"attention-{form}{'' if masked else '-nomask'}{guard}"

    @composite.rule(name, caveat=ROUNDING)
    def _(
        y: T, q: T, kt: T, v: T, a: T, b: T, mask: T, z: T, sa: f64, sb: f64, sq: Vec[i64]
    ) -> Any:
        scaled, conds, scale = _scores(form, q, kt, a, b, sa, sb)
        scores = E.Add(scaled, mask) if masked else scaled
        p = E.Softmax(scores, axis=-1)
        if guard:
            # z is exactly 0 and a scalar (the guard's shape is p's); the guard is elementwise,
            # and a NaN softmax row is NaN in every element (its sum is NaN), 0 with the guard.
            p = E.Where(E.IsNaN(p), z, p)
            conds += [*near(z, 0.0, 0), eq(shape(p)).to(shape(scores))]
        if masked:
            # The mask must not broadcast the scores up (Attention's mask broadcasts to them).
            conds.append(eq(shape(scores)).to(shape(scaled)))
        att = E.Attention(
            q,
            E.Transpose(kt, perm=_KT),
            v,
            mask if masked else None,
            scale=Attr.float(scale),
            nan_to_zero=GUARDS[guard],
        )
        return rule(
            eq(y).to(E.MatMul(p, v)),
            *conds,
            eq(shape(q)).to(sq),
            eq(sq.length()).to(i64(4)),
            eq(shape(kt).length()).to(i64(4)),
            eq(shape(v).length()).to(i64(4)),
        ).then(union(y).with_(att))


for _form, _masked, _guard in itertools.product(SCALE_FORMS, (True, False), GUARDS):
    _attention_rule(_form, _masked, _guard)


# ------------------------------------------------------------------ per-tensor quantization
# A QDQ model's QuantizeLinear/DequantizeLinear with a one-element constant scale and zero
# point as elementwise ops (eqsat.ops.quant_tensor), which fusion then takes into kernels and
# epilogues. Only float32 scales, and the other attributes at their defaults (no blocks, no
# output_dtype or precision of their own): the new ops compute exactly what these do.
def _per_tensor_parameters(s: T, z: T, sv: f64, zv: f64) -> tuple[Any, ...]:
    """Premises: a constant one-element float32 scale s of value sv, and zero point z of value
    zv."""
    return (
        scalar_const(s),
        eq(splat(s)).to(sv),
        eq(splat(z)).to(zv),
        eq(dtype(s)).to(i64(FLOAT32)),
    )


def _quantize_rules(code: int, low: int, high: int) -> None:
    @composite.rule(f"quantize-per-tensor-{dtype_names[code]}", caveat=EXACT)
    def _(y: T, x: T, s: T, z: T, a: Attr, sv: f64, zv: f64) -> Any:
        return rule(
            eq(y).to(make("QuantizeLinear", x, s, z, axis=a)),
            *_per_tensor_parameters(s, z, sv, zv),
            eq(dtype(x)).to(i64(FLOAT32)),
            eq(dtype(z)).to(i64(code)),
        ).then(
            union(y).with_(
                make(
                    "QuantizePerTensor", x, scale=Attr.float(sv), zero=Attr.float(zv),
                    low=Attr.float(f64(float(low))), high=Attr.float(f64(float(high))),
                    to=Attr.int(i64(code)),
                )
            )
        )  # fmt: skip

    @composite.rule(f"dequantize-per-tensor-{dtype_names[code]}", caveat=EXACT)
    def _(y: T, q: T, s: T, z: T, a: Attr, sv: f64, zv: f64) -> Any:
        return rule(
            eq(y).to(make("DequantizeLinear", q, s, z, axis=a)),
            *_per_tensor_parameters(s, z, sv, zv),
            eq(dtype(q)).to(i64(code)),
        ).then(
            union(y).with_(
                make("DequantizePerTensor", q, scale=Attr.float(sv), zero=Attr.float(zv))
            )
        )


FLOAT32 = 1
dtype_names = {UINT8: "uint8", INT8: "int8"}
for _code, (_low, _high) in RANGES.items():
    _quantize_rules(_code, _low, _high)


del _op, _def, _fused, _base, _k, _rank, _swap, _has_bias, _form, _masked, _guard, _code, _low
del _high

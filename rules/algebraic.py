"""Algebraic rewrites: identities, constant reassociation, layout no-ops, and bounded reordering.

Every rule keeps shapes: a rule that could enlarge or shrink a value by broadcasting requires
``shape(lhs) == shape(rhs)``, which fails (so the rule does not fire) on terms whose shape is
unknown. Floating-point caveats, rule by rule:

* ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``, ``--x``, Identity, inference Dropout: exact, except
  that ``-0.0 + 0`` is ``+0.0`` (the sign of a zero may change; no comparison can tell them apart
  but ``1 / x`` can).
* ``x * 0 -> 0`` is **not** a rule: it is wrong for ``inf`` and ``NaN``.
* constant reassociation ``(x * c1) * c2 -> x * (c1 * c2)`` (and ``+``), division by a constant as a
  multiplication by its reciprocal, associativity and commutativity of ``+``/``*``, MatMul
  reassociation and MatMul + Add -> Gemm round differently (a few ulp; different overflow points).
* transpose/reshape/squeeze/unsqueeze pairs and lossless Cast chains are exact (data movement only).
* a zero Pad of a Conv's spatial axes folded into the Conv's own pads is exact.
"""

from __future__ import annotations

from typing import Any

from egglog import Vec, eq, f64, i64, rule, set_, union
from eqsat.rules import Family

from eqsat.egraph import (
    Attr,
    E,
    T,
    dtype,
    int_values,
    is_const,
    lossless,
    make,
    shape,
    splat,
    static_shape,
)

family = Family("algebraic", __doc__ or "")
EXACT = "exact"
ROUNDING = "changes rounding (a few ulp) and where overflow happens"
SIGNED_ZERO = "exact except that the sign of a zero result may change"
FLOAT_TYPES = (1, 10, 11)  # ONNX float, float16, double
MAX_RANK = 6


def same_shape(a: T, b: T):
    return eq(shape(a)).to(shape(b))


def is_splat(c: T, value: float):
    return eq(splat(c)).to(f64(value))


def rank(x: T, n: int):
    return eq(shape(x).length()).to(i64(n))


# ------------------------------------------------------------------ identities
@family.rewrite("add-zero", caveat=SIGNED_ZERO)
def _(x: T, c: T):
    return E.Add(x, c), x, is_splat(c, 0.0), same_shape(E.Add(x, c), x)


@family.rewrite("zero-add", caveat=SIGNED_ZERO)
def _(x: T, c: T):
    return E.Add(c, x), x, is_splat(c, 0.0), same_shape(E.Add(c, x), x)


@family.rewrite("sub-zero", caveat=EXACT)
def _(x: T, c: T):
    return E.Sub(x, c), x, is_splat(c, 0.0), same_shape(E.Sub(x, c), x)


@family.rewrite("mul-one", caveat=EXACT)
def _(x: T, c: T):
    return E.Mul(x, c), x, is_splat(c, 1.0), same_shape(E.Mul(x, c), x)


@family.rewrite("one-mul", caveat=EXACT)
def _(x: T, c: T):
    return E.Mul(c, x), x, is_splat(c, 1.0), same_shape(E.Mul(c, x), x)


@family.rewrite("div-one", caveat=EXACT)
def _(x: T, c: T):
    return E.Div(x, c), x, is_splat(c, 1.0), same_shape(E.Div(x, c), x)


@family.rewrite("neg-neg", caveat=EXACT)
def _(x: T):
    return E.Neg(E.Neg(x)), x


@family.rewrite("identity", caveat=EXACT)
def _(x: T):
    return E.Identity(x), x


@family.rewrite("dropout-inference", caveat=EXACT)
def _(x: T, ratio: T, seed: Attr):
    # Without training_mode (default false) Dropout is the identity whatever the ratio.
    return make("Dropout", x, ratio, T.none(), seed=seed), x


@family.rewrite("dropout-training-off", caveat=EXACT)
def _(x: T, ratio: T, mode: T, seed: Attr):
    return make("Dropout", x, ratio, mode, seed=seed), x, is_splat(mode, 0.0)


# ------------------------------------------------------------------ constants
@family.rewrite("mul-const-reassoc", caveat=ROUNDING)
def _(x: T, c1: T, c2: T):
    return E.Mul(E.Mul(x, c1), c2), E.Mul(x, E.Mul(c1, c2)), is_const(c1), is_const(c2)


@family.rewrite("mul-const-reassoc-left", caveat=ROUNDING)
def _(x: T, c1: T, c2: T):
    return E.Mul(E.Mul(c1, x), c2), E.Mul(x, E.Mul(c1, c2)), is_const(c1), is_const(c2)


@family.rewrite("add-const-reassoc", caveat=ROUNDING)
def _(x: T, c1: T, c2: T):
    return E.Add(E.Add(x, c1), c2), E.Add(x, E.Add(c1, c2)), is_const(c1), is_const(c2)


for _code in FLOAT_TYPES:
    # Integer division truncates, so only floating-point division becomes a multiplication.
    @family.rewrite(f"div-const-as-mul-{_code}", caveat=ROUNDING)
    def _(x: T, c: T, _code: int = _code) -> tuple:
        return E.Div(x, c), E.Mul(x, E.Reciprocal(c)), is_const(c), eq(dtype(c)).to(i64(_code))


# ------------------------------------------------------------------ layout
for _n in range(1, MAX_RANK + 1):

    @family.rewrite(f"transpose-identity-{_n}", caveat=EXACT)
    def _(x: T, _n: int = _n) -> tuple:
        ident = Vec[i64](*(i64(i) for i in range(_n)))
        return E.Transpose(x, perm=Attr.ints(ident)), x

    @family.rule(f"transpose-transpose-{_n}", caveat=EXACT)
    def _(y: T, x: T, p1: Vec[i64], p2: Vec[i64], _n: int = _n):
        # y = (x^p1)^p2 = x^q with q[i] = p1[p2[i]]
        q = Vec[i64](*(p1[p2[i]] for i in range(_n)))
        inner = E.Transpose(x, perm=Attr.ints(p1))
        return rule(
            eq(y).to(E.Transpose(inner, perm=Attr.ints(p2))), eq(p2.length()).to(i64(_n))
        ).then(union(y).with_(E.Transpose(x, perm=Attr.ints(q))))

    @family.rewrite(f"transpose-default-perm-{_n}", caveat=EXACT)
    def _(x: T, _n: int = _n) -> tuple:
        reverse = Vec[i64](*(i64(i) for i in reversed(range(_n))))
        return (
            E.Transpose(x, perm=Attr.none()),
            E.Transpose(x, perm=Attr.ints(reverse)),
            rank(x, _n),
        )


@family.rewrite("reshape-reshape", caveat=EXACT)
def _(x: T, s1: T, s2: T, a1: Attr, a2: Attr):
    inner = E.Reshape(x, s1, allowzero=a1)
    return E.Reshape(inner, s2, allowzero=a2), E.Reshape(x, s2, allowzero=a2), static_shape(s2)


@family.rewrite("reshape-noop", caveat=EXACT)
def _(x: T, s: T, a: Attr):
    r = E.Reshape(x, s, allowzero=a)
    return r, x, same_shape(r, x)


@family.rewrite("squeeze-unsqueeze", caveat=EXACT)
def _(x: T, axes: T):
    r = E.Squeeze(E.Unsqueeze(x, axes), axes)
    return r, x, same_shape(r, x)


@family.rewrite("unsqueeze-squeeze", caveat=EXACT)
def _(x: T, axes: T):
    r = E.Unsqueeze(E.Squeeze(x, axes), axes)
    return r, x, same_shape(r, x)


@family.rule("cast-noop", caveat=EXACT)
def _(y: T, x: T, t: i64, sat: Attr):
    return rule(eq(y).to(E.Cast(x, to=Attr.int(t), saturate=sat)), eq(dtype(x)).to(t)).then(
        union(y).with_(x)
    )


@family.rule("cast-cast-lossless", caveat=EXACT)
def _(y: T, x: T, t1: i64, t2: i64, s1: Attr, s2: Attr):
    # x -> t1 -> t2 equals x -> t2 when the first cast loses nothing.
    inner = E.Cast(x, to=Attr.int(t1), saturate=s1)
    return rule(eq(y).to(E.Cast(inner, to=Attr.int(t2), saturate=s2)), lossless(dtype(x), t1)).then(
        union(y).with_(E.Cast(x, to=Attr.int(t2), saturate=s2))
    )


# ------------------------------------------------------------------ padding
# Conv(Pad(x, zeros around the spatial axes)) == Conv(x) with those pads added to its own: the
# Pad that Keras' ZeroPadding2D and "same" padding exported by tf2onnx put before strided convs
# (MobileNet, EfficientNet, ResNet-50), which otherwise copies the whole input once more.
# Pad's pads [x1_begin, ..., xr_begin, x1_end, ..., xr_end] (r = rank) are read from the
# constant by int_values; the batch and channel axes must not be padded, the others not cropped.
def _pad_into_conv(y: T, x: T, w: T, b: T, pads: T, value: T | None, pv: Vec[i64],
                   cp: Vec[i64], conv: dict[str, Attr], spatial: int, own: bool) -> Any:  # fmt: skip
    r = spatial + 2
    fill = T.none() if value is None else value
    padded = E.Pad(x, pads, fill, T.none(), mode=Attr.str("constant"))
    before = E.Conv(padded, w, b, auto_pad=Attr.str("NOTSET"), pads=Attr.ints(cp), **conv)
    spatial_pads = [*range(2, r), *range(r + 2, 2 * r)]
    # The conv's own pads [begins..., ends...] where it has them (else none: all zero).
    merged = [pv[i] + cp[k] if own else pv[i] for k, i in enumerate(spatial_pads)]
    after = E.Conv(x, w, b, auto_pad=Attr.str("NOTSET"), pads=Attr.ints(Vec[i64](*merged)), **conv)
    conditions = [
        eq(int_values(pads)).to(pv),
        eq(pv.length()).to(i64(2 * r)),
        eq(cp.length()).to(i64(2 * spatial if own else 0)),
        *(eq(pv[i]).to(i64(0)) for i in (0, 1, r, r + 1)),
        *(pv[i] >= i64(0) for i in spatial_pads),
        *([] if value is None else [is_splat(value, 0.0)]),
    ]
    return rule(eq(y).to(before), *conditions).then(union(y).with_(after))


for _spatial in (1, 2, 3):
    for _valued in (False, True):
        for _own in (False, True):
            _suffix = f"{_spatial}d{'-value' if _valued else ''}{'-padded' if _own else ''}"

            @family.rule(f"pad-into-conv-{_suffix}", caveat=EXACT)
            def _(y: T, x: T, w: T, b: T, pads: T, v: T, pv: Vec[i64], cp: Vec[i64], dl: Attr,
                  gr: Attr, ks: Attr, st: Attr, _spatial: int = _spatial, _valued: bool = _valued,
                  _own: bool = _own) -> Any:  # fmt: skip
                conv = {"dilations": dl, "group": gr, "kernel_shape": ks, "strides": st}
                value = v if _valued else None
                return _pad_into_conv(y, x, w, b, pads, value, pv, cp, conv, _spatial, _own)


# ------------------------------------------------------------------ matrix products
@family.rewrite("matmul-transposed-a-as-gemm", caveat=EXACT)
def _(a: T, b: T):
    lhs = E.MatMul(E.Transpose(a, perm=Attr.ints(Vec[i64](i64(1), i64(0)))), b)
    return lhs, E.Gemm(a, b, transA=1), rank(a, 2), rank(b, 2)


@family.rewrite("matmul-transposed-b-as-gemm", caveat=EXACT)
def _(a: T, b: T):
    lhs = E.MatMul(a, E.Transpose(b, perm=Attr.ints(Vec[i64](i64(1), i64(0)))))
    return lhs, E.Gemm(a, b, transB=1), rank(a, 2), rank(b, 2)


@family.rule("gemm-absorb-transpose-a", caveat=EXACT)
def _(y: T, a: T, b: T, c: T, al: Attr, be: Attr, ta: i64, tb: Attr):
    t = E.Transpose(a, perm=Attr.ints(Vec[i64](i64(1), i64(0))))
    gemm = E.Gemm(t, b, c, alpha=al, beta=be, transA=Attr.int(ta), transB=tb)
    return rule(eq(y).to(gemm)).then(
        union(y).with_(E.Gemm(a, b, c, alpha=al, beta=be, transA=Attr.int(i64(1) - ta), transB=tb))
    )


@family.rule("gemm-absorb-transpose-b", caveat=EXACT)
def _(y: T, a: T, b: T, c: T, al: Attr, be: Attr, ta: Attr, tb: i64):
    t = E.Transpose(b, perm=Attr.ints(Vec[i64](i64(1), i64(0))))
    gemm = E.Gemm(a, t, c, alpha=al, beta=be, transA=ta, transB=Attr.int(tb))
    return rule(eq(y).to(gemm)).then(
        union(y).with_(E.Gemm(a, b, c, alpha=al, beta=be, transA=ta, transB=Attr.int(i64(1) - tb)))
    )


@family.rewrite("matmul-add-as-gemm", caveat=ROUNDING)
def _(a: T, b: T, c: T):
    m = E.MatMul(a, b)
    return E.Add(m, c), E.Gemm(a, b, c), rank(a, 2), rank(b, 2), same_shape(E.Add(m, c), m)


@family.rewrite("add-matmul-as-gemm", caveat=ROUNDING)
def _(a: T, b: T, c: T):
    m = E.MatMul(a, b)
    return E.Add(c, m), E.Gemm(a, b, c), rank(a, 2), rank(b, 2), same_shape(E.Add(c, m), m)


# ------------------------------------------------------------------ reordering (bounded)
@family.rewrite("add-comm", caveat=EXACT, explosive=True)
def _(x: T, y: T):
    return E.Add(x, y), E.Add(y, x)


@family.rewrite("mul-comm", caveat=EXACT, explosive=True)
def _(x: T, y: T):
    return E.Mul(x, y), E.Mul(y, x)


@family.rewrite("add-assoc", caveat=ROUNDING, explosive=True)
def _(x: T, y: T, z: T):
    return E.Add(E.Add(x, y), z), E.Add(x, E.Add(y, z))


@family.rewrite("mul-assoc", caveat=ROUNDING, explosive=True)
def _(x: T, y: T, z: T):
    return E.Mul(E.Mul(x, y), z), E.Mul(x, E.Mul(y, z))


@family.rule("matmul-assoc-right", caveat=ROUNDING, explosive=True)
def _(r: T, a: T, b: T, c: T, sb: Vec[i64], sc: Vec[i64], d: i64):
    # (a @ b) @ c -> a @ (b @ c) for 2-D b and c (a may be batched: it only broadcasts).
    bc = E.MatMul(b, c)
    return rule(
        eq(r).to(E.MatMul(E.MatMul(a, b), c)),
        eq(shape(b)).to(sb),
        eq(shape(c)).to(sc),
        eq(sb.length()).to(i64(2)),
        eq(sc.length()).to(i64(2)),
        eq(dtype(b)).to(d),
    ).then(
        union(r).with_(E.MatMul(a, bc)),
        set_(shape(bc)).to(Vec[i64](sb[0], sc[1])),
        set_(dtype(bc)).to(d),
    )


@family.rule("matmul-assoc-left", caveat=ROUNDING, explosive=True)
def _(r: T, a: T, b: T, c: T, sa: Vec[i64], sb: Vec[i64], sc: Vec[i64], d: i64):
    # a @ (b @ c) -> (a @ b) @ c, same condition; a @ b keeps a's leading dimensions.
    ab = E.MatMul(a, b)
    return rule(
        eq(r).to(E.MatMul(a, E.MatMul(b, c))),
        eq(shape(a)).to(sa),
        eq(shape(b)).to(sb),
        eq(shape(c)).to(sc),
        eq(sb.length()).to(i64(2)),
        eq(sc.length()).to(i64(2)),
        eq(dtype(a)).to(d),
    ).then(
        union(r).with_(E.MatMul(ab, c)),
        set_(shape(ab)).to(sa.pop().push(sb[1])),
        set_(dtype(ab)).to(d),
    )


del _code, _n

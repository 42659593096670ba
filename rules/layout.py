"""Layout rules: channels-last variants next to channels-first ops, and transpose sinking.

Two families, each switchable by name:

* ``layout-nhwc``: every Conv, MaxPool (values only), AveragePool, GlobalAverage/MaxPool and
  inference BatchNormalization over an ``N x C x D...`` tensor (1-3 spatial axes) gets a
  channels-last alternative between explicit layout conversions::

      Conv(x, w, b) == Transpose(ConvNHWC(Transpose(x, to_last), Transpose(w, w_to_hwio), b),
                                 to_first)

  (see :mod:`eqsat.ops.layout`); the weight transpose folds at compile time. Global pools become
  ``ReduceMean``/``ReduceMax`` over the spatial axes; BatchNormalization becomes a per-channel
  multiply-add on the last axis (scale and shift folded from its constant parameters, like
  ``fusion-bn`` does). A conv followed by an elementwise epilogue in NHWC becomes
  ``FusedConvNHWC`` (with ``fusion-elementwise`` on). Between two such regions the conversions
  cancel (``layout-transpose``), so a chain of convs runs in NHWC with one conversion at each end.
* ``layout-transpose``: ``Transpose(Transpose(x, p), q) -> x`` when ``q`` undoes ``p``; transposes
  sink below unary and binary elementwise ops (a non-transposed operand of lower rank is
  unsqueezed, then transposed by the inverse permutation, which folds for constants), single-axis
  reductions (keepdims 0 or 1), Softmax/LogSoftmax, ArgMax/ArgMin (keepdims=1), Concat (2-3
  inputs), Split (2-4 outputs) and Pad (when every pad is the same, so that permuting the pads
  changes nothing); a transpose that only moves size-1 axes vanishes under Reshape (static shape)
  and Flatten (when the flattened prefix keeps its size).

Rules compute permutations with egglog integer arithmetic (``[a == b]`` is ``1 >> (a - b)^2``),
and new constant inputs (reduction axes, leading Unsqueeze axes, spatial axes) are rule constants
registered here, picked by a computed key. Caveats: transposes, Pad and the NHWC conv/pools are
exact (the NHWC references transpose around the NCHW ones); global pools as reductions, the folded
BatchNormalization and sunk reductions may round differently (a few ulp).

What needs an engine change to do more: a constant an op's shape depends on (Pad's pads, Split's
sizes, a multi-axis reduction's axes) can only be permuted by a rule into a new *computed* tensor
(e.g. ``Gather(pads, idx)``), and :class:`eqsat.decode.View` only knows the content of ``T.const``
e-classes, so such e-nodes would be typed invalid. Evaluating small constant e-classes in
``View.const_value`` would let these rules permute pads and multi-axis reductions too. (Rules
can now read a small integer constant's elements through the ``int_values`` fact, as
``algebraic/pad-into-conv-*`` does with Pad's pads; building a permuted constant is what is
still missing.)
"""

from __future__ import annotations

import functools
from typing import Any

from egglog import String, Vec, eq, f64, i64, rule, set_, union, var
from eqsat.rules import Family
from eqsat.rules.fusion import bn_scale_shift

from eqsat import ops
from eqsat.egraph import (
    Attr,
    E,
    T,
    TList,
    arity,
    dtype,
    dynamic,
    is_const,
    make,
    rule_const,
    shape,
    spec,
    splat,
    static_shape,
)
from eqsat.ops import layout as layout_ops
from eqsat.ops.fused import MAX_FUSED_INPUTS

EXACT = "exact"
ROUNDING = "changes rounding (a few ulp)"
MAX_RANK = 6
SPATIAL_RANKS = (3, 4, 5)  # N, C and 1-3 spatial axes

nhwc = Family("layout-nhwc", "channels-last variants of Conv, pools and BatchNormalization")
transpose = Family("layout-transpose", "transpose cancellation, sinking and canonicalization")
FAMILY_NAMES = {f.name: f for f in (nhwc, transpose)}

# Constants rules pick by computed key: [k] (an axis) and [0, ..., k-1] (leading axes).
AXIS_KEY, LEAD_KEY = "eqsat:layout_axis_", "eqsat:layout_lead_"
for _k in range(MAX_RANK):
    rule_const(f"layout_axis_{_k}", [_k])
    rule_const(f"layout_lead_{_k + 1}", list(range(_k + 1)))


# ------------------------------------------------------------------ integer helpers
def ints(values: Any) -> Vec[i64]:
    return Vec[i64](*(i64(int(v)) for v in values))


def tr(x: Any, perm: Any) -> T:
    return E.Transpose(x, perm=Attr.ints(perm if isinstance(perm, Vec) else ints(perm)))


def gt(a: Any, b: Any) -> Any:
    """1 when a > b else 0."""
    return (a - b).max(i64(0)).min(i64(1))


def eqi(a: Any, b: Any, small: bool = False) -> Any:
    """1 when a == b else 0; ``small`` when |a - b| < 8 (else the shift is capped: Rust shifts
    wrap at 64)."""
    d = a - b
    return i64(1) >> (d * d if small else (d * d).min(i64(63)))


def ne1(d: Any) -> Any:
    """1 for a dimension other than 1 (a 0 counts: it changes where a flatten splits)."""
    return i64(1) - eqi(d, i64(1))


# Building egglog expressions is slow (about a millisecond per operation), so the big ones are
# built once per rank over fixed variable names, which the rules then use as their parameters.
P = var("p", Vec[i64])
D = var("d", Vec[i64])


@functools.cache
def inverse(n: int) -> Vec[i64]:
    """The inverse of the length-``n`` permutation ``p``: the position of each j in ``p``."""
    out = []
    for j in range(n):
        pos: Any = i64(0)
        for i in range(1, n):
            pos = pos + i64(i) * eqi(P[i], i64(j), small=True)
        out.append(pos)
    return Vec[i64](*out)


@functools.cache
def unit_moves_only(n: int) -> Any:
    """0 when transposing ``d``-shaped data by ``p`` keeps the order of the axes other than size 1
    (the transpose is a no-op in memory)."""
    total: Any = i64(0)
    for i in range(n):
        for j in range(i + 1, n):
            total = total + ne1(D[P[i]]) * ne1(D[P[j]]) * gt(P[i], P[j])
    return total


def norm_axis(a: Any, n: Any) -> Any:
    return a + n * gt(i64(0), a)


def inverse_static(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def permuted(s: Any, perm: list[int]) -> Vec[i64]:
    return Vec[i64](*(s[i] for i in perm))


def typed_like(new: T, orig_shape: Any, perm: list[int], d: Any) -> list[Any]:
    """Shape and dtype of ``new`` where ``Transpose(new, perm)`` has shape ``orig_shape``."""
    return [set_(shape(new)).to(permuted(orig_shape, inverse_static(perm))), set_(dtype(new)).to(d)]


def sunk(lhs: T, inner: T, perm: Any, *conditions: Any) -> Any:
    """The rule ``lhs -> Transpose(inner, perm)`` for run-time values.

    ``inner`` is marked a run-time value with ``lhs``'s dtype at once, so that fusion rules (which
    build kernels for run-time values only, and read dtypes) see it.
    """
    y, d = var("sunk_y", T), var("sunk_d", i64)
    return rule(eq(y).to(lhs), dynamic(y), eq(dtype(y)).to(d), *conditions).then(
        union(y).with_(tr(inner, perm)), dynamic(inner), set_(dtype(inner)).to(d)
    )


# ------------------------------------------------------------------ layout-nhwc
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _attr_vars(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {a: var(f"a_{a}", Attr) for a in names}


for _r in SPATIAL_RANKS:
    _tl, _tf, _wp = layout_ops.to_last(_r), layout_ops.to_first(_r), layout_ops.w_to_hwio(_r)

    for _bias in (False, True):

        @nhwc.rule(f"conv-nhwc-{_r - 2}d{'-bias' if _bias else ''}", caveat=EXACT)
        def _(y: T, x: T, w: T, b: T, s: Vec[i64], sw: Vec[i64], d: i64, _r: int = _r,
              _tl: list = _tl, _tf: list = _tf, _wp: list = _wp, _bias: bool = _bias) -> Any:  # fmt: skip
            attrs = _attr_vars(CONV_ATTRS)
            bias = b if _bias else T.none()
            inner = make("ConvNHWC", tr(x, _tl), tr(w, _wp), bias, **attrs)
            extra = [eq(shape(b)).to(Vec[i64](sw[0]))] if _bias else []
            return rule(
                eq(y).to(E.Conv(x, w, bias, **attrs)),
                eq(shape(y)).to(s),
                eq(s.length()).to(i64(_r)),
                eq(shape(w)).to(sw),
                eq(dtype(y)).to(d),
                dynamic(y),
                *extra,
            ).then(union(y).with_(tr(inner, _tf)), dynamic(inner), *typed_like(inner, s, _tf, d))

    for _pool, _extra in (("MaxPool", ("storage_order",)), ("AveragePool", ())):

        @nhwc.rule(f"{_pool.lower()}-nhwc-{_r - 2}d", caveat=EXACT)
        def _(y: T, x: T, s: Vec[i64], d: i64, _pool: str = _pool, _extra: tuple = _extra,
              _tl: list = _tl, _tf: list = _tf, _r: int = _r) -> Any:  # fmt: skip
            names = [a for a in ops.OPS[_pool].attrs if a not in _extra]
            attrs = _attr_vars(names)
            lhs = make(_pool, x, **attrs, **_attr_vars(_extra))
            inner = make(f"{_pool}NHWC", tr(x, _tl), **attrs)
            return rule(
                eq(y).to(lhs),
                eq(shape(y)).to(s),
                eq(s.length()).to(i64(_r)),
                eq(dtype(y)).to(d),
                dynamic(y),
            ).then(union(y).with_(tr(inner, _tf)), dynamic(inner), *typed_like(inner, s, _tf, d))

    _spatial = rule_const(f"layout_spatial_{_r}", list(range(1, _r - 1)))
    for _global, _reduce in (("GlobalAveragePool", "ReduceMean"), ("GlobalMaxPool", "ReduceMax")):

        @nhwc.rule(f"{_global.lower()}-nhwc-{_r - 2}d", caveat=ROUNDING)
        def _(y: T, x: T, s: Vec[i64], d: i64, _global: str = _global, _reduce: str = _reduce,
              _tl: list = _tl, _tf: list = _tf, _r: int = _r, _spatial: T = _spatial) -> Any:  # fmt: skip
            inner = make(_reduce, tr(x, _tl), _spatial, keepdims=1)
            return rule(
                eq(y).to(make(_global, x)),
                eq(shape(y)).to(s),
                eq(s.length()).to(i64(_r)),
                eq(dtype(y)).to(d),
                dynamic(y),
            ).then(union(y).with_(tr(inner, _tf)), dynamic(inner), *typed_like(inner, s, _tf, d))

    @nhwc.rule(f"batchnorm-nhwc-{_r - 2}d", caveat=ROUNDING + "; assumes finite mean")
    def _(y: T, x: T, sc: T, bb: T, m: T, v: T, eps: Attr, mom: Attr, s: Vec[i64], d: i64,
          _tl: list = _tl, _tf: list = _tf, _r: int = _r) -> Any:  # fmt: skip
        mul, add = bn_scale_shift(sc, bb, m, v, eps, mom)
        scaled = E.Mul(tr(x, _tl), mul)
        inner = E.Add(scaled, add)
        c = Vec[i64](s[1])
        return rule(
            eq(y).to(make("BatchNormalization", x, sc, bb, m, v, epsilon=eps, momentum=mom)),
            eq(shape(y)).to(s),
            eq(s.length()).to(i64(_r)),
            eq(dtype(y)).to(d),
            dynamic(y),
            *[is_const(t) for t in (sc, bb, m, v)],
            *[eq(shape(t)).to(c) for t in (sc, bb, m, v)],
        ).then(
            union(y).with_(tr(inner, _tf)),
            dynamic(inner),
            dynamic(scaled),
            *typed_like(inner, s, _tf, d),
            *typed_like(scaled, s, _tf, d),
        )


@nhwc.rule("conv-nhwc-epilogue", caveat="exact (float16 intermediates are not rounded)")
def _(y: T, x: T, w: T, b: T, rest: TList, body: String, dn: String, count: i64) -> Any:
    attrs = _attr_vars(tuple(ops.OPS["ConvNHWC"].attrs))
    conv = make("ConvNHWC", x, w, b, **attrs)
    fused_in = spec("FusedElementwise").fn(TList.cons(conv, rest), Attr.str(body), Attr.str(dn))
    items = TList.cons(x, TList.cons(w, TList.cons(b, rest)))
    fattrs = [*attrs.values(), Attr.int(3), Attr.str(body)]
    return rule(eq(y).to(fused_in), eq(arity(rest)).to(count), count <= i64(MAX_FUSED_INPUTS)).then(
        union(y).with_(spec("FusedConvNHWC").fn(items, *fattrs))
    )


# ------------------------------------------------------------------ layout-transpose
for _n in range(1, MAX_RANK + 1):

    @transpose.rule(f"cancel-{_n}", caveat=EXACT)
    def _(y: T, x: T, p: Vec[i64], q: Vec[i64], _n: int = _n) -> Any:
        return rule(
            eq(y).to(tr(tr(x, p), q)),
            eq(q.length()).to(i64(_n)),
            *[eq(p[q[i]]).to(i64(i)) for i in range(_n)],
        ).then(union(y).with_(x))


UNARY = sorted(
    name
    for name, d in ops.OPS.items()
    if d.elementwise and d.max_inputs == 1 and name not in ("Identity",)
)
# Arithmetic only: comparisons and logic ops rarely meet a layout transpose, and every op here
# costs 2 + 4 * len(BINARY_RANKS) rules.
BINARY = ("Add", "Sub", "Mul", "Div", "Pow")
BINARY_RANKS = (2, 3, 4, 5)


def _op_attrs(op: str) -> dict[str, Any]:
    return _attr_vars(tuple(ops.OPS[op].attrs))


for _op in UNARY:

    @transpose.rule(f"sink-{_op}", caveat=EXACT)
    def _(x: T, p: Vec[i64], _op: str = _op) -> Any:
        attrs = _op_attrs(_op)
        return sunk(make(_op, tr(x, p), **attrs), make(_op, x, **attrs), p)


for _lo, _hi in ((True, True), (True, False), (False, True)):

    @transpose.rule(f"sink-Clip{'-min' if _lo else ''}{'-max' if _hi else ''}", caveat=EXACT)
    def _(x: T, p: Vec[i64], lo: T, hi: T, _lo: bool = _lo, _hi: bool = _hi) -> Any:
        # ONNX Clip bounds are scalars; a broadcasting one would not commute with the transpose.
        bounds = [lo if _lo else T.none(), hi if _hi else T.none()]
        scalar = [
            eq(shape(t)).to(Vec[i64].empty())
            for t, on in zip((lo, hi), (_lo, _hi), strict=True)
            if on
        ]
        return sunk(E.Clip(tr(x, p), *bounds), E.Clip(x, *bounds), p, *scalar)


def _binary(op: str, a: Any, b: Any, attrs: dict[str, Any], left: bool) -> T:
    return make(op, a, b, **attrs) if left else make(op, b, a, **attrs)


for _op in BINARY:

    @transpose.rule(f"sink-{_op}-both", caveat=EXACT)
    def _(a: T, b: T, p: Vec[i64], _op: str = _op) -> Any:
        attrs = _op_attrs(_op)
        return sunk(make(_op, tr(a, p), tr(b, p), **attrs), make(_op, a, b, **attrs), p)

    for _left in (True, False):
        _side = "left" if _left else "right"

        @transpose.rule(f"sink-{_op}-{_side}-scalar", caveat=EXACT)
        def _(a: T, c: T, p: Vec[i64], _op: str = _op, _left: bool = _left) -> Any:
            attrs = _op_attrs(_op)
            lhs = _binary(_op, tr(a, p), c, attrs, _left)
            rhs = _binary(_op, a, c, attrs, _left)
            return sunk(lhs, rhs, p, eq(shape(c)).to(Vec[i64].empty()))

        for _n in BINARY_RANKS:

            @transpose.rule(f"sink-{_op}-{_side}-{_n}", caveat=EXACT)
            def _(a: T, c: T, p: Vec[i64], _op: str = _op, _left: bool = _left,
                  _n: int = _n) -> Any:  # fmt: skip
                # The other operand (same rank) goes back through the inverse permutation.
                attrs = _op_attrs(_op)
                lhs = _binary(_op, tr(a, p), c, attrs, _left)
                inner = _binary(_op, a, tr(c, inverse(_n)), attrs, _left)
                return sunk(
                    lhs, inner, p, eq(p.length()).to(i64(_n)), eq(shape(c).length()).to(i64(_n))
                )

            @transpose.rule(f"sink-{_op}-{_side}-{_n}-broadcast", caveat=EXACT)
            def _(a: T, c: T, p: Vec[i64], k: i64, _op: str = _op, _left: bool = _left,
                  _n: int = _n) -> Any:  # fmt: skip
                # A lower-rank operand first gets the leading unit axes broadcasting gives it.
                attrs = _op_attrs(_op)
                full = E.Unsqueeze(c, T.const(String(LEAD_KEY) + (i64(_n) - k).to_string()))
                lhs = _binary(_op, tr(a, p), c, attrs, _left)
                inner = _binary(_op, a, tr(full, inverse(_n)), attrs, _left)
                return sunk(
                    lhs,
                    inner,
                    p,
                    eq(p.length()).to(i64(_n)),
                    eq(shape(c).length()).to(k),
                    k > i64(0),
                    k < i64(_n),
                )


# ------------------------------------------------------------------ axis-carrying ops
REDUCE = sorted(name for name in ops.OPS if name.startswith("Reduce"))
AXIS_OPS = {"Softmax": {}, "LogSoftmax": {}, "ArgMax": {"keepdims": 1}, "ArgMin": {"keepdims": 1}}


def _axis_const(axis: Any) -> T:
    return T.const(String(AXIS_KEY) + axis.to_string())


def _in_range(ax: Any, n: Any) -> list[Any]:
    return [ax < n, ax >= i64(0) - n]


for _op in REDUCE:

    @transpose.rule(f"sink-{_op}-keepdims", caveat=ROUNDING)
    def _(x: T, p: Vec[i64], axes: T, nw: Attr, af: f64, _op: str = _op) -> Any:
        # One reduced axis a of the transposed tensor is axis p[a] of x; keepdims keeps the rank.
        ax = af.to_i64()
        lhs = make(_op, tr(x, p), axes, keepdims=1, noop_with_empty_axes=nw)
        rhs = make(_op, x, _axis_const(p[norm_axis(ax, p.length())]), keepdims=1,
                   noop_with_empty_axes=nw)  # fmt: skip
        one = eq(shape(axes)).to(Vec[i64](i64(1)))
        return sunk(lhs, rhs, p, one, eq(splat(axes)).to(af), *_in_range(ax, p.length()))

    for _n in BINARY_RANKS:

        @transpose.rule(f"sink-{_op}-{_n}", caveat=ROUNDING)
        def _(x: T, p: Vec[i64], axes: T, nw: Attr, af: f64, _op: str = _op,
              _n: int = _n) -> Any:  # fmt: skip
            # Without keepdims the permutation loses the reduced axis and renumbers the rest.
            ax = af.to_i64()
            a = norm_axis(ax, i64(_n))
            t = p[a]
            rest = p.remove(a)
            q = Vec[i64](*(rest[i] - gt(rest[i], t) for i in range(_n - 1)))
            lhs = make(_op, tr(x, p), axes, keepdims=0, noop_with_empty_axes=nw)
            rhs = make(_op, x, _axis_const(t), keepdims=0, noop_with_empty_axes=nw)
            return sunk(
                lhs,
                rhs,
                q,
                eq(p.length()).to(i64(_n)),
                eq(shape(axes)).to(Vec[i64](i64(1))),
                eq(splat(axes)).to(af),
                *_in_range(ax, i64(_n)),
            )


for _op, _fixed in AXIS_OPS.items():

    @transpose.rule(f"sink-{_op}", caveat=EXACT)
    def _(x: T, p: Vec[i64], ax: i64, _op: str = _op, _fixed: dict = _fixed) -> Any:
        others = {k: v for k, v in _op_attrs(_op).items() if k != "axis"}
        others.update(_fixed)
        lhs = make(_op, tr(x, p), axis=Attr.int(ax), **others)
        rhs = make(_op, x, axis=Attr.int(p[norm_axis(ax, p.length())]), **others)
        return sunk(lhs, rhs, p, *_in_range(ax, p.length()))


for _k in (2, 3):

    @transpose.rule(f"sink-Concat-{_k}", caveat=EXACT)
    def _(p: Vec[i64], ax: i64, _k: int = _k) -> Any:
        xs = [var(f"x{i}", T) for i in range(_k)]
        lhs = make("Concat", *(tr(x, p) for x in xs), axis=Attr.int(ax))
        rhs = make("Concat", *xs, axis=Attr.int(p[norm_axis(ax, p.length())]))
        return sunk(lhs, rhs, p, *_in_range(ax, p.length()))


for _k in (2, 3, 4):

    @transpose.rule(f"sink-Split-{_k}", caveat=EXACT)
    def _(y: T, x: T, p: Vec[i64], sizes: T, ax: i64, no: Attr, _k: int = _k) -> Any:
        mask = "1" * _k
        lhs = make("Split", tr(x, p), sizes, axis=Attr.int(ax), num_outputs=no, outs=mask)
        new_axis = Attr.int(p[norm_axis(ax, p.length())])
        rhs = make("Split", x, sizes, axis=new_axis, num_outputs=no, outs=mask)
        return rule(eq(y).to(lhs), dynamic(y.out(0)), *_in_range(ax, p.length())).then(
            *[union(y.out(i)).with_(tr(rhs.out(i), p)) for i in range(_k)],
            *[dynamic(rhs.out(i)) for i in range(_k)],
        )


@transpose.rule("sink-Pad-uniform", caveat=EXACT)
def _(x: T, p: Vec[i64], pads: T, value: T, mode: Attr, f: f64) -> Any:
    # Every axis gets the same pads, so permuting the pads vector leaves it as it is.
    lhs = make("Pad", tr(x, p), pads, value, T.none(), mode=mode)
    return sunk(lhs, make("Pad", x, pads, value, T.none(), mode=mode), p, eq(splat(pads)).to(f))


# ------------------------------------------------------------------ canonicalization
for _n in range(2, MAX_RANK + 1):

    @transpose.rule(f"reshape-unit-transpose-{_n}", caveat=EXACT)
    def _(y: T, x: T, p: Vec[i64], s: T, az: Attr, d: Vec[i64], _n: int = _n) -> Any:
        return rule(
            eq(y).to(E.Reshape(tr(x, p), s, allowzero=az)),
            static_shape(s),
            eq(p.length()).to(i64(_n)),
            eq(shape(x)).to(d),
            eq(unit_moves_only(_n)).to(i64(0)),
        ).then(union(y).with_(E.Reshape(x, s, allowzero=az)))

    @transpose.rule(f"flatten-unit-transpose-{_n}", caveat=EXACT)
    def _(y: T, x: T, p: Vec[i64], ax: i64, d: Vec[i64], _n: int = _n) -> Any:
        # Same number of non-unit axes before the split point: the same two products.
        a = norm_axis(ax, i64(_n))
        before_t: Any = i64(0)
        before_x: Any = i64(0)
        for i in range(_n):
            before_t = before_t + gt(a, i64(i)) * ne1(d[p[i]])
            before_x = before_x + gt(a, i64(i)) * ne1(d[i64(i)])
        return rule(
            eq(y).to(E.Flatten(tr(x, p), axis=Attr.int(ax))),
            eq(p.length()).to(i64(_n)),
            eq(shape(x)).to(d),
            eq(unit_moves_only(_n)).to(i64(0)),
            eq(before_t).to(before_x),
        ).then(union(y).with_(E.Flatten(x, axis=Attr.int(ax))))


del _k, _r, _tl, _tf, _wp, _bias, _pool, _extra, _spatial, _global, _reduce, _n, _op, _lo, _hi
del _left, _side, _fixed

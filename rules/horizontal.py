"""Horizontal fusion: sibling Conv, MatMul or Gemm ops that read the same input become one op.

As in TASO and Tensat, ``k`` (2 or 3) ops with the same input and equally shaped constant weights
(and the same attributes) are one op over the concatenated weights followed by a ``Split``::

    MatMul(x, w1), MatMul(x, w2)  ==  Split(MatMul(x, Concat(w1, w2, axis=1)), axis=-1).out(0, 1)

Conv concatenates filters (axis 0) and biases; Gemm concatenates along its N axis (which axis of
``B`` that is depends on ``transB``) and its ``[N]`` biases. The merged op reads the input once and
is one kernel (one launch) instead of ``k``; the Split costs a copy of the result. Extraction
takes the merge where the cost model finds it cheaper: launch-bound small ops, or where the Split
disappears again. Two more rules make that possible:

* ``concat-of-split``: ``Concat(Split(z).out(0), ..., Split(z).out(k-1))`` along the split axis is
  ``z`` (the inception pattern: merged branches that are concatenated again need no Split);
* ``split-hoist-<op>``: a unary elementwise op on one Split output is that op on the whole tensor,
  split (``Relu(Split(z).out(i)) == Split(Relu(z)).out(i)``), so an activation after each sibling
  becomes one epilogue of the merged op.

Equal output widths only: ``Split`` is built with ``num_outputs`` because sizes computed by a rule
would be a new constant tensor that shape inference cannot read (see ``eqsat.rules.layout``). The
merge is exact: every output element is computed from the same operands in the same order (the
concatenation only places independent output columns next to each other). Sibling pairs are
matched in both orders, which adds the merged op twice (once per weight order); both are correct
and extraction keeps at most one.
"""

from __future__ import annotations

from typing import Any

from egglog import String, Vec, eq, i64, ne, rule, set_, union, var
from eqsat.rules import Family

from eqsat import ops
from eqsat.egraph import Attr, E, T, dtype, dynamic, is_const, make, shape, spec

EXACT = "exact"
horizontal = Family("horizontal", "sibling Conv/MatMul/Gemm merged over concatenated weights")
FAMILY_NAMES = {horizontal.name: horizontal}
WAYS = (2, 3)
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _split(z: T, axis: int, k: int) -> T:
    return make("Split", z, T.none(), axis=axis, num_outputs=k, outs="1" * k)


def _distinct(ws: list[Any]) -> list[Any]:
    return [ne(ws[i]).to(ws[j]) for i in range(len(ws)) for j in range(i + 1, len(ws))]


def _merge(ys: list[Any], merged: T, axis: int, conditions: list[Any]) -> Any:
    k = len(ys)
    parts = _split(merged, axis, k)
    return rule(*conditions).then(
        *[union(y).with_(parts.out(i)) for i, y in enumerate(ys)],
        dynamic(merged),
        *[dynamic(parts.out(i)) for i in range(k)],
    )


def _neg(a: Any) -> Any:
    """1 when a < 0 else 0."""
    return (i64(0) - a).max(i64(0)).min(i64(1))


def _vars(prefix: str, k: int, sort: Any = T) -> list[Any]:
    return [var(f"{prefix}{i}", sort) for i in range(k)]


for _k in WAYS:

    @horizontal.rule(f"matmul-{_k}", caveat=EXACT)
    def _(x: T, sw: Vec[i64], _k: int = _k) -> Any:
        ys, ws = _vars("y", _k), _vars("w", _k)
        conditions = [eq(y).to(E.MatMul(x, w)) for y, w in zip(ys, ws, strict=True)]
        conditions += [dynamic(ys[0]), *_distinct(ws), *[is_const(w) for w in ws]]
        conditions += [eq(shape(w)).to(sw) for w in ws] + [eq(sw.length()).to(i64(2))]
        return _merge(ys, E.MatMul(x, make("Concat", *ws, axis=1)), -1, conditions)

    for _bias in (False, True):

        @horizontal.rule(f"gemm-{_k}{'-bias' if _bias else ''}", caveat=EXACT)
        def _(x: T, sw: Vec[i64], tb: i64, al: Attr, be: Attr, ta: Attr, _k: int = _k,
              _bias: bool = _bias) -> Any:  # fmt: skip
            ys, ws, cs = _vars("y", _k), _vars("w", _k), _vars("c", _k)
            biases = cs if _bias else [T.none()] * _k
            attrs = dict(alpha=al, beta=be, transA=ta, transB=Attr.int(tb))
            conditions = [
                eq(y).to(E.Gemm(x, w, c, **attrs)) for y, w, c in zip(ys, ws, biases, strict=True)
            ]
            conditions += [dynamic(ys[0]), *_distinct(ws), *[is_const(w) for w in ws]]
            conditions += [eq(shape(w)).to(sw) for w in ws] + [eq(sw.length()).to(i64(2))]
            # B is K x N (transB=0) or N x K (transB=1): N is axis 1 - transB.
            n = Vec[i64](sw[i64(1) - tb])
            conditions += [eq(shape(c)).to(n) for c in cs] if _bias else []
            axis = Attr.int(i64(1) - tb)
            w_cat = make("Concat", *ws, axis=axis)
            c_cat = make("Concat", *cs, axis=0) if _bias else T.none()
            return _merge(ys, E.Gemm(x, w_cat, c_cat, **attrs), 1, conditions)

        @horizontal.rule(f"conv-{_k}{'-bias' if _bias else ''}", caveat=EXACT)
        def _(x: T, sw: Vec[i64], _k: int = _k, _bias: bool = _bias) -> Any:
            # Grouped convs would interleave their groups' filters: group 1 only.
            ys, ws, bs = _vars("y", _k), _vars("w", _k), _vars("b", _k)
            biases = bs if _bias else [T.none()] * _k
            attrs = {a: var(f"a_{a}", Attr) for a in CONV_ATTRS}
            attrs["group"] = Attr.int(1)
            conditions = [
                eq(y).to(E.Conv(x, w, b, **attrs)) for y, w, b in zip(ys, ws, biases, strict=True)
            ]
            conditions += [dynamic(ys[0]), *_distinct(ws), *[is_const(w) for w in ws]]
            conditions += [eq(shape(w)).to(sw) for w in ws]
            conditions += [eq(shape(b)).to(Vec[i64](sw[0])) for b in bs] if _bias else []
            b_cat = make("Concat", *bs, axis=0) if _bias else T.none()
            merged = E.Conv(x, make("Concat", *ws, axis=0), b_cat, **attrs)
            return _merge(ys, merged, 1, conditions)

    @horizontal.rule(f"concat-of-split-{_k}", caveat=EXACT)
    def _(
        y: T, z: T, sizes: T, ax: i64, split_ax: i64, no: Attr, sy: Vec[i64], _k: int = _k
    ) -> Any:
        # (No variable is another's name followed by digits: egglog mints fresh names as a
        # name plus a count, see eqsat.encode.)
        parts = make("Split", z, sizes, axis=Attr.int(split_ax), num_outputs=no, outs="1" * _k)
        n = sy.length()
        return rule(
            eq(y).to(make("Concat", *(parts.out(i) for i in range(_k)), axis=Attr.int(ax))),
            eq(shape(y)).to(sy),
            eq(ax + n * _neg(ax)).to(split_ax + n * _neg(split_ax)),
        ).then(union(y).with_(z))


UNARY = sorted(
    name
    for name, d in ops.OPS.items()
    if d.elementwise and d.max_inputs == 1 and name not in ("Identity",)
)

for _op in UNARY:

    @horizontal.rule(f"split-hoist-{_op}", caveat=EXACT)
    def _(y: T, z: T, sizes: T, ax: Attr, no: Attr, mask: String, i: i64, d: i64,
          _op: str = _op) -> Any:  # fmt: skip
        # The op's output dtype goes on the new term at once: fusion rules read it.
        attrs = {a: var(f"a_{a}", Attr) for a in ops.OPS[_op].attrs}
        parts = spec("Split").fn(z, sizes, ax, no, mask)
        inner = make(_op, z, **attrs)
        hoisted = spec("Split").fn(inner, sizes, ax, no, mask)
        return rule(
            eq(y).to(make(_op, parts.out(i), **attrs)), dynamic(y), eq(dtype(y)).to(d)
        ).then(
            union(y).with_(hoisted.out(i)),
            dynamic(inner),
            dynamic(hoisted.out(i)),
            set_(dtype(inner)).to(d),
        )


del _k, _bias, _op

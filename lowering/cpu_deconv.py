"""ConvTranspose (1-D and 2-D, any stride, padding, dilation, output padding and grouping) as one
GEMM per image and group followed by a scatter-add of its columns (col2im).

Every input pixel times every filter tap is ``cols = W^T @ x``: (Mg*KH*KW, Cg) @ (Cg, H*W) per
group. Tap (kh, kw) of input pixel (ih, iw) then adds into output pixel (ih*SH - PH + kh*DH,
iw*SW - PW + kw*DW) when that lies inside the output: :func:`col2im` does this for each output
channel, tap and input row as one strided run. The bias and the fused epilogue follow in one pass
(:class:`eqsat.lowering.cpu_ops.Epilogue`). Decoders and detector heads use these with kernel 4 and
stride 2 (overlapping taps); the non-overlapping stride = kernel case has a faster scatter in
:mod:`eqsat.lowering.cpu_misc`, tried first.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.cpu import Env, Lowering, Step
from eqsat.lowering.memory import Usage
from numba import njit

from eqsat.ir import Node
from eqsat.ops.conv import transposed_geometry

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
def col2im(cols, out, geometry):  # type: ignore[no-untyped-def]
    """out (M, OH, OW) = the scatter-add of cols (M, KH, KW, H, W) (zeroed here first).
    geometry: (SH, SW, DH, DW, PH, PW), PH and PW the padding at the start (may be negative)."""
    sh, sw, dh, dw, ph, pw = geometry
    m_, kh_, kw_, h_, w_ = cols.shape
    oh_, ow_ = out.shape[1], out.shape[2]
    out[:] = 0
    for m in range(m_):
        for kh in range(kh_):
            for kw in range(kw_):
                off = kw * dw - pw
                # Input columns iw with 0 <= iw*SW + off < OW.
                lo = max(0, (-off + sw - 1) // sw)
                hi = min(w_, (ow_ - off + sw - 1) // sw)
                if hi <= lo:
                    continue
                for ih in range(h_):
                    oh = ih * sh - ph + kh * dh
                    if oh < 0 or oh >= oh_:
                        continue
                    src = cols[m, kh, kw, ih]
                    dst = out[m, oh]
                    for iw in range(lo, hi):
                        dst[iw * sw + off] += src[iw]


def build(lowering: Lowering, node: Node) -> Step | None:
    """The step of a (Fused)ConvTranspose of rank 3 or 4 with constant weights and bias, or None."""
    from eqsat.lowering.cpu_ops import Epilogue, _split

    base, extras = _split(node)
    x, w = base[0], base[1]
    b = base[2] if len(base) > 2 else None
    out = node.outputs[0]
    if x is None or w is None or out is None or x.rank not in (3, 4) or out.dtype not in FLOATS:
        return None
    if w.const is None or (b is not None and b.const is None):
        return None
    attrs = node.attrs
    group = int(attrs["group"])
    lift = x.rank == 3  # 1-D: one row of height 1
    geo = transposed_geometry(x.shape[2:], tuple(w.shape[2:]), attrs)
    if tuple(geo.out) != out.shape[2:]:
        return None
    n_, c_ = x.shape[:2]
    h_, w_ = (1, x.shape[2]) if lift else x.shape[2:]
    kh, kw = (1, w.shape[2]) if lift else w.shape[2:]
    oh, ow = (1, out.shape[2]) if lift else out.shape[2:]
    pad = (lambda t, v: (v, *t)) if lift else (lambda t, v: tuple(t))
    sh, sw = pad(geo.strides, 1)
    dh, dw = pad(geo.dilations, 1)
    ph, pw = pad(geo.begin, 0)
    cg, mg = c_ // group, w.shape[1]
    # Per group: (Mg*KH*KW, Cg), rows ordered (m, kh, kw) like col2im's columns.
    filters = [
        np.ascontiguousarray(
            w.const[g * cg : (g + 1) * cg].reshape(cg, mg * kh * kw).T, out.dtype
        )
        for g in range(group)
    ]  # fmt: skip
    cols = np.empty((mg * kh * kw, h_ * w_), out.dtype)
    blocks = cols.reshape(mg, kh, kw, h_, w_)
    geometry = (sh, sw, dh, dw, ph, pw)
    tail = (
        []
        if b is None
        else [(None, b.const.astype(out.dtype), (1, group * mg) + (1,) * (x.rank - 2))]
    )
    expr = "{0}" if b is None else f"({{0}} + {{{len(extras) + 1}}})"
    epi = Epilogue(lowering, node, expr, extras, tail)
    xs, o = lowering.slot(x), lowering.slot(out)
    matmul = np.matmul
    lowering.kernels += 1

    def run(env: Env) -> None:
        data = np.ascontiguousarray(env[xs]).reshape(n_, group, cg, h_ * w_)
        result = env[o].reshape(n_, group, mg, oh, ow)
        for i in range(n_):
            for g in range(group):
                matmul(filters[g], data[i, g], out=cols)
                col2im(blocks, result[i, g], geometry)
        epi(env, env[o])

    return Step(run, Usage([xs, *epi.reads()], [o], True), "conv", node.name)


__all__ = ["build", "col2im"]

"""Generated source of the recurrent-layer kernels (LSTM, GRU, RNN) of :mod:`cpu_recurrent`.

One Numba module per layer form (op, activations with their alpha/beta, GRU's
linear_before_reset, dtype, whether products may go to BLAS): the whole-layer ``kernel`` and,
for LSTM and RNN with a larger batch, the ``begin``/``cell_step``/``end`` kernels that Python
steps around numpy's BLAS (each step's product ``[h x_t 1] @ [R^T; W^T; bias]``, whose ``x_t``
columns the kernels fill). Activations are inlined from the scalar language of
:mod:`eqsat.lowering.codegen`.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import numpy as np
from eqsat.lowering import codegen

from eqsat.ops import recurrent

# Products with at most this many rows (batch entries, or steps x batch for the input projection)
# run on the kernel's own loop; larger ones on BLAS (the input projection on numpy's, whose
# threads the executable pins). OpenBLAS packs the whole weight matrix on every call: for a
# 2 x 128 @ 128 x 512 product that took 20 us, the loop 5 us.
SMALL_ROWS = 8

# Activations in the scalar language of codegen; {a} and {b} are the activation's alpha/beta.
ACTIVATION_EXPRS = {
    "relu": "max({0}, 0)",
    "tanh": "tanh({0})",
    "sigmoid": "(1 / (1 + exp(-{0})))",
    "affine": "(({a} * {0}) + {b})",
    "leakyrelu": "({0} if ({0} >= 0) else ({a} * {0}))",
    "thresholdedrelu": "({0} if ({0} > {a}) else 0)",
    "scaledtanh": "({a} * tanh(({b} * {0})))",
    "hardsigmoid": "min(max((({a} * {0}) + {b}), 0), 1)",
    "elu": "({0} if ({0} >= 0) else ({a} * (exp(min({0}, 0)) - 1)))",
    "softsign": "({0} / (1 + abs({0})))",
    # log(1 + e^x) without overflow, as numpy's logaddexp(0, x).
    "softplus": "(max({0}, 0) + log1p(exp(-abs({0}))))",
}
_NAMES = {id(entry[4]): name for name, entry in recurrent.ACTIVATIONS.items()}

Form = tuple[str, ...]


def activation_forms(op: str, attrs: dict[str, Any]) -> list[list[tuple[str, float, float]]]:
    """Per direction, (name, alpha, beta) of each activation, resolved as the reference does."""
    resolved = recurrent.activations(recurrent.SPECS[op], attrs)
    return [[(_NAMES[id(f)], a, b) for f, a, b in funcs] for funcs in resolved]


# ------------------------------------------------------------------ kernel source
_JIT = "cache=True, error_model='numpy', fastmath={'contract'}, nogil=True"

_FRAME = """
@njit({jit})
def small_matmul(a, r, out):
    # out = a @ r for a few rows of a: two rows per pass over r, four of its rows at a time.
    # OpenBLAS packs all of r on every call, which costs 5-10x this for a handful of rows.
    rows, inner = a.shape
    cols = r.shape[1]
    for b in range(0, rows, 2):
        two = b + 1 < rows
        o0 = out[b]
        o1 = out[b + 1] if two else out[b]
        for j in range(cols):
            o0[j] = ZERO
            o1[j] = ZERO
        for k in range(0, inner - 3, 4):
            r0 = r[k]
            r1 = r[k + 1]
            r2 = r[k + 2]
            r3 = r[k + 3]
            p0, p1, p2, p3 = a[b, k], a[b, k + 1], a[b, k + 2], a[b, k + 3]
            if two:
                q0, q1, q2, q3 = a[b + 1, k], a[b + 1, k + 1], a[b + 1, k + 2], a[b + 1, k + 3]
                for j in range(cols):
                    o0[j] += p0 * r0[j] + p1 * r1[j] + p2 * r2[j] + p3 * r3[j]
                    o1[j] += q0 * r0[j] + q1 * r1[j] + q2 * r2[j] + q3 * r3[j]
            else:
                for j in range(cols):
                    o0[j] += p0 * r0[j] + p1 * r1[j] + p2 * r2[j] + p3 * r3[j]
        for k in range(inner - inner % 4, inner):
            rk = r[k]
            p0 = a[b, k]
            q0 = a[b + 1, k] if two else ZERO
            for j in range(cols):
                o0[j] += p0 * rk[j]
            if two:
                for j in range(cols):
                    o1[j] += q0 * rk[j]


@njit({jit})
def matmul(a, r, out):
{matmul}


@njit({jit})
def kernel(x, wt, bias, rt, rt2, rbh, p, h0, c0, lengths, y, yh, yc, gx, h, c, g1, g2, rh,
           seq, batch, layout, reverse, project, has_y, has_yh, has_yc, d0, d1, lim, tied):
    for b in range(batch):
        if lengths[b] < 0 or lengths[b] > seq:
            return b
    if project:
        matmul(x, wt, gx)
    hidden = h.shape[1]
    gates = {gates} * hidden
    for d in range(d0, d1):
        rev = reverse or d == 1
        base = d * gates
        for b in range(batch):
            hs = h0[d, b] if layout == 0 else h0[b, d]
            cs = c0[d, b] if layout == 0 else c0[b, d]
            for j in range(hidden):
                h[b, j] = hs[j]
                c[b, j] = cs[j]
        rd = rt[d]
        for s in range(seq):
            t = seq - 1 - s if rev else s
{cell}
{write_y}
        for b in range(batch):
            if has_yh:
                hr = yh[d, b] if layout == 0 else yh[b, d]
                for j in range(hidden):
                    hr[j] = h[b, j]
            if has_yc:
                cr = yc[d, b] if layout == 0 else yc[b, d]
                for j in range(hidden):
                    cr[j] = c[b, j]
    return -1
"""

_STEPS = """
@njit({jit})
def load_x(x, hx, d, t, seq, layout):
    # Step t's input rows into the columns after the hidden state: one product per step then
    # computes both the recurrent and the input term.
    batch, hidden = hx.shape[1], hx.shape[2] - x.shape[1] - 1
    for b in range(batch):
        row = t * batch + b if layout == 0 else b * seq + t
        xr = x[row]
        hr = hx[d, b, hidden : hidden + xr.shape[0]]
        for k in range(xr.shape[0]):
            hr[k] = xr[k]


@njit({jit})
def begin(x, h0, c0, lengths, hx, cs, seq, layout, reverse, d0, d1):
    # The large-batch path: Python runs each step's product [h x_t 1] @ [R^T; W^T; bias] on
    # numpy's BLAS (a third faster than Numba's np.dot) and these kernels around it.
    batch, hidden = cs.shape[1], cs.shape[2]
    for b in range(batch):
        if lengths[b] < 0 or lengths[b] > seq:
            return b
    for d in range(d0, d1):
        for b in range(batch):
            h0r = h0[d, b] if layout == 0 else h0[b, d]
            c0r = c0[d, b] if layout == 0 else c0[b, d]
            hr = hx[d, b, :hidden]
            for j in range(hidden):
                hr[j] = h0r[j]
                cs[d, b, j] = c0r[j]
            hx[d, b, hx.shape[2] - 1] = ONE
        load_x(x, hx, d, seq - 1 if reverse or d == 1 else 0, seq, layout)
    return -1


@njit({jit})
def cell_step(x, bias, p, lengths, y, hx, cs, gs, s, seq, layout, reverse, has_y, d0, d1, lim,
              tied):
    batch, hidden = cs.shape[1], cs.shape[2]
    gates = {gates} * hidden
    for d in range(d0, d1):
        rev = reverse or d == 1
        t = seq - 1 - s if rev else s
        c = cs[d]
        g1 = gs[d]
{step_cell}
{step_y}
        if s + 1 < seq:
            load_x(x, hx, d, seq - 2 - s if rev else s + 1, seq, layout)


@njit({jit})
def end(yh, yc, hx, cs, layout, has_yh, has_yc, d0, d1):
    hidden = cs.shape[2]
    for d in range(d0, d1):
        for b in range(cs.shape[1]):
            if has_yh:
                hr = yh[d, b] if layout == 0 else yh[b, d]
                hr[:] = hx[d, b, :hidden]
            if has_yc:
                cr = yc[d, b] if layout == 0 else yc[b, d]
                cr[:] = cs[d, b]
"""
_STEP_Y = """if has_y:
    for b in range(batch):
        yr = y[t, d, b] if layout == 0 else y[b, t, d]
        if t < lengths[b]:
            hb = hx[d, b, :hidden]
            for j in range(hidden):
                yr[j] = hb[j]
        else:
            for j in range(hidden):
                yr[j] = ZERO
"""
_WRITE_Y = """if has_y:
    for b in range(batch):
        yr = y[t, d, b] if layout == 0 else y[b, t, d]
        if t < lengths[b]:
            for j in range(hidden):
                yr[j] = h[b, j]
        else:
            for j in range(hidden):
                yr[j] = ZERO
"""

# Gate pre-activation k (0-based) of hidden unit j: input projection + recurrent term + bias.
_ROW = "row = t * batch + b if layout == 0 else b * seq + t"

_SUM = f"""
            for b in range(batch):
                if t >= lengths[b]:
                    continue
                {_ROW}
                g = g1[b]
                gxr = gx[row]
                bd = bias[d]
                for k in range(gates):
                    g[k] += gxr[base + k] + bd[k]
"""
# One loop per gate over contiguous slices, each writing one array, as in the stepped path's
# cell (_LSTM_STEP): the one fused loop over h, c, g and p needed more alias checks than LLVM
# makes and ran scalar (a 256-unit bidirectional layer of 80 steps: ~20 us a step, the
# product 9 of them; onnxruntime 13).
_LSTM_CELL = """
pd = p[d]
pi, po, pf = pd[:hidden], pd[hidden : 2 * hidden], pd[2 * hidden :]
gi, go = g[:hidden], g[hidden : 2 * hidden]
gf, gc = g[2 * hidden : 3 * hidden], g[3 * hidden :]
cb = c[b]
hb = h[b]
if lim == np.inf:
{unclipped}
else:
{clipped}
"""
# GRU's gates as loops over contiguous slices, each writing one array (see _LSTM_CELL).
_GRU = f"""
            matmul(h, rd, g1)
            {{second_dot_h}}
            bd = bias[d]
            for b in range(batch):
                {_ROW}
                gxr = gx[row, base : base + 3 * hidden]
                g1b = g1[b]
                zb = c[b]
                rb = rh[b]
                hb = h[b]
                for j in range(hidden):
                    zb[j] = act0(clip(gxr[j] + g1b[j] + bd[j], lim))
                for j in range(hidden):
                    rb[j] = act0(clip(gxr[hidden + j] + g1b[hidden + j] + bd[hidden + j], lim))
                {{reset}}
            {{second_dot_rh}}
            rbd = rbh[d]
            for b in range(batch):
                if t >= lengths[b]:
                    continue
                {_ROW}
                gxc = gx[row, base + 2 * hidden : base + 3 * hidden]
                bc = bd[2 * hidden :]
                g2b = g2[b]
                zb = c[b]
                rb = rh[b]
                hb = h[b]
                for j in range(hidden):
                    hc = act1(clip({{candidate}}, lim))
                    hb[j] = (ONE - zb[j]) * hc + zb[j] * hb[j]
"""
_GRU_PLAIN = {
    "second_dot_h": "pass",
    "reset": "for j in range(hidden):\n                    rb[j] = rb[j] * hb[j]",
    "second_dot_rh": "matmul(rh, rt2[d], g2)",
    "candidate": "gxc[j] + g2b[j] + bc[j]",
}
_GRU_LINEAR = {
    "second_dot_h": "matmul(h, rt2[d], g2)",
    "reset": "pass",
    "second_dot_rh": "pass",
    "candidate": "gxc[j] + bc[j] + rb[j] * (g2b[j] + rbd[j])",
}

# The stepped path's LSTM cell: one loop per gate over contiguous slices, each writing one
# array, which LLVM vectorizes with fewer alias checks (80 us a step of 48 x 224 against 120
# for the fused loop of _LSTM). Without a clip limit the loops skip the clamps, which cost as
# much as a third of the sigmoids around them. The product left the input term and the biases
# in g already.
_LSTM_STEP = """
pd = p[d]
pi, po, pf = pd[:hidden], pd[hidden : 2 * hidden], pd[2 * hidden :]
for b in range(batch):
    if t >= lengths[b]:
        continue
    g = g1[b]
    gi, go = g[:hidden], g[hidden : 2 * hidden]
    gf, gc = g[2 * hidden : 3 * hidden], g[3 * hidden :]
    cb = c[b]
    hb = hx[d, b, :hidden]
    if lim == np.inf:
{unclipped}
    else:
{clipped}
"""
_LSTM_GATES = """for j in range(hidden):
    gi[j] = act0(clip(gi[j] + pi[j] * cb[j], lim))
if tied:
    for j in range(hidden):
        gf[j] = ONE - gi[j]
else:
    for j in range(hidden):
        gf[j] = act0(clip(gf[j] + pf[j] * cb[j], lim))
for j in range(hidden):
    cb[j] = gf[j] * cb[j] + gi[j] * act1(clip(gc[j], lim))
for j in range(hidden):
    hb[j] = act0(clip(go[j] + po[j] * cb[j], lim)) * act2(cb[j])
"""
_RNN_STEP = """
for b in range(batch):
    if t >= lengths[b]:
        continue
    g = g1[b]
    hb = hx[d, b, :hidden]
    for j in range(hidden):
        hb[j] = act0(clip(g[j], lim))
"""


def _lstm_gates(template: str) -> str:
    def gates(clip: str) -> str:
        return textwrap.indent(_LSTM_GATES.replace("clip(", clip), " " * 8).rstrip("\n")

    return template.format(unclipped=gates("unclipped("), clipped=gates("clip("))


def _lstm_step() -> str:
    return _lstm_gates(_LSTM_STEP)


# The single kernel's LSTM: the sums of _SUM, then the cell's gate loops (_LSTM_CELL).
_LSTM = _SUM + textwrap.indent(_lstm_gates(_LSTM_CELL), " " * 16)


_RNN = (
    _SUM
    + """                for j in range(hidden):
                    h[b, j] = act0(clip(g[j], lim))
"""
)


def _activation_code(
    index: int, name: str, alpha: float, beta: float, dtype: np.dtype
) -> tuple[str, dict[str, float]]:
    expr = ACTIVATION_EXPRS[name].replace("{a}", f"({alpha!r})").replace("{b}", f"({beta!r})")
    code, constants = codegen.translate(expr, dtype)
    prefix = f"A{index}_"
    code = re.sub(r"\bC(\d+)\b", lambda m: f"{prefix}{m.group(1)}", code)
    return code, {f"{prefix}{k[1:]}": v for k, v in constants.items()}


def kernel_source(
    op: str,
    acts: list[tuple[str, float, float]],
    dtype: np.dtype,
    linear_before_reset: bool = False,
    blas: bool = False,
) -> str:
    """A module defining ``kernel(...)``: directions ``d0 <= d < d1`` of one ``op`` layer.

    ``blas``: products of more than :data:`SMALL_ROWS` rows may occur (a larger batch) and go to
    BLAS; without it the kernel has no ``np.dot``, which takes a third of its compile time.

    ``acts``: the (name, alpha, beta) activations of the directions the kernel runs. The clip
    limit (``lim``, inf for none), LSTM's peepholes (zeros for none) and input_forget (``tied``)
    are run-time arguments, so that layers differing only in them share one compiled kernel.
    """
    constants: dict[str, float] = {}
    functions = []
    # Helpers are left to LLVM to inline (as fast, and seconds quicker to compile than Numba's
    # inline='always'); an activation repeated (LSTM's two tanh) is compiled once.
    helper = "@njit(cache=True, error_model='numpy', fastmath={'contract'})"
    for k, form in enumerate(acts):
        if form in acts[:k]:
            functions += ["", f"act{k} = act{acts.index(form)}"]
            continue
        code, consts = _activation_code(k, *form, dtype)
        constants.update(consts)
        functions += ["", "", helper, f"def act{k}(x0):", f"    return {code}"]
    functions += ["", "", helper]
    # NaN stays NaN, as in np.clip; an infinite limit leaves every value as it is.
    functions += ["def clip(x0, lim):", "    return fmin(fmax(x0, -lim), lim)"]
    functions += ["", "", helper, "def unclipped(x0, lim):", "    return x0"]
    if op == "GRU":
        cell = _GRU.format(**(_GRU_LINEAR if linear_before_reset else _GRU_PLAIN))
    else:
        cell = _LSTM if op == "LSTM" else _RNN
        step_cell = _lstm_step() if op == "LSTM" else _RNN_STEP
        steps = _STEPS.format(
            jit=_JIT,
            gates=recurrent.SPECS[op].gates,
            step_cell=textwrap.indent(step_cell, " " * 8).rstrip("\n"),
            step_y=textwrap.indent(_STEP_Y, " " * 8).rstrip("\n"),
        )
        cell = "            matmul(h, rd, g1)" + cell
    gates = recurrent.SPECS[op].gates
    comment = f"{op} layer: {acts}, linear_before_reset {linear_before_reset}, blas {blas}"
    lines = codegen.module_header([comment], f"np.{dtype}", constants)
    lines.append(f"SMALL_ROWS = {SMALL_ROWS}")
    matmul = "    small_matmul(a, r, out)"
    if blas:
        matmul = (
            "    if a.shape[0] <= SMALL_ROWS:\n        small_matmul(a, r, out)\n"
            "    else:\n        np.dot(a, r, out)"
        )
    write_y = textwrap.indent(_WRITE_Y, " " * 12).rstrip("\n")
    body = _FRAME.format(
        jit=_JIT, gates=gates, cell=cell.rstrip("\n"), matmul=matmul, write_y=write_y
    )
    if op != "GRU" and blas:
        body += "\n" + steps
    return "\n".join(lines + functions) + "\n\n" + body


__all__ = ["ACTIVATION_EXPRS", "SMALL_ROWS", "activation_forms", "kernel_source"]

"""CPU steps for the recurrent layers LSTM, GRU and RNN: one generated Numba kernel per layer.

The numpy reference (:mod:`eqsat.ops.recurrent`) spends ~150 us on a single LSTM step of hidden
size 128, almost all of it in numpy call overhead. Here a whole layer is one call of a kernel
generated for its form (op, activations with their alpha/beta, GRU's linear_before_reset,
dtype) and cached on disk like the elementwise kernels:

* the input projection of every step and direction is one product ``X (steps*batch, I) @ W^T``;
* each step is one small product of the hidden state with ``R^T`` (GRU without
  linear_before_reset: two, since its candidate gate multiplies the reset gate in before the
  matmul) and one fused loop over the gates, whose activations are inlined from the scalar
  language of :mod:`eqsat.lowering.codegen` (float32 uses its fast vectorizable exp/tanh);
* products of a few rows (:data:`SMALL_ROWS`) run on a loop of the kernel, larger ones on BLAS
  (the input projection on numpy's, whose threads the executable pins);
* LSTM and RNN with a larger batch step in Python instead: each step's hidden products on
  numpy's BLAS (a third faster than Numba's ``np.dot``, which calls scipy's), then one kernel
  call for the gates of every direction, LSTM's as one vectorized loop per gate (oskut_scads'
  48 x 224 layer: 32 ms to 18);
* ``sequence_lens``, initial states, both layouts and all directions follow the reference: a
  batch row past its length keeps its state and gets zero ``Y`` rows, the reverse direction
  starts at its last valid step.

Weights are transposed, and the two biases added, once at compile time when they are constants
(per run otherwise). float16 layers compute in float32 and round once at the end, as the
reference does. Empty layers (a zero dimension) are left to the reference.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import numba
import numpy as np
from eqsat.lowering import codegen, kernel_cache
from eqsat.lowering.cpu import Env, Lowering, Step, StepFn
from eqsat.lowering.memory import Usage

from eqsat.errors import InputError
from eqsat.ir import Node, Value
from eqsat.ops import recurrent

OPS = frozenset(recurrent.SPECS)
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
def begin(h0, c0, lengths, hs, cs, seq, layout, d0, d1):
    # The large-batch path: Python runs each step's hidden product on numpy's BLAS (packing R^T
    # once per call, a third faster than Numba's np.dot) and these kernels around it.
    batch, hidden = hs.shape[1], hs.shape[2]
    for b in range(batch):
        if lengths[b] < 0 or lengths[b] > seq:
            return b
    for d in range(d0, d1):
        for b in range(batch):
            h0r = h0[d, b] if layout == 0 else h0[b, d]
            c0r = c0[d, b] if layout == 0 else c0[b, d]
            for j in range(hidden):
                hs[d, b, j] = h0r[j]
                cs[d, b, j] = c0r[j]
    return -1


@njit({jit})
def cell_step(gx, bias, p, lengths, y, hs, cs, gs, s, seq, layout, reverse, has_y, d0, d1, lim,
              tied):
    batch, hidden = hs.shape[1], hs.shape[2]
    gates = {gates} * hidden
    for d in range(d0, d1):
        rev = reverse or d == 1
        base = d * gates
        t = seq - 1 - s if rev else s
        h = hs[d]
        c = cs[d]
        g1 = gs[d]
{step_cell}
{step_y}


@njit({jit})
def end(yh, yc, hs, cs, layout, has_yh, has_yc, d0, d1):
    for d in range(d0, d1):
        for b in range(hs.shape[1]):
            if has_yh:
                hr = yh[d, b] if layout == 0 else yh[b, d]
                hr[:] = hs[d, b]
            if has_yc:
                cr = yc[d, b] if layout == 0 else yc[b, d]
                cr[:] = cs[d, b]
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
_PRE = "gx[row, base + {k} * hidden + j] + g1[b, {k} * hidden + j] + bias[d, {k} * hidden + j]"
_ROW = "row = t * batch + b if layout == 0 else b * seq + t"

_SUM = """
            for b in range(batch):
                if t >= lengths[b]:
                    continue
                row = t * batch + b if layout == 0 else b * seq + t
                g = g1[b]
                gxr = gx[row]
                bd = bias[d]
                for k in range(gates):
                    g[k] += gxr[base + k] + bd[k]
"""
_LSTM = (
    _SUM
    + """                for j in range(hidden):
                    cp = c[b, j]
                    i = act0(clip(g[j] + p[d, j] * cp, lim))
                    if tied:
                        f = ONE - i
                    else:
                        f = act0(clip(g[2 * hidden + j] + p[d, 2 * hidden + j] * cp, lim))
                    cn = f * cp + i * act1(clip(g[3 * hidden + j], lim))
                    o = act0(clip(g[hidden + j] + p[d, hidden + j] * cn, lim))
                    h[b, j] = o * act2(cn)
                    c[b, j] = cn
"""
)

_GRU = f"""
            matmul(h, rd, g1)
            {{second_dot_h}}
            for b in range(batch):
                {_ROW}
                for j in range(hidden):
                    c[b, j] = act0(clip({_PRE.format(k=0)}, lim))
                    r = act0(clip({_PRE.format(k=1)}, lim))
                    {{reset}}
            {{second_dot_rh}}
            for b in range(batch):
                if t >= lengths[b]:
                    continue
                {_ROW}
                for j in range(hidden):
                    z = c[b, j]
                    hc = act1(clip({{candidate}}, lim))
                    h[b, j] = (ONE - z) * hc + z * h[b, j]
"""
_GRU_PLAIN = {
    "second_dot_h": "pass",
    "reset": "rh[b, j] = r * h[b, j]",
    "second_dot_rh": "matmul(rh, rt2[d], g2)",
    "candidate": "gx[row, base + 2 * hidden + j] + g2[b, j] + bias[d, 2 * hidden + j]",
}
_GRU_LINEAR = {
    "second_dot_h": "matmul(h, rt2[d], g2)",
    "reset": "rh[b, j] = r",
    "second_dot_rh": "pass",
    "candidate": "gx[row, base + 2 * hidden + j] + bias[d, 2 * hidden + j] "
    "+ rh[b, j] * (g2[b, j] + rbh[d, j])",
}

# The stepped path's LSTM cell: one loop per gate over contiguous slices, each writing one
# array, which LLVM vectorizes with fewer alias checks (80 us a step of 48 x 224 against 120
# for the fused loop of _LSTM). Without a clip limit the loops skip the clamps, which cost as
# much as a third of the sigmoids around them.
_LSTM_STEP = """
bd = bias[d]
pd = p[d]
pi, po, pf = pd[:hidden], pd[hidden : 2 * hidden], pd[2 * hidden :]
for b in range(batch):
    if t >= lengths[b]:
        continue
    row = t * batch + b if layout == 0 else b * seq + t
    g = g1[b]
    gxr = gx[row, base : base + gates]
    for k in range(gates):
        g[k] += gxr[k] + bd[k]
    gi, go = g[:hidden], g[hidden : 2 * hidden]
    gf, gc = g[2 * hidden : 3 * hidden], g[3 * hidden :]
    cb = c[b]
    hb = h[b]
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


def _lstm_step() -> str:
    def gates(clip: str) -> str:
        return textwrap.indent(_LSTM_GATES.replace("clip(", clip), " " * 8).rstrip("\n")

    return _LSTM_STEP.format(unclipped=gates("unclipped("), clipped=gates("clip("))


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
        steps = _STEPS.format(
            jit=_JIT,
            gates=recurrent.SPECS[op].gates,
            step_cell=textwrap.indent(
                _lstm_step() if op == "LSTM" else textwrap.dedent(cell), " " * 8
            ).rstrip("\n"),
            step_y=textwrap.indent(_WRITE_Y, " " * 8).rstrip("\n"),
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


# ------------------------------------------------------------------ weights
def prepare_weights(
    op: str,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    p: np.ndarray | None,
    work: np.dtype,
    linear_before_reset: bool,
) -> tuple[np.ndarray, ...]:
    """(wt, bias, rt, rt2, rbh, p) as the kernel takes them, from ONNX's W, R, B and P."""
    num_dir, gates, size = w.shape
    hidden = r.shape[2]
    w = np.asarray(w, work)
    r = np.asarray(r, work)
    # Copies throughout: writable arrays, so that every layer's kernel has the same signature.
    wt = np.array(w.transpose(2, 0, 1).reshape(size, num_dir * gates), order="C")
    if b is None:
        wb = rb = np.zeros((num_dir, gates), work)
    else:
        b = np.asarray(b, work)
        wb, rb = b[:, :gates], b[:, gates:]
    bias = np.array(wb + rb, order="C")
    rbh = np.zeros((num_dir, hidden), work)
    if op == "GRU":
        rt = np.array(r[:, : 2 * hidden].transpose(0, 2, 1), order="C")
        rt2 = np.array(r[:, 2 * hidden :].transpose(0, 2, 1), order="C")
        if linear_before_reset:
            # The candidate's recurrent bias sits inside the reset product: kept apart.
            bias[:, 2 * hidden :] = wb[:, 2 * hidden :]
            rbh = np.array(rb[:, 2 * hidden :], order="C")
    else:
        rt = np.array(r.transpose(0, 2, 1), order="C")
        rt2 = np.zeros((1, 1, 1), work)
    peep = np.zeros((num_dir, 3 * hidden), work) if p is None else np.array(p, work, order="C")
    return wt, bias, rt, rt2, rbh, peep


# ------------------------------------------------------------------ step
def build_step(lowering: Lowering, node: Node) -> Step | None:
    if node.op not in OPS:
        return None
    spec = recurrent.SPECS[node.op]
    attrs = node.attrs
    x = node.inputs[0]
    w, r = node.inputs[1], node.inputs[2]
    assert x is not None and w is not None and r is not None
    if x.const is not None or min(*x.shape, *w.shape, *r.shape) == 0:
        return None
    return _layer_step(lowering, node, spec, activation_forms(node.op, attrs))


def _layer_step(
    lowering: Lowering, node: Node, spec: Any, forms: list[list[tuple[str, float, float]]]
) -> Step:
    attrs = node.attrs
    op = node.op
    get = {name: spec.input(node.inputs, name) for name in spec.inputs}
    x: Value = get["X"]
    w: Value = get["W"]
    r: Value = get["R"]
    dtype = x.dtype
    work = np.dtype(np.float32) if dtype == np.float16 else dtype
    layout = int(attrs["layout"])
    num_dir, gates, size = w.shape
    hidden = r.shape[2]
    seq, batch = (x.shape[0], x.shape[1]) if layout == 0 else (x.shape[1], x.shape[0])
    rows = seq * batch
    lbr = bool(attrs.get("linear_before_reset", 0))
    lim = work.type(np.inf if attrs["clip"] is None else float(attrs["clip"]))
    tied = bool(attrs.get("input_forget", 0))
    # One kernel for all directions, or one per direction when their activations differ.
    groups = (
        [(forms[0], 0, num_dir)]
        if forms.count(forms[0]) == num_dir
        else [(acts, d, d + 1) for d, acts in enumerate(forms)]
    )
    kernels = []
    modules = []
    for acts, d0, d1 in groups:
        source = kernel_source(op, acts, work, lbr, blas=batch > SMALL_ROWS)
        module = kernel_cache.load(source)
        kernels.append((module.kernel, d0, d1))
        modules.append((module, d0, d1))
        lowering.kernels += 1
    # LSTM and RNN with a large batch step in Python around numpy's BLAS (see _STEPS).
    stepped = op != "GRU" and batch > SMALL_ROWS

    weight_names = ("W", "R", "B", "P")
    weights: list[Value | None] = [get.get(n) for n in weight_names]
    dynamic_weights = [v for v in weights if v is not None and v.const is None]

    def prepare(arrays: list[np.ndarray | None]) -> tuple[np.ndarray, ...]:
        wa, ra, ba, pa = arrays
        assert wa is not None and ra is not None
        return prepare_weights(op, wa, ra, ba, pa, work, lbr)

    fixed_weights = (
        None if dynamic_weights else prepare([None if v is None else v.const for v in weights])
    )
    weight_slots = [None if v is None or v.const is not None else lowering.slot(v) for v in weights]

    state = (num_dir, batch, hidden) if layout == 0 else (batch, num_dir, hidden)
    zeros_state = np.zeros(state, work)
    # Inputs fetched per run unless constant: (kernel argument, value, shape, dtype).
    inputs: list[tuple[int, Value | None, tuple[int, ...], np.dtype, np.ndarray]] = [
        (0, x, (rows, size), work, np.empty(0, work)),
        (7, get["initial_h"], state, work, zeros_state),
        (8, get.get("initial_c"), state, work, zeros_state),
        (9, get["sequence_lens"], (batch,), np.dtype(np.int64), np.full(batch, seq, np.int64)),
    ]
    outputs = list(node.outputs) + [None] * (3 - len(node.outputs))
    out_shapes = [
        (seq, num_dir, batch, hidden) if layout == 0 else (batch, seq, num_dir, hidden),
        state,
        state,
    ]
    gate_cols = 2 * hidden if op == "GRU" else gates
    scratch = [
        np.empty((rows, num_dir * gates), work),  # gx
        np.empty((batch, hidden), work),  # h
        np.empty((batch, hidden), work),  # c (GRU: the update gate)
        np.empty((batch, gate_cols), work),  # g1
        np.empty((batch, hidden), work),  # g2
        np.empty((batch, hidden), work),  # rh
    ]
    steps_scratch = [
        np.empty((num_dir, batch, hidden), work),  # h
        np.empty((num_dir, batch, hidden), work),  # c
        np.empty((num_dir, batch, gates), work),  # the gates' recurrent terms
    ]
    project = rows <= SMALL_ROWS
    reverse = attrs["direction"] == "reverse"
    half = dtype != work
    x32 = np.empty((rows, size), work) if half else None
    out32 = [
        None if v is None or not half else np.empty(shape, work)
        for v, shape in zip(outputs, out_shapes, strict=True)
    ]
    dummies = [np.zeros((1,) * len(shape), work) for shape in out_shapes]
    flags = tuple(v is not None for v in outputs)
    calls = tuple(
        (kernel, (seq, batch, layout, reverse, project and k == 0, *flags, d0, d1, lim, tied))
        for k, (kernel, d0, d1) in enumerate(kernels)
    )

    in_slots = [(k, lowering.slot(v), shape, dt) for k, v, shape, dt, _ in inputs if _dyn(v)]
    out_slots = [None if v is None else lowering.slot(v) for v in outputs]
    reads = [s for _, s, _, _ in in_slots] + [s for s in weight_slots if s is not None]
    writes = [s for s in out_slots if s is not None]
    name = node.name

    def make_run(arrays: dict[int, np.ndarray]) -> StepFn:
        base: list[Any] = [None] * 19
        for k, v, shape, dt, default in inputs:
            if v is None:
                base[k] = default
            elif v.const is not None:
                base[k] = np.array(v.const, dt, order="C").reshape(shape)
        if fixed_weights is not None:
            base[1], base[2], base[3], base[4], base[5], base[6] = fixed_weights
        base[13:19] = scratch
        fetch_in = []
        for k, slot, shape, dt in in_slots:
            if k == 0 and half:
                fetch_in.append((k, slot, shape, None))
                base[k] = x32
            elif slot in arrays and arrays[slot].dtype == dt:
                base[k] = arrays[slot].reshape(shape)  # a planned buffer: the same every run
            else:
                fetch_in.append((k, slot, shape, dt))
        fetch_out = []
        copy_back = []
        for i, slot in enumerate(out_slots):
            if slot is None:
                base[10 + i] = dummies[i]
            elif half:
                base[10 + i] = out32[i]
                copy_back.append((slot, out32[i]))
            elif slot in arrays:
                base[10 + i] = arrays[slot]
            else:
                fetch_out.append((10 + i, slot))
        base_t = tuple(base)
        # Compile now (or load from the cache) rather than on the first run: the arguments a run
        # fetches are C-contiguous, writable arrays of these shapes and dtypes.
        sample = list(base_t)
        for k, _, shape, dt in fetch_in:
            sample[k] = np.empty(shape, work if dt is None else dt)
        for k, _ in fetch_out:
            sample[k] = np.empty(out_shapes[k - 10], work)
        if fixed_weights is None:
            sample[1:7] = prepare([None if v is None else np.zeros(v.shape, work) for v in weights])
        if stepped:
            _compile_steps(modules, sample, steps_scratch, seq, layout, lim, tied)
        else:
            for kernel, tail in calls:
                kernel.compile(tuple(numba.typeof(a) for a in (*sample, *tail)))
        gx = scratch[0]
        ascontiguous, matmul, copyto = np.ascontiguousarray, np.matmul, np.copyto
        hs, cs, gs = steps_scratch
        has_y, has_yh, has_yc = flags
        dot = np.dot

        def run(env: Env) -> None:
            args = list(base_t)
            for k, slot, shape, dt in fetch_in:
                if dt is None:
                    copyto(x32, env[slot].reshape(shape))
                else:
                    args[k] = ascontiguous(env[slot], dt).reshape(shape)
            for k, slot in fetch_out:
                args[k] = env[slot]
            if fixed_weights is None:
                arrays_now = [
                    None if v is None else (v.const if s is None else env[s])
                    for v, s in zip(weights, weight_slots, strict=True)
                ]
                args[1:7] = prepare(arrays_now)
            if not project:
                matmul(args[0], args[1], out=gx)
            bad = -1
            if stepped:
                rt, lengths = args[3], args[9]
                for module, d0, d1 in modules:
                    begun = module.begin(args[7], args[8], lengths, hs, cs, seq, layout, d0, d1)
                    bad = max(bad, begun)
                if bad < 0:
                    step_args = (gx, args[2], args[6], lengths, args[10], hs, cs, gs)
                    for s in range(seq):
                        for d in range(num_dir):
                            dot(hs[d], rt[d], gs[d])
                        for module, d0, d1 in modules:
                            module.cell_step(
                                *step_args, s, seq, layout, reverse, has_y, d0, d1, lim, tied
                            )
                    for module, d0, d1 in modules:
                        module.end(args[11], args[12], hs, cs, layout, has_yh, has_yc, d0, d1)
            else:
                for kernel, tail in calls:
                    bad = max(bad, kernel(*args, *tail))
            if bad >= 0:
                lengths = args[9]
                raise InputError(
                    f"node {name!r} ({op}): sequence_lens {lengths.tolist()} must lie in [0, {seq}]"
                )
            for slot, result in copy_back:
                copyto(env[slot], result)

        return run

    unbound: list[StepFn] = []

    def run(env: Env) -> None:
        if not unbound:
            unbound.append(make_run({}))
        unbound[0](env)

    return Step(run, Usage(reads, writes, True), "kernel", node.name, make_run)


def _compile_steps(
    modules: list[tuple[Any, int, int]],
    sample: list[Any],
    scratch: list[np.ndarray],
    seq: int,
    layout: int,
    lim: Any,
    tied: bool,
) -> None:
    """Compile (or load) the stepped path's kernels for the arguments a run passes them."""
    hs, cs, gs = scratch
    typeof = numba.typeof
    for module, d0, d1 in modules:
        begin = (sample[7], sample[8], sample[9], hs, cs, seq, layout, d0, d1)
        module.begin.compile(tuple(typeof(a) for a in begin))
        step = (sample[13], sample[2], sample[6], sample[9], sample[10], hs, cs, gs, 0, seq)
        step += (layout, False, True, d0, d1, lim, tied)
        module.cell_step.compile(tuple(typeof(a) for a in step))
        end = (sample[11], sample[12], hs, cs, layout, True, True, d0, d1)
        module.end.compile(tuple(typeof(a) for a in end))


def _dyn(value: Value | None) -> bool:
    return value is not None and value.const is None


__all__ = ["OPS", "activation_forms", "build_step", "kernel_source", "prepare_weights"]

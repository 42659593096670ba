"""Generated window kernels: depthwise convs and max pools with the taps unrolled, and scatters.

A depthwise conv does a handful of multiply-adds per output, so it is bound by how well the inner
loop vectorizes. The generic kernel (taps in runtime loops, strides as variables) ran ~10x below
that. Here one kernel is generated per (kernel size, strides, dilations, padding, dtype,
epilogue), with the tap weights loaded into scalars and the taps written out. Each channel's
plane is copied into zero-bordered phase planes (one per stride phase, so that every tap reads
contiguous memory even at stride 2, and no tap needs a bounds check), flattened: output position
``oh*WQ + ow`` of a plane whose rows are WQ wide is ``epilogue(bias + sum of w_t * plane_t[p +
offset_t])``, one long loop over every position of the plane (the columns past a row's end are
computed and dropped), so that even a 7x7 plane fills whole vectors; rows are only as wide as the
border that the taps need on either side (:class:`_Taps`). Planes with wide output rows go row
by row instead, straight into the output. Kernels with more than :data:`PASS_TAPS` taps (5x5,
7x7) take several passes, so that a pass's weights fit in vector registers (all 49 spilled: two
loads per multiply-add). Against the earlier row-by-row kernel over one padded plane (strided
loads at stride 2, a short loop per output row of a small plane), MobileNet's depthwise convs
ran 1.5-5x faster. Scalar constant operands of the epilogue (ReLU6's bounds) are written into
the source as literals, and a per-channel constant it adds can be folded into the bias
(:func:`fold_channel_add`); an epilogue over tensors (a residual) is applied afterwards by the
caller.

The scatter of a ConvTranspose whose stride is its kernel is generated too, with the bias and
the epilogue applied as it stores (:func:`spread_source`).

MaxPool kernels are generated the same way, one per (kernel size, strides, dilations, padding,
dtype): the max is separable, so each plane is first reduced along its rows (each input row is
copied into a -inf-bordered row buffer, then every output column takes the max of its KW taps,
written out) into a (padded rows x output columns) buffer, then down its columns (the max of KH
whole rows, written out, over contiguous memory). Both passes are branch-free loops over an output
row that LLVM vectorizes; a NaN anywhere in a window propagates as with ``np.maximum``.
AveragePool kernels are the same two passes with sums over a zero border, the column pass
scaling by a precomputed table of inverse divisors (the generic kernel with the taps in runtime
loops ran ~25 ns per output: 0.4 ms for ppocrv6_rec's (3, 2) pool of 15K outputs).

Kernels go through :mod:`eqsat.lowering.kernel_cache`, so each form compiles once per machine.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import numpy as np
from eqsat.lowering import codegen, kernel_cache
from eqsat.lowering.cpu_tile_ir import VECTOR_BYTES

_OPERAND = re.compile(r"\{(\d+)\}")


def inline_scalars(epilogue: str, scalars: dict[int, float]) -> str:
    """``epilogue`` with operand ``{i}`` replaced by the literal ``scalars[i]`` where given."""

    def sub(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i not in scalars:
            return match.group(0)
        value = scalars[i]
        if np.isnan(value):
            return "nan"
        return f"({value!r})" if np.isfinite(value) else ("inf" if value > 0 else "(-inf)")

    return _OPERAND.sub(sub, epilogue)


def inline_and_renumber(epilogue: str, scalars: dict[int, float], numbers: dict[int, int]) -> str:
    """``epilogue`` with the operands in ``scalars`` written in as literals
    (:func:`inline_scalars`) and every other operand ``{i}`` renumbered ``{numbers[i]}``; the
    base ``{0}`` stays ``{0}``."""
    return _OPERAND.sub(
        lambda m: f"{{{numbers.get(int(m.group(1)), 0)}}}", inline_scalars(epilogue, scalars)
    )


def scalar_constants(extras: list[Any]) -> dict[int, float]:
    """Operand number (1-based, as the epilogue names them) -> value, for the epilogue operands
    that are one-element constants: what :func:`inline_scalars` writes in as literals."""
    return {
        i + 1: float(v.const.reshape(-1)[0])
        for i, v in enumerate(extras)
        if v.const is not None and v.const.size == 1
    }


# The most taps one pass over the plane multiplies in: a pass keeps its taps' weights in vector
# registers (all 49 of a 7x7 spilled, two loads per multiply-add: half the speed). AVX-512 has
# 32 of them: a 5x5 in one pass, a 7x7 in two (a Zen 5 core against 12: ConvNeXt's 7x7 on
# 192x28x28 213 -> 187 us, 96x56x56 289 -> 266; 5x5 on 72x28x28 46 -> 40; 49 spilled again).
PASS_TAPS = 25 if VECTOR_BYTES == 64 else 12
# Terms per independent partial sum of a pass (see _passes): 7-10% faster than one chain on
# MobileNet's depthwise convs on a Zen 1 core, where a 256-bit multiply-add is no faster than a
# multiply and an add; on cores with two FMA pipes the chain's latency costs more.
SUM_GROUP = 4
# Positions per channel are rounded up to this: whole iterations of LLVM's vector loop (8 lanes,
# unrolled 4x), so that no output runs in its scalar remainder (most of a 7x7 plane did).
_ROUND = 32
# Output rows at least this wide are computed row by row (see :func:`source`).
ROW_WISE = 64


def fold_channel_add(
    epilogue: str, operands: list[np.ndarray | None], bias: np.ndarray
) -> tuple[str, np.ndarray]:
    """``epilogue`` without its ``({0} + {k})`` (or ``({k} + {0})``) where operand ``k`` (1-based
    into ``operands``, the constants of the epilogue's operands, None where not constant) is one
    value per channel, shaped (1, C, 1, 1) or (C, 1, 1), and ``bias`` (C,) with it added.

    A conv's bias add after the fact (ppocr's depthwise convs: ``({0} + {1})``) then costs
    nothing; without it the epilogue's tensor operand made the add a pass of its own. Returns
    the epilogue and bias unchanged when there is nothing to fold.
    """
    if len(_OPERAND_ZERO.findall(epilogue)) != 1:
        return epilogue, bias
    for pattern in (r"\(\{0\} \+ \{(\d+)\}\)", r"\(\{(\d+)\} \+ \{0\}\)"):
        match = re.search(pattern, epilogue)
        if match is None or int(match.group(1)) < 1 or int(match.group(1)) > len(operands):
            continue
        const = operands[int(match.group(1)) - 1]
        c_ = bias.shape[0]
        if const is None or const.size != c_ or const.ndim > 4:
            continue
        channel = const.shape[-3:] == (c_, 1, 1) if const.ndim >= 3 else c_ == 1
        if not channel:
            continue
        folded = bias + np.asarray(const, bias.dtype).reshape(c_)
        return epilogue[: match.start()] + "{0}" + epilogue[match.end() :], folded
    return epilogue, bias


_OPERAND_ZERO = re.compile(r"\{0\}")


class _Taps:
    """Where each tap of a depthwise kernel reads: with strides (SH, SW) the padded plane is
    split into SH*SW phase planes (phase (a, b) holds ``pad[a::SH, b::SW]``), and tap (i, j)
    reads phase ((i*DH) % SH, (j*DW) % SW) at row offset (i*DH) // SH, column offset
    (j*DW) // SW from the output position: a constant shift in the flattened phase plane."""

    def __init__(
        self,
        kernel: tuple[int, int],
        strides: tuple[int, int],
        dilations: tuple[int, int],
        pads: tuple[int, int],
    ):
        self.kernel, self.strides, self.pads = kernel, strides, pads
        (kh_, kw_), (sh, sw), (dh, dw) = kernel, strides, dilations
        self.rows = [((i * dh) % sh, (i * dh) // sh) for i in range(kh_)]  # (phase, offset)
        self.cols = [((j * dw) % sw, (j * dw) // sw) for j in range(kw_)]

    def layout(self) -> list[str]:
        """Statements (Python and Numba alike) that set, from ``h_, w_, oh_, ow_``: ``wq`` and
        ``ps`` the row stride and size of a flattened phase plane, ``np_`` the positions
        computed per channel (``oh*wq + ow``, rounded up to :data:`_ROUND`) and ``total`` the
        scratch: ``np_`` accumulators, the phase planes, then ``np_`` zeros that the rounded
        positions may read past the last plane.

        A phase row is only as wide as its data and its reads need: a read past the row's end
        wraps into the next row's left border, which is zero as long as the read stays short of
        that row's first data column (so a "same" conv stores one border column per row, not
        two). Rows get one more at the bottom for the reads that wrap off the last one.
        """
        (sh, sw), (ph, pw) = self.strides, self.pads
        lines = ["wq = 1", "hq = 1"]
        for axis, count, size, pad, taps in (
            ("w", sw, "w_", pw, self.cols),
            ("h", sh, "h_", ph, self.rows),
        ):
            for b in range(count):
                lo = -((b - pad) // count)  # first phase index that holds data
                hi = f"({pad - b} + {size} - 1) // {count}"  # last one
                reach = max((q for phase, q in taps if phase == b), default=None)
                extent = "o" + size
                if axis == "w":
                    lines.append(f"if {hi} >= {lo}:")
                    lines.append(f"    wq = max(wq, {hi} + 1)")
                    if reach is not None:
                        lines.append(f"    wq = max(wq, {extent} + {reach - lo})")
                else:
                    lines.append(f"hq = max(hq, {hi} + 1)")
                    if reach is not None:
                        lines.append(f"hq = max(hq, {extent} + {reach + 1})")
        lines += [
            "ps = hq * wq",
            f"np_ = ((oh_ - 1) * wq + ow_ + {_ROUND - 1}) // {_ROUND} * {_ROUND}",
            f"total = np_ + {sh * sw} * ps + np_",
        ]
        return lines

    def passes(self) -> list[list[tuple[int, int]]]:
        """The taps (i, j) in row-major order, cut into passes of at most :data:`PASS_TAPS`."""
        taps = [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]
        count = -(-len(taps) // PASS_TAPS)
        size = -(-len(taps) // count)
        return [taps[k : k + size] for k in range(0, len(taps), size)]


def _chunk(width: int, at: str) -> list[str]:
    """Lines copying ``src[at:at + width]`` to ``dst``: all loads first, so that LLVM's SLP
    vectorizer makes them one vector load and store (it may not reorder a load past a store to
    an array that could alias)."""
    lines = ["    s = src[" + at + " :]", "    d = dst[" + at + " :]"]
    lines += [f"    t{t} = s[{t}]" for t in range(width)]
    return lines + [f"    d[{t}] = t{t}" for t in range(width)]


# ``copy(src, dst, n)``: the rows copied in and out are often a few to a few dozen elements, too
# short for the loop vectorizer (it wants 32), so those go as 8- or 4-wide chunks, the last one
# overlapping its predecessor.
_COPY = [
    "@njit(cache=True, error_model='numpy', nogil=True, inline='always')",
    "def copy8(src, dst, at):",
    *_chunk(8, "at"),
    "",
    "",
    "@njit(cache=True, error_model='numpy', nogil=True, inline='always')",
    "def copy4(src, dst, at):",
    *_chunk(4, "at"),
    "",
    "",
    "@njit(cache=True, error_model='numpy', nogil=True, inline='always')",
    "def copy(src, dst, n):",
    "    if n >= 32:",
    "        for g in range(n):",
    "            dst[g] = src[g]",
    "    elif n >= 8:",
    "        for g in range(0, n - 8, 8):",
    "            copy8(src, dst, g)",
    "        copy8(src, dst, n - 8)",
    "    elif n >= 4:",
    "        copy4(src, dst, 0)",
    "        copy4(src, dst, n - 4)",
    "    else:",
    "        for g in range(n):",
    "            dst[g] = src[g]",
]


def _passes(taps: _Taps, code: str) -> list[str]:
    """``run(f, acc, start, count, w, bias, wq, ps)``: every pass over ``acc[:count]``, the
    positions from ``start`` in the flattened phase planes (the whole plane's, or one output
    row's); the last pass applies the epilogue ``code``."""
    sw, kw_ = taps.strides[1], taps.kernel[1]
    lines = [
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True, "
        "inline='always')",
        "def run(f, acc, start, count, w, bias, wq, ps):",
    ]
    plan = taps.passes()
    for k, chunk in enumerate(plan):
        # One view per (kernel row, column phase): the taps through it differ by constants, so
        # LLVM checks it against the accumulators once, not once per tap.
        views: dict[tuple[int, int], str] = {}
        terms = []
        for i, j in chunk:
            bb, qj = taps.cols[j]
            name = views.setdefault((i, bb), f"s{i}_{bb}")
            t = i * kw_ + j
            lines.append(f"    w{t} = w[{t}]")
            terms.append(f"w{t} * {name}[p + {qj}]")
        for (i, bb), name in views.items():
            a, qi = taps.rows[i]
            lines.append(f"    {name} = f[start + {a * sw + bb} * ps + {qi} * wq :]")
        store = re.sub(r"\bx0\b", "v", code) if k == len(plan) - 1 else "v"
        # Summed in independent groups of SUM_GROUP terms, not one chain: each add (or
        # multiply-add) waits for the one before it, and a 9-term chain outlasted the loads.
        terms = ["bias" if k == 0 else "acc[p]", *terms]
        groups = [terms[g : g + SUM_GROUP] for g in range(0, len(terms), SUM_GROUP)]
        lines += [
            "    for p in range(count):",
            f"        v = {' + '.join('(' + ' + '.join(g) + ')' for g in groups)}",
            f"        acc[p] = {store}",
        ]
    return lines


def source(
    dtype: np.dtype,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
    epilogue: str,
    parallel: bool,
) -> str:
    """A module with ``kernel(x, w, b, out, scratch)``; ``epilogue`` may only use ``{0}``.

    x (N, C, H, W), w (C, KH*KW), b (C,), out (N, C, OH, OW); ``scratch`` a zeroed 1-D buffer of
    :func:`scratch_shape` (unused when parallel: each chunk makes its own).

    Each channel's plane is copied into the phase planes (the strided column reads of a stride-2
    row grouped so that they vectorize as one interleaved load), then every pass computes, for
    all output positions at once, ``acc[p] (+)= sum of w_t * phase_t[p + offset_t]`` over the
    flattened planes: one long contiguous loop, even for a 7x7 plane, with positions past a
    row's last output column computed and dropped. The last pass applies the epilogue; its
    valid columns are then copied out.
    """
    if dtype not in codegen.FLOATS:
        raise codegen.Unsupported(f"dtype {dtype}")
    code, constants = codegen.translate(epilogue, dtype)
    if re.search(r"\bx[1-9]\d*\b", code):
        raise codegen.Unsupported(f"epilogue with tensor operands: {epilogue!r}")
    sh, sw = strides
    ph, pw = pads
    taps = _Taps(kernel, strides, dilations, pads)
    ctype = f"np.{dtype}"
    arr = partial(codegen.array_type, dtype)
    signature = (
        f"types.void({arr(4, True)}, {arr(2, True)}, {arr(1, True)}, {arr(4, False)}, "
        f"{arr(1, False)})"
    )
    comments = [
        f"depthwise kernel {kernel} strides {strides} dilations {dilations} pads {pads}",
        f"epilogue: {epilogue}",
    ]
    lines = codegen.module_header(comments, ctype, constants)
    lines += ["", "", *_passes(taps, code), "", "", *_COPY]
    lines += [
        "",
        "",
        # ``run`` is inlined in Numba's IR, where its arithmetic takes the flags of the function
        # it lands in: without ``contract`` here the taps were separate multiplies and adds.
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        "def plane(x, w, b, out, f, n, c, wq, ps, np_):",
        "    h_, w_ = x.shape[2], x.shape[3]",
        "    oh_, ow_ = out.shape[2], out.shape[3]",
        "    src = x[n, c]",
        # Each row straight into its phase rows: at stride 2 one loop splits the columns by
        # parity (LLVM loads pairs and deinterleaves them in registers). Splitting the whole
        # plane by one long loop into a spare region and then copying its rows in was 7-26%
        # slower on MobileNet's stride-2 convs (14x14 to 112x112 planes), the copy a second
        # pass over the plane.
        "    for i in range(h_):",
        "        row = src[i]",
        f"        d = np_ + ({ph} + i) % {sh} * {sw} * ps + ({ph} + i) // {sh} * wq",
        # Views, so that every index is a loop counter plus a constant: LLVM then drops Numba's
        # negative-index wraparound, which kept runtime-offset loops from vectorizing.
        *[f"        d{m} = f[d + {(pw + m) % sw} * ps + {(pw + m) // sw} :]" for m in range(sw)],
    ]
    if sw == 1:
        lines.append("        copy(row, d0, w_)")
    else:
        lines += [
            f"        for g in range(w_ // {sw}):",
            *[f"            d{m}[g] = row[g * {sw} + {m}]" for m in range(sw)],
            f"        for j in range(w_ // {sw} * {sw}, w_):",
            f"            f[d + ({pw} + j) % {sw} * ps + ({pw} + j) // {sw}] = row[j]",
        ]
    # Wide outputs go row by row, straight into ``out`` (a row's loop is long enough to fill the
    # vectors, and the accumulators' round trip through the scratch would cost more); narrow
    # ones over the whole flattened plane, then copied out.
    lines += [
        f"    if ow_ >= {ROW_WISE}:",
        "        o = out[n, c]",
        "        for oh in range(oh_):",
        "            run(f, o[oh], np_ + oh * wq, ow_, w[c], b[c], wq, ps)",
        "        return",
        "    run(f, f, np_, np_, w[c], b[c], wq, ps)",
        "    o = out[n, c]",
        "    for oh in range(oh_):",
        "        copy(f[oh * wq :], o[oh], ow_)",
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', nogil=True, parallel={parallel})",
        "def kernel(x, w, b, out, scratch):",
        "    n_, c_, h_, w_ = x.shape",
        "    oh_, ow_ = out.shape[2], out.shape[3]",
        *[f"    {line}" for line in taps.layout()],
        "    if scratch.shape[0] < total:",
        "        raise ValueError('depthwise scratch too small')",
    ]
    if parallel:
        lines += [
            "    chunks = min(n_ * c_, 64)",
            "    for t in prange(chunks):",
            f"        f = np.zeros(total, {ctype})",
            "        for nc in range(t * n_ * c_ // chunks, (t + 1) * n_ * c_ // chunks):",
            "            plane(x, w, b, out, f, nc // c_, nc % c_, wq, ps, np_)",
        ]
    else:
        lines += [
            "    for nc in range(n_ * c_):",
            "        plane(x, w, b, out, scratch, nc // c_, nc % c_, wq, ps, np_)",
        ]
    return "\n".join(lines) + "\n"


def scratch_shape(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
) -> tuple[int]:
    """The 1-D scratch :func:`source`'s kernel needs: its accumulators and phase planes."""
    sizes: dict[str, int] = {"h_": in_hw[0], "w_": in_hw[1], "oh_": out_hw[0], "ow_": out_hw[1]}
    exec("\n".join(_Taps(kernel, strides, dilations, pads).layout()), {}, sizes)
    return (int(sizes["total"]),)


def load(*args: object) -> object:
    """The compiled ``kernel`` for :func:`source` of ``args``."""
    return kernel_cache.load(source(*args)).kernel  # type: ignore[arg-type]


# Past this many taps along an axis the unrolled max chains compile slowly; the generic kernel
# (:func:`eqsat.lowering.cpu_kernels.max_pool2d`) takes those.
MAX_POOL_TAPS = 16


def _max_chain(terms: list[str], indent: str) -> list[str]:
    """Lines leaving in ``m`` the max of ``terms`` (NaN-propagating: ``v > m or v != v`` is one
    unordered compare, so the select vectorizes)."""
    lines = [f"{indent}m = {terms[0]}"]
    for term in terms[1:]:
        lines += [f"{indent}v = {term}", f"{indent}m = v if (v > m or v != v) else m"]
    return lines


def max_pool_source(
    dtype: np.dtype,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
) -> str:
    """A module with ``kernel(x, out)``: MaxPool of NCHW ``x`` into ``out`` (its output extent
    decides how far windows reach: ceil_mode and end padding), padding read as -inf."""
    return _pool_source("max", dtype, kernel, strides, dilations, pads)


def average_pool_source(
    dtype: np.dtype,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
) -> str:
    """A module with ``kernel(x, out, inverse)``: AveragePool of NCHW ``x`` into ``out``, the sum
    of each window (padding read as 0) times ``inverse[oh, ow]``, one over its divisor."""
    return _pool_source("average", dtype, kernel, strides, dilations, pads)


def _sum_chain(terms: list[str], indent: str) -> list[str]:
    return [f"{indent}m = {' + '.join(terms)}"]


def _pool_source(
    kind: str,
    dtype: np.dtype,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
) -> str:
    if dtype not in codegen.FLOATS:
        raise codegen.Unsupported(f"dtype {dtype}")
    if max(kernel) > MAX_POOL_TAPS:
        raise codegen.Unsupported(f"{kind} pool kernel {kernel}")
    average = kind == "average"
    chain = _sum_chain if average else _max_chain
    border = "0.0" if average else "-np.inf"
    kh_, kw_ = kernel
    sh, sw = strides
    dh, dw = dilations
    ph, pw = pads
    ctype = f"np.{dtype}"
    arr = partial(codegen.array_type, dtype)
    args = [arr(4, True), arr(4, False)]
    if average:
        args.append(arr(2, True))
    signature = f"types.void({', '.join(args)})"
    extra = ", inverse" if average else ""
    down = [f"r{i}[ow]" for i in range(kh_)]
    comments = [f"{kind} pool kernel {kernel} strides {strides} dilations {dilations} pads {pads}"]
    lines = codegen.module_header(comments, ctype, {})
    if sw == 1 or (kw_ - 1) * dw + 1 <= sw:
        # (Windows within one group of SW columns, 2x2 stride 2: strided reads of one
        # interleaved group, which LLVM vectorizes as it is.)
        across = [f"p[ow * {sw} + {j * dw}]" for j in range(kw_)]
        split: list[str] = []
    else:
        # Strided rows are split into their column phases first (f<b>[t] = p[t*SW + b]): each
        # tap then reads one phase contiguously, where reads at stride SW kept the row's max
        # scalar (ResNet's 3x3 stride-2 max pool on 64x112x112: 410 us, onnxruntime 119).
        across = [f"f{(j * dw) % sw}[ow + {(j * dw) // sw}]" for j in range(kw_)]
        # (All phases in one loop: LLVM loads groups of SW and deinterleaves them in registers.)
        split = [
            *[f"        f{b} = phases[{b}]" for b in range(sw)],
            "        for t in range(phases.shape[1]):",
            *[f"            f{b}[t] = p[{sw} * t + {b}]" for b in range(sw)],
        ]
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True)",
        f"def plane(x, out, p, phases, rows{extra}):",
        "    h_, w_ = x.shape[0], x.shape[1]",
        "    oh_, ow_ = out.shape[0], out.shape[1]",
        f"    q = p[{pw}:]",
        "    for i in range(h_):",
        "        src = x[i]",
        "        for j in range(w_):",
        "            q[j] = src[j]",
        *split,
        f"        dst = rows[{ph} + i]",
        "        for ow in range(ow_):",
        *chain(across, "            "),
        "            dst[ow] = m",
        "    for oh in range(oh_):",
        *[f"        r{i} = rows[oh * {sh} + {i * dh}]" for i in range(kh_)],
        "        o = out[oh]",
        *(["        inv = inverse[oh]"] if average else []),
        "        for ow in range(ow_):",
        *chain(down, "            "),
        f"            o[ow] = {'m * inv[ow]' if average else 'm'}",
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', nogil=True)",
        f"def kernel(x, out{extra}):",
        "    n_, c_, h_, w_ = x.shape",
        "    oh_, ow_ = out.shape[2], out.shape[3]",
        # Buffers wide enough for the input at its offset and for every window's reach; their
        # borders keep the padding value (only the interior is written).
        f"    wp = max({pw} + w_, (ow_ - 1) * {sw} + {(kw_ - 1) * dw + 1})",
        f"    hp = max({ph} + h_, (oh_ - 1) * {sh} + {(kh_ - 1) * dh + 1})",
        f"    p = np.full(-(-wp // {sw}) * {sw}, {border}, {ctype})",
        f"    phases = np.full(({sw}, -(-wp // {sw})), {border}, {ctype})",
        f"    rows = np.full((hp, ow_), {border}, {ctype})",
        "    for n in range(n_):",
        "        for c in range(c_):",
        f"            plane(x[n, c], out[n, c], p, phases, rows{extra})",
    ]
    return "\n".join(lines) + "\n"


def load_max_pool(*args: object) -> object:
    """The compiled ``kernel`` for :func:`max_pool_source` of ``args``."""
    return kernel_cache.load(max_pool_source(*args)).kernel  # type: ignore[arg-type]


def load_average_pool(*args: object) -> object:
    """The compiled ``kernel`` for :func:`average_pool_source` of ``args``."""
    return kernel_cache.load(average_pool_source(*args)).kernel  # type: ignore[arg-type]


def spread_source(dtype: np.dtype, kernel: tuple[int, int], epilogue: str) -> str:
    """A module with ``kernel(blocks, bias, out)``: the scatter of a ConvTranspose whose stride
    is its kernel, ``out[c, h*KH + a, w*KW + b] = epilogue(blocks[c, a, b, h, w] + bias[c])``
    for blocks (C, KH, KW, H, W) and out (C, H*KH, W*KW); ``epilogue`` may only use ``{0}``.

    The bias and epilogue are applied as each element is stored (they were two more passes over
    the upsampled output), the KW source rows of an output row are interleaved with the taps
    written out.
    """
    if dtype not in codegen.FLOATS:
        raise codegen.Unsupported(f"dtype {dtype}")
    code, constants = codegen.translate(epilogue, dtype)
    if re.search(r"\bx[1-9]\d*\b", code):
        raise codegen.Unsupported(f"epilogue with tensor operands: {epilogue!r}")
    acc_code = re.sub(r"\bx0\b", "acc", code)
    kh_, kw_ = kernel
    ctype = f"np.{dtype}"
    arr = partial(codegen.array_type, dtype)
    signature = f"types.void({arr(5, True)}, {arr(1, True)}, {arr(3, False)})"
    lines = codegen.module_header(
        [f"stride = kernel {kernel} ConvTranspose scatter", f"epilogue: {epilogue}"],
        ctype,
        constants,
    )
    lines += [
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', fastmath={{'contract'}}, nogil=True)",
        "def kernel(blocks, bias, out):",
        "    c_, h_, w_ = blocks.shape[0], blocks.shape[3], blocks.shape[4]",
        "    for c in range(c_):",
        "        bc = bias[c]",
        "        for h in range(h_):",
        f"            for a in range({kh_}):",
        f"                row = out[c, h * {kh_} + a]",
        *[f"                s{b} = blocks[c, a, {b}, h]" for b in range(kw_)],
        "                for w in range(w_):",
    ]
    for b in range(kw_):
        lines += [
            f"                    acc = s{b}[w] + bc",
            f"                    row[{kw_} * w + {b}] = {acc_code}",
        ]
    return "\n".join(lines) + "\n"


def load_spread(*args: object) -> object:
    """The compiled ``kernel`` for :func:`spread_source` of ``args``."""
    return kernel_cache.load(spread_source(*args)).kernel  # type: ignore[arg-type]


__all__ = [
    "MAX_POOL_TAPS",
    "PASS_TAPS",
    "average_pool_source",
    "fold_channel_add",
    "inline_scalars",
    "load",
    "load_average_pool",
    "load_max_pool",
    "load_spread",
    "max_pool_source",
    "scalar_constants",
    "scratch_shape",
    "source",
    "spread_source",
]

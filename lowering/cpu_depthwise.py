"""Generated window kernels: depthwise convs and max pools with the taps unrolled, and scatters.

A depthwise conv does a handful of multiply-adds per output, so it is bound by how well the inner
loop vectorizes. The generic kernel (taps in runtime loops, strides as variables) ran ~10x below
that. Here one kernel is generated per (kernel size, strides, dilations, padding, dtype,
epilogue): each channel's plane is copied into a zero-bordered scratch buffer (so no tap needs a
bounds check), the tap weights are loaded into scalars, and the loop over an output row computes
``epilogue(bias + sum of taps)`` with the taps written out, one store per output. Kernels with
more than :data:`PASS_TAPS` taps (7x7) take several passes over the output plane, a few kernel
rows each, so that a pass's weights fit in vector registers (all 49 spilled: two loads per
multiply-add). Scalar constant operands of the epilogue (ReLU6's bounds) are written into the
source as literals, and a per-channel constant it adds can be folded into the bias
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
from typing import Any

import numpy as np
from eqsat.lowering import codegen, kernel_cache

_OPERAND = re.compile(r"\{(\d+)\}")


def inline_scalars(epilogue: str, scalars: dict[int, float]) -> str:
    """``epilogue`` with operand ``{i}`` replaced by the literal ``scalars[i]`` where given."""

    def sub(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i not in scalars:
            return match.group(0)
        value = scalars[i]
        return f"({value!r})" if np.isfinite(value) else ("inf" if value > 0 else "(-inf)")

    return _OPERAND.sub(sub, epilogue)


def scalar_constants(extras: list[Any]) -> dict[int, float]:
    """Operand number (1-based, as the epilogue names them) -> value, for the epilogue operands
    that are one-element constants: what :func:`inline_scalars` writes in as literals."""
    return {
        i + 1: float(v.const.reshape(-1)[0])
        for i, v in enumerate(extras)
        if v.const is not None and v.const.size == 1
    }


# The most taps one pass over an output row multiplies in (whole kernel rows, at least one).
PASS_TAPS = 12


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

    x (N, C, H, W), w (C, KH*KW), b (C,), out (N, C, OH, OW); ``scratch`` is a zeroed (HP, WP)
    buffer large enough for a padded plane (unused when parallel: each chunk makes its own).
    """
    if dtype not in codegen.FLOATS:
        raise codegen.Unsupported(f"dtype {dtype}")
    code, constants = codegen.translate(epilogue, dtype)
    if re.search(r"\bx[1-9]\d*\b", code):
        raise codegen.Unsupported(f"epilogue with tensor operands: {epilogue!r}")
    kh_, kw_ = kernel
    sh, sw = strides
    dh, dw = dilations
    ph, pw = pads
    ctype = f"np.{dtype}"
    flag = "readonly=True"
    arr = f"types.Array(types.{dtype}, {{}}, 'C'{{}})"
    signature = (
        f"types.void({arr.format(4, ', ' + flag)}, {arr.format(2, ', ' + flag)}, "
        f"{arr.format(1, ', ' + flag)}, {arr.format(4, '')}, {arr.format(2, '')})"
    )
    acc_code = re.sub(r"\bx0\b", "acc", code)
    # Kernel rows per pass over the output plane: each pass keeps its taps' weights in vector
    # registers (all 49 of a 7x7 spilled, two loads per multiply-add: half the speed).
    per_pass = max(1, PASS_TAPS // kw_)
    passes = [list(range(i, min(i + per_pass, kh_))) for i in range(0, kh_, per_pass)]
    comments = [
        f"depthwise kernel {kernel} strides {strides} dilations {dilations} pads {pads}",
        f"epilogue: {epilogue}",
    ]
    lines = codegen.module_header(comments, ctype, constants)
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        "def plane(x, w, b, out, pad, n, c):",
        "    h_, w_ = x.shape[2], x.shape[3]",
        "    oh_, ow_ = out.shape[2], out.shape[3]",
        "    for i in range(h_):",
        "        for j in range(w_):",
        f"            pad[{ph} + i, {pw} + j] = x[n, c, i, j]",
    ]
    lines += ["    bias = b[c]"]
    for k, rows in enumerate(passes):
        # A pass's weights are loaded just before its loops, so only they are live in them.
        lines += [f"    w{i * kw_ + j} = w[c, {i * kw_ + j}]" for i in rows for j in range(kw_)]
        terms = " + ".join(
            f"w{i * kw_ + j} * r{i}[q + {j * dw}]" if j else f"w{i * kw_} * r{i}[q]"
            for i in rows
            for j in range(kw_)
        )
        lines += [
            "    for oh in range(oh_):",
            *[f"        r{i} = pad[oh * {sh} + {i * dh}]" for i in rows],
            "        o = out[n, c, oh]",
            "        for ow in range(ow_):",
            f"            q = ow * {sw}",
            f"            acc = {'bias' if k == 0 else 'o[ow]'} + {terms}",
            f"            o[ow] = {acc_code if k == len(passes) - 1 else 'acc'}",
        ]
    lines += [
        "",
        "",
        f"@njit({signature}, cache=True, error_model='numpy', fastmath={{'contract'}}, "
        f"nogil=True, parallel={parallel})",
        "def kernel(x, w, b, out, scratch):",
        "    n_, c_ = x.shape[0], x.shape[1]",
    ]
    if parallel:
        lines += [
            "    chunks = min(n_ * c_, 64)",
            "    for t in prange(chunks):",
            f"        pad = np.zeros(scratch.shape, {ctype})",
            "        for nc in range(t * n_ * c_ // chunks, (t + 1) * n_ * c_ // chunks):",
            "            plane(x, w, b, out, pad, nc // c_, nc % c_)",
        ]
    else:
        lines += [
            "    for nc in range(n_ * c_):",
            "        plane(x, w, b, out, scratch, nc // c_, nc % c_)",
        ]
    return "\n".join(lines) + "\n"


def scratch_shape(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int],
) -> tuple[int, int]:
    """A padded plane that holds the input at offset ``pads`` and every tap's reach."""
    dims = []
    for i in range(2):
        reach = (out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        dims.append(max(reach, pads[i] + in_hw[i]))
    return dims[0], dims[1]


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
    arr = f"types.Array(types.{dtype}, {{}}, 'C'{{}})"
    args = [arr.format(4, ", readonly=True"), arr.format(4, "")]
    if average:
        args.append(arr.format(2, ", readonly=True"))
    signature = f"types.void({', '.join(args)})"
    extra = ", inverse" if average else ""
    across = [f"p[q + {j * dw}]" if j else "p[q]" for j in range(kw_)]
    down = [f"r{i}[ow]" for i in range(kh_)]
    comments = [f"{kind} pool kernel {kernel} strides {strides} dilations {dilations} pads {pads}"]
    lines = codegen.module_header(comments, ctype, {})
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', nogil=True)",
        f"def plane(x, out, p, rows{extra}):",
        "    h_, w_ = x.shape[0], x.shape[1]",
        "    oh_, ow_ = out.shape[0], out.shape[1]",
        "    for i in range(h_):",
        "        src = x[i]",
        "        for j in range(w_):",
        f"            p[{pw} + j] = src[j]",
        f"        dst = rows[{ph} + i]",
        "        for ow in range(ow_):",
        f"            q = ow * {sw}",
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
        f"    p = np.full(wp, {border}, {ctype})",
        f"    rows = np.full((hp, ow_), {border}, {ctype})",
        "    for n in range(n_):",
        "        for c in range(c_):",
        f"            plane(x[n, c], out[n, c], p, rows{extra})",
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
    arr = f"types.Array(types.{dtype}, {{}}, 'C'{{}})"
    signature = (
        f"types.void({arr.format(5, ', readonly=True')}, {arr.format(1, ', readonly=True')}, "
        f"{arr.format(3, '')})"
    )
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

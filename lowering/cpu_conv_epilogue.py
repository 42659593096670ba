"""The epilogue kernels of the im2col + GEMM convs (:mod:`eqsat.lowering.cpu_conv`): a generated
module per (dtype, fused epilogue, operand kinds) that adds the bias and applies the fused
elementwise tail to a block of the GEMM's output while it is in cache, and the sorting of a fused
node's extra operands into the kinds those kernels take (output-shaped, per channel, scalar)."""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import codegen, cpu_lanes, cpu_microkernel, kernel_cache

_VERSION = "conv 3"


def epilogue_source(dtype: np.dtype, epilogue: str, kinds: list[str]) -> str:
    """A module with ``epilogue(out, c0, c1, bias, t1, t2, ...)``: columns c0 <= p < c1 of
    out (M, P) become ``epilogue(out + bias[m])``, and ``epilogue_wide(out, wide, oh0, oh1, OW, WP,
    bias, t1, ...)``: output rows oh0 <= oh < oh1 of out (M, OH*OW) become the epilogue of the
    first OW of each WP columns of wide (M, (oh1-oh0)*WP), and ``epilogue_images(out, gemm, i0,
    i1, bias, t1, ...)``: images i0 <= i < i1 of out (N, M, P) become the epilogue of columns
    (i-i0)*P to (i-i0+1)*P of gemm (M, >= (i1-i0)*P), "full" operands then being (N or 1, M, P).
    Operand ``t<i>`` is (M, P) where
    ``kinds[i-1]`` is "full", (M,) where it is "channel"; scalar constants must already be
    inlined. Loops run over slices from 0: indexed from c0 the loop did not vectorize (10x slower
    with exp in the epilogue)."""
    code, constants = codegen.translate(epilogue, dtype)
    args = "".join(f", t{i + 1}" for i in range(len(kinds)))
    rows = [f"r{i + 1} = t{i + 1}[m, c0:c1]" for i, k in enumerate(kinds) if k == "full"]
    per_channel = [f"x{i + 1} = t{i + 1}[m]" for i, k in enumerate(kinds) if k == "channel"]
    loads = [f"x{i + 1} = r{i + 1}[p]" for i, k in enumerate(kinds) if k == "full"]
    lines = codegen.module_header(
        [f"{_VERSION} block epilogue: {epilogue}; operands {kinds}"], f"np.{dtype}", constants
    )
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        f"def epilogue(out, c0, c1, bias{args}):",
        "    for m in range(out.shape[0]):",
        "        b = bias[m]",
        "        row = out[m, c0:c1]",
        *(f"        {line}" for line in rows + per_channel),
        "        for p in range(row.shape[0]):",
        "            x0 = row[p] + b",
        *(f"            {line}" for line in loads),
        f"            row[p] = {code}",
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        f"def epilogue_wide(out, wide, oh0, oh1, ow_, wp, bias{args}):",
        # Without extra columns (WP = OW) the block's rows are one run (a 1-D conv's rows are
        # one value each: Magika's 512 x 508 outputs took 390 us row by row).
        "    runs, width = (1, (oh1 - oh0) * ow_) if wp == ow_ else (oh1 - oh0, ow_)",
        "    for m in range(out.shape[0]):",
        "        b = bias[m]",
        *(f"        {line}" for line in per_channel),
        "        for j in range(runs):",
        "            c0 = (oh0 + j) * ow_",
        "            c1 = c0 + width",
        "            row = out[m, c0:c1]",
        "            src = wide[m, j * wp : j * wp + width]",
        *(f"            {line}" for line in rows),
        "            for p in range(width):",
        "                x0 = src[p] + b",
        *(f"                {line}" for line in loads),
        f"                row[p] = {code}",
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        f"def epilogue_images(out, gemm, i0, i1, bias{args}):",
        "    p_ = out.shape[2]",
        "    for i in range(i0, i1):",
        "        j = (i - i0) * p_",
        "        for m in range(out.shape[1]):",
        "            b = bias[m]",
        "            row = out[i, m]",
        "            src = gemm[m, j : j + p_]",
        *(f"            {line}" for line in per_channel),
        *(
            f"            r{i + 1} = t{i + 1}[i if t{i + 1}.shape[0] > 1 else 0, m]"
            for i, k in enumerate(kinds)
            if k == "full"
        ),
        "            for p in range(p_):",
        "                x0 = src[p] + b",
        *(f"                {line}" for line in loads),
        f"                row[p] = {code}",
        *cpu_microkernel.fused_source(args),
        "",
        "",
        *cpu_lanes.conv_lanes(len(kinds)),
    ]
    return "\n".join(lines) + "\n"


def load_epilogue(dtype: np.dtype, epilogue: str, kinds: list[str]) -> Any:
    """The module of :func:`epilogue_source` (compiled, or loaded from the cache, on first use)."""
    return kernel_cache.load(epilogue_source(dtype, epilogue, kinds))


def classify_operands(
    out_shape: tuple[int, ...], epilogue: str, extras: list[Any], dtype: np.dtype
) -> tuple[str, list[tuple[Any, str]]] | None:
    """The epilogue with scalar constants inlined and the other operands renumbered 1, 2, ...,
    each with its kind: "full" (shaped like the output, batch 1 or N) or "channel" (one value
    per output channel). None when an operand is neither (it then needs a pass of its own)."""
    from eqsat.lowering.cpu_depthwise import inline_and_renumber

    rank = len(out_shape)
    n_, m_ = out_shape[:2]
    scalars: dict[int, float] = {}
    numbers: dict[int, int] = {}
    operands: list[tuple[Any, str]] = []
    for i, v in enumerate(extras, 1):
        if v.const is not None and v.const.size == 1:
            scalars[i] = float(v.const.reshape(-1)[0])
            continue
        if v.rank > rank or v.dtype != dtype:
            return None
        shape = (1,) * (rank - v.rank) + tuple(v.shape)
        if shape[1:] == tuple(out_shape[1:]) and shape[0] in (1, n_):
            kind = "full"
        elif shape[1] == m_ and all(d == 1 for i2, d in enumerate(shape) if i2 != 1):
            kind = "channel"
        else:
            return None
        numbers[i] = len(operands) + 1
        operands.append((v, kind))
    return inline_and_renumber(epilogue, scalars, numbers), operands


def operand_array(a: np.ndarray, kind: str, out_shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """An epilogue operand as the kernel indexes it: (N or 1, M, P) when "full", (M,) else."""
    a = np.ascontiguousarray(a, dtype)
    if kind == "channel":
        return a.reshape(-1)
    rank = len(out_shape)
    shape = (1,) * (rank - a.ndim) + a.shape
    return a.reshape(shape[0], out_shape[1], -1)


def image_operand(a: np.ndarray, i: int) -> np.ndarray:
    return a if a.ndim == 1 else a[i if a.shape[0] > 1 else 0]


__all__ = [
    "classify_operands",
    "epilogue_source",
    "image_operand",
    "load_epilogue",
    "operand_array",
]

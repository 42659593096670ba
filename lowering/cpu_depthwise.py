"""Generated depthwise convolution kernels with the taps unrolled and the epilogue fused.

A depthwise conv does a handful of multiply-adds per output, so it is bound by how well the inner
loop vectorizes. The generic kernel (taps in runtime loops, strides as variables) ran ~10x below
that. Here one kernel is generated per (kernel size, strides, dilations, padding, dtype,
epilogue): each channel's plane is copied into a zero-bordered scratch buffer (so no tap needs a
bounds check), the tap weights are loaded into scalars, and the loop over an output row computes
``epilogue(bias + sum of taps)`` with the taps written out, one store per output. Scalar constant
operands of the epilogue (ReLU6's bounds) are written into the source as literals; an epilogue
over tensors (a residual) is applied afterwards by the caller.

Kernels go through :mod:`eqsat.lowering.kernel_cache`, so each form compiles once per machine.
"""

from __future__ import annotations

import re

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
    taps = [(i, j) for i in range(kh_) for j in range(kw_)]
    terms = " + ".join(
        f"w{t} * r{i}[q + {j * dw}]" if j else f"w{t} * r{i}[q]" for t, (i, j) in enumerate(taps)
    )
    acc_code = re.sub(r"\bx0\b", "acc", code)
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
    lines += [f"    w{t} = w[c, {t}]" for t in range(len(taps))]
    lines += [
        "    bias = b[c]",
        "    for oh in range(oh_):",
    ]
    lines += [f"        r{i} = pad[oh * {sh} + {i * dh}]" for i in range(kh_)]
    lines += [
        "        o = out[n, c, oh]",
        "        for ow in range(ow_):",
        f"            q = ow * {sw}",
        f"            acc = bias + {terms}",
        f"            o[ow] = {acc_code}",
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


__all__ = ["inline_scalars", "load", "scratch_shape", "source"]

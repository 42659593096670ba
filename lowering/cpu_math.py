"""Scalar float32 math for generated CPU kernels: fast, vectorizable, with stated error bounds.

Numba lowers ``np.exp`` and friends on float32 to scalar libm calls, which keeps LLVM from
vectorizing the loops around them (an exp-heavy loop then runs ~8x below memory bandwidth). These
replacements are straight-line polynomial code (selects instead of branches), so a loop calling
them vectorizes. Maximum errors, measured against float64 references over the stated ranges and
checked by tests/test_cpu.py:

* :func:`exp_f32`: relative error <= 4e-7 (a few ulp) for x in [-87, 88.7]; 0 below -87.34
  (float32's normal range ends there), inf above 88.72, NaN stays NaN. Cephes' expf polynomial.
* :func:`tanh_f32`: absolute error <= 3e-7 and relative error <= 5e-7 everywhere (|x| < 0.625 uses
  Cephes' odd polynomial, larger |x| uses 1 - 2 / (exp(2|x|) + 1)).
* :func:`erf_f32`: absolute error <= 1e-6 everywhere (Eigen's rational approximation on [-4, 4];
  erf is +-1 in float32 beyond).

min/max propagate NaN like numpy's ``minimum``/``maximum``; ``sign`` of NaN is NaN. float64
kernels keep libm (``np.exp`` etc.): there precision is what the caller asked for.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

F = np.float32
JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "inline": "always"}


@intrinsic
def _f32_from_bits(typingctx, bits):  # type: ignore[no-untyped-def]
    """Reinterpret an int32 as the float32 with the same bits (2**n without a libm call)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        # Numba widens int32 arithmetic to int64; the low 32 bits are the ones meant.
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit(**JIT)
def exp_f32(x):  # type: ignore[no-untyped-def]
    c = min(max(x, F(-87.33654)), F(88.72283))
    n = np.floor(c * F(1.44269504088896341) + F(0.5))
    r = c - n * F(0.693359375)
    r = r - n * F(-2.12194440e-4)
    p = F(1.9875691500e-4)
    p = p * r + F(1.3981999507e-3)
    p = p * r + F(8.3334519073e-3)
    p = p * r + F(4.1665795894e-2)
    p = p * r + F(1.6666665459e-1)
    p = p * r + F(5.0000001201e-1)
    y = p * r * r + r + F(1.0)
    # 2**n as two factors 2**h * 2**(n-h), so that n in [-126, 128] never leaves the exponent
    # field's normal range (n = 128 near x = 88.7, n = -126 near x = -87.3).
    ni = np.int32(n)
    h = ni >> 1
    y = y * _f32_from_bits((h + 127) << 23)
    y = y * _f32_from_bits((ni - h + 127) << 23)
    y = F(np.inf) if x > F(88.72283) else y
    y = F(0.0) if x < F(-87.33654) else y
    return x if x != x else y


@njit(**JIT)
def tanh_f32(x):  # type: ignore[no-untyped-def]
    a = abs(x)
    z = x * x
    p = F(-5.70498872745e-3)
    p = p * z + F(2.06390887954e-2)
    p = p * z - F(5.37397155531e-2)
    p = p * z + F(1.33314422036e-1)
    p = p * z - F(3.33332819422e-1)
    small = p * z * x + x
    e = exp_f32(a + a)
    big = F(1.0) - F(2.0) / (e + F(1.0))
    big = big if x >= F(0.0) else -big
    return small if a < F(0.625) else big


@njit(**JIT)
def erf_f32(x):  # type: ignore[no-untyped-def]
    c = min(max(x, F(-4.0)), F(4.0))
    z = c * c
    p = F(-2.72614225801306e-10)
    p = p * z + F(2.77068142495902e-08)
    p = p * z + F(-2.10102402082508e-06)
    p = p * z + F(-5.69250639462346e-05)
    p = p * z + F(-7.34990630326855e-04)
    p = p * z + F(-2.95459980854025e-03)
    p = p * z + F(-1.60960333262415e-02)
    q = F(-1.45660718464996e-05)
    q = q * z + F(-2.13374055278905e-04)
    q = q * z + F(-1.68282697438203e-03)
    q = q * z + F(-7.37332916720468e-03)
    q = q * z + F(-1.42647390514189e-02)
    y = c * p / q
    return x if x != x else y


@njit(**JIT)
def fmax(a, b):  # type: ignore[no-untyped-def]
    return b if (b > a or b != b) else a


@njit(**JIT)
def fmin(a, b):  # type: ignore[no-untyped-def]
    return b if (b < a or b != b) else a


@njit(**JIT)
def fsign(x, one, zero):  # type: ignore[no-untyped-def]
    # one and zero come in the kernel's dtype, so that no literal promotes float32 to float64.
    s = one if x > zero else (-one if x < zero else zero)
    return x if x != x else s

"""Per-tensor quantization as elementwise ops, eqsat's own: what a QDQ model's activations become.

A model quantized in the QDQ format (onnxruntime's ``quantize_static`` default) brackets every
float op with QuantizeLinear -> DequantizeLinear pairs on its activations. With a scale and a
zero point that are one-element constants, each is elementwise, and the ``fusion-quantize`` rules
(``rules/fusion.py``) rewrite them to these two ops, whose scalar templates let elementwise fusion
take them into kernels and conv/GEMM epilogues: a conv, its bias, the pair and the activation
after it become one pass.

* ``QuantizePerTensor(x; scale, zero, low, high, to)``: ``saturate(rint(x / scale) + zero)`` to
  [low, high], of ONNX type ``to`` (uint8 or int8), computed in float32 like QuantizeLinear's
  reference: the same division, rounding (half to even) and clamp, so the same bytes.
* ``DequantizePerTensor(q; scale, zero)``: ``(q - zero) * scale`` in float32: exact
  subtraction of 8-bit integers, then DequantizeLinear's one rounding.

A fused kernel keeps the quantized value as a float32 integer between the two: the same number.
"""

from __future__ import annotations

import numpy as np

from eqsat.ops.elementwise import elementwise, onnx_dtype

F32 = frozenset({np.dtype(np.float32)})
EIGHT_BITS = frozenset({np.dtype(np.uint8), np.dtype(np.int8)})
# ONNX type numbers of the quantized types, and their ranges.
UINT8, INT8 = 2, 3
RANGES = {UINT8: (0, 255), INT8: (-128, 127)}


def _quantize(
    x: np.ndarray, scale: float, zero: float, low: float, high: float, to: int
) -> np.ndarray:
    f = np.float32
    q = np.rint(x.astype(f) / f(scale)) + f(zero)
    return np.clip(q, f(low), f(high)).astype(onnx_dtype(to))


def _dequantize(q: np.ndarray, scale: float, zero: float) -> np.ndarray:
    f = np.float32
    return (q.astype(f) - f(zero)) * f(scale)


elementwise(
    "QuantizePerTensor",
    _quantize,
    "min(max(rint({0} / {scale}) + {zero}, {low}), {high})",
    flops=4,
    dtypes=F32,
    attrs={"scale": 1.0, "zero": 0.0, "low": 0.0, "high": 255.0, "to": UINT8},
    result=lambda attrs: onnx_dtype(int(attrs["to"])),
)
elementwise(
    "DequantizePerTensor",
    _dequantize,
    "((cast({0}, 1) - {zero}) * {scale})",
    flops=2,
    dtypes=EIGHT_BITS,
    attrs={"scale": 1.0, "zero": 0.0},
    result=lambda attrs: np.dtype(np.float32),
)

# Exported in eqsat's domain (see eqsat.onnx_export).
QUANT_TENSOR_OPS = frozenset({"QuantizePerTensor", "DequantizePerTensor"})

__all__ = ["INT8", "QUANT_TENSOR_OPS", "RANGES", "UINT8"]

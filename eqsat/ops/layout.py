"""Channels-last operators: what the layout rules (``eqsat.rules.layout``) produce.

The IR's Conv and pools are channels-first (``N x C x D1 x ... x Dk``). These ops are the same
computations on channels-last tensors, so that a region of a graph can run in NHWC with explicit
``Transpose`` nodes at its borders; extraction decides which layout each region uses.

* ``ConvNHWC(X, W[, B])``: ``X`` is ``N x D1 x ... x Dk x C`` (k = 1..3 spatial axes), ``W`` is
  ``K1 x ... x Kk x C/group x M`` (spatial taps first, then input channels, then output channels:
  TensorFlow's "HWIO"), ``B`` is ``[M]``. The output is ``N x O1 x ... x Ok x M``. Attributes are
  Conv's (``auto_pad``, ``dilations``, ``group``, ``kernel_shape``, ``pads``, ``strides``) with the
  same meaning over the spatial axes. Exactly::

      ConvNHWC(X, W, B) == Transpose(Conv(Transpose(X, to_first), Transpose(W, w_to_oihw), B),
                                     to_last)

  with ``to_first = [0, k+1, 1..k]``, ``to_last = [0, 2..k+1, 1]`` and
  ``w_to_oihw = [k+1, k, 0..k-1]``. With ``group == 1`` every output pixel is one row of an
  ``(N*O1*...*Ok) x (K1*...*Kk*C)`` im2col matrix times the ``(K1*...*Kk*C) x M`` matrix that ``W``
  already is in memory, and a 1x1 conv is a plain GEMM of ``X`` as ``(N*D1*...*Dk) x C``: no
  weight repacking, contiguous channel vectors (what a fast CPU kernel wants).
* ``FusedConvNHWC(X, W, B, E1..EK; epilogue, num_base_inputs)``: ``ConvNHWC`` followed by an
  elementwise epilogue, exactly like :mod:`eqsat.ops.fused`'s ``FusedConv`` (``{0}`` is the conv's
  result with its bias applied, ``{1}..{K}`` the extra inputs broadcast to the NHWC output).
* ``MaxPoolNHWC(X)`` and ``AveragePoolNHWC(X)``: MaxPool (values only: no Indices output, whose
  flat indices would depend on the layout) and AveragePool over the spatial axes of a
  channels-last ``X``, same attributes and semantics as the ONNX ops.

References transpose to channels-first and run the ONNX op's reference, so they agree with it
bit for bit. Costs equal the channels-first ops' costs (same FLOPs, same bytes): this module makes
no claim that NHWC is faster until a target's kernels and calibration say so. These ops are not
ONNX ops; exported graphs must put them in the ``eqsat`` domain (:data:`DOMAIN`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import OPS, Cost, OpDef, register
from eqsat.ops.fused import DOMAIN, MAX_FUSED_INPUTS, body_flops, evaluate_body, parse_body

__all__ = ["DOMAIN", "LAYOUT_OPS", "to_first", "to_last", "w_to_hwio", "w_to_oihw"]

LAYOUT_OPS = frozenset({"ConvNHWC", "FusedConvNHWC", "MaxPoolNHWC", "AveragePoolNHWC"})


def to_last(rank: int) -> list[int]:
    """Permutation NC[D]HW -> N[D]HWC."""
    return [0, *range(2, rank), 1]


def to_first(rank: int) -> list[int]:
    """Permutation N[D]HWC -> NC[D]HW."""
    return [0, rank - 1, *range(1, rank - 1)]


def w_to_hwio(rank: int) -> list[int]:
    """Permutation of Conv weights M x C/g x K... -> K... x C/g x M."""
    return [*range(2, rank), 1, 0]


def w_to_oihw(rank: int) -> list[int]:
    """Permutation of ConvNHWC weights K... x C/g x M -> M x C/g x K..."""
    return [rank - 1, rank - 2, *range(rank - 2)]


def _permuted(v: Value | None, perm: list[int], what: str) -> Value | None:
    if v is None:
        return None
    if v.rank != len(perm):
        raise ShapeError(f"{what} must have rank {len(perm)}, got shape {v.shape}")
    return Value(v.name, tuple(v.shape[p] for p in perm), v.dtype, None)


def _nchw_inputs(inputs: list[Value | None], with_weights: bool) -> list[Value | None]:
    x = inputs[0]
    if x is None:
        raise ShapeError("X is required")
    if not 3 <= x.rank <= 5:
        raise ShapeError(f"X must be N x D1[ x D2[ x D3]] x C (rank 3-5), got shape {x.shape}")
    out = [_permuted(x, to_first(x.rank), "X")]
    if with_weights:
        if len(inputs) < 2 or inputs[1] is None:
            raise ShapeError("W is required")
        out.append(_permuted(inputs[1], w_to_oihw(x.rank), "W"))
        out.extend(inputs[2:3])
    return out


def _nhwc_op(base: str, with_weights: bool, drop_attrs: tuple[str, ...] = ()) -> OpDef:
    """``base`` on channels-last tensors, by transposing around the base op's rules."""
    bdef = OPS[base]
    attrs = {k: v for k, v in bdef.attrs.items() if k not in drop_attrs}

    def full(a: dict[str, Any]) -> dict[str, Any]:
        return {**a, **{k: bdef.attrs[k] for k in drop_attrs}}

    def infer(inputs: list[Value | None], a: dict[str, Any], _: int) -> list[Any]:
        ins = _nchw_inputs(inputs, with_weights)
        shape, dtype = bdef.infer(ins, full(a), 1)[0]
        perm = to_last(len(shape))
        return [(tuple(shape[p] for p in perm), dtype)]

    def reference(arrays: list[Any], a: dict[str, Any], outs: list[Any]) -> list[Any]:
        x = arrays[0]
        ins = [np.transpose(x, to_first(x.ndim))]
        if with_weights:
            ins.append(np.transpose(arrays[1], w_to_oihw(x.ndim)))
            ins.extend(arrays[2:3])
        y = np.asarray(bdef.reference(ins, full(a), outs[:1])[0])
        return [np.ascontiguousarray(np.transpose(y, to_last(y.ndim)))]

    def cost(inputs: list[Value | None], outputs: list[Value | None], a: dict) -> Cost:
        ins = _nchw_inputs(inputs, with_weights)
        y = outputs[0]
        assert y is not None
        out = _permuted(y, to_first(y.rank), "Y")
        return bdef.cost(ins, [out], full(a))

    return OpDef(
        f"{base}NHWC",
        infer,
        reference,
        cost,
        min_inputs=bdef.min_inputs,
        max_inputs=bdef.max_inputs,
        attrs=attrs,
        doc=f"{base} on a channels-last input (see eqsat.ops.layout).",
    )


register(_nhwc_op("Conv", True))
register(_nhwc_op("MaxPool", False, drop_attrs=("storage_order",)))
register(_nhwc_op("AveragePool", False))


# ------------------------------------------------------------------ FusedConvNHWC
def _split_inputs(inputs: list[Any], attrs: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    n = attrs["num_base_inputs"]
    if not isinstance(n, int) or not 2 <= n <= 3 or len(inputs) < 2:
        raise ShapeError(f"FusedConvNHWC: num_base_inputs {n!r} does not fit {len(inputs)} inputs")
    # A bias left out at the end (no epilogue operands either): see eqsat.ops.fused._split.
    inputs = [*inputs, *[None] * (n - len(inputs))]
    return inputs[:n], inputs[n:]


def _conv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in ("num_base_inputs", "epilogue")}


def _check_epilogue(body: Any, operands: int) -> str:
    if not isinstance(body, str):
        raise ShapeError(f"FusedConvNHWC epilogue must be a string, got {body!r}")
    _, needed = parse_body(body)
    if needed > operands:
        raise ShapeError(
            f"FusedConvNHWC epilogue {body!r} uses operand {{{needed - 1}}}, only {operands} given"
        )
    return body


def _fused_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    ins, extra = _split_inputs(inputs, attrs)
    if any(v is None for v in extra):
        raise ShapeError("FusedConvNHWC: epilogue inputs cannot be omitted")
    _check_epilogue(attrs["epilogue"], 1 + len(extra))
    (out,) = OPS["ConvNHWC"].infer(ins, _conv_attrs(attrs), 1)
    shape = tuple(out[0])
    try:
        full = tuple(np.broadcast_shapes(shape, *(v.shape for v in extra)))  # type: ignore[union-attr]
    except ValueError:
        full = None
    if full != shape:
        raise ShapeError(
            f"FusedConvNHWC: epilogue inputs {[v.shape for v in extra]} do not broadcast to "  # type: ignore[union-attr]
            f"the output shape {shape}"
        )
    return [(shape, out[1])]


def _fused_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    ins, extra = _split_inputs(arrays, attrs)
    (y,) = OPS["ConvNHWC"].reference(ins, _conv_attrs(attrs), outs)
    result = evaluate_body(attrs["epilogue"], [y, *extra])
    return [np.broadcast_to(result, y.shape).astype(outs[0].dtype)]


def _fused_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    ins, extra = _split_inputs(inputs, attrs)
    c = OPS["ConvNHWC"].cost(ins, outputs, _conv_attrs(attrs))
    out = outputs[0]
    assert out is not None
    flops = body_flops(attrs["epilogue"]) * out.size
    read = sum(v.nbytes for v in extra if v is not None)
    return Cost(c.flops + flops, c.bytes_read + read, c.bytes_written)


register(
    OpDef(
        "FusedConvNHWC",
        _fused_infer,
        _fused_reference,
        _fused_cost,
        min_inputs=2,
        max_inputs=3 + MAX_FUSED_INPUTS,
        attrs={**OPS["ConvNHWC"].attrs, "num_base_inputs": 3, "epilogue": "{0}"},
        doc="ConvNHWC with an elementwise epilogue over its result and extra inputs.",
    )
)

"""Signal processing for audio front ends: DFT, STFT, MelWeightMatrix and the window generators
(HannWindow, HammingWindow, BlackmanWindow).

Complex tensors are real tensors with a trailing axis of 2 (real, imaginary); a real signal may
carry a trailing axis of 1 instead. DFT speaks the opset-20 form (``dft_length`` and ``axis`` are
inputs). The lengths, the axis and a window's size shape the result, so they must be known at
compile time; the windows and the mel matrix then fold to constants. Transforms are computed by
numpy's FFT in the signal's precision (float16 in float32) and rounded once to its dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, const_of, normalize_axis, register
from eqsat.ops.elementwise import onnx_dtype
from eqsat.ops.nn import FLOAT_DTYPES, check_dtype, io_cost

INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _scalar_int(value: Value | None, what: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    if value.dtype not in INT_DTYPES or value.size != 1:
        raise ShapeError(f"{what} must be an int32/int64 scalar, got {value.dtype} {value.shape}")
    return int(np.asarray(const_of(value, what)).reshape(()))


def _to_complex(x: np.ndarray) -> np.ndarray:
    """(..., 1) real or (..., 2) interleaved complex -> complex without the last axis.

    float32 (and float16) signals transform in single precision, as onnxruntime and the ONNX
    reference do; numpy's FFT keeps complex64 in complex64.
    """
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    if x.shape[-1] == 1:
        return x[..., 0]
    return (x[..., 0] + np.complex64(1j) * x[..., 1]).astype(np.result_type(x.dtype, np.complex64))


def _from_complex(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def _fft_flops(length: int, transforms: int) -> float:
    # The usual 5 n log2 n for a complex radix-2 FFT.
    return 5.0 * length * max(math.log2(max(length, 2)), 1.0) * transforms


# ------------------------------------------------------------------------------------------ DFT
def _dft_params(inputs: list[Value | None], attrs: dict[str, Any]) -> tuple[int, int, bool, bool]:
    x = inputs[0]
    if x.rank < 2 or x.shape[-1] not in (1, 2):
        raise ShapeError(f"input must be (..., 1) real or (..., 2) complex, got shape {x.shape}")
    check_dtype(x.dtype, FLOAT_DTYPES, "input")
    axis_value = inputs[2] if len(inputs) > 2 else None
    axis = _scalar_int(axis_value, "DFT's axis", -2)
    axis = normalize_axis(axis, x.rank)
    if axis == x.rank - 1:
        raise ShapeError("axis cannot be the last (real/imaginary) axis")
    inverse, onesided = bool(attrs["inverse"]), bool(attrs["onesided"])
    # A one-sided spectrum goes back to a real signal of even length (irfft).
    default = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    length = _scalar_int(inputs[1] if len(inputs) > 1 else None, "dft_length", default)
    if length is None or length < 1:
        raise ShapeError(f"dft_length must be >= 1, got {length}")
    if onesided and not inverse and x.shape[-1] != 1:
        raise ShapeError("onesided=1 needs a real input (last axis 1)")
    return axis, length, inverse, onesided


def _dft_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    axis, length, inverse, onesided = _dft_params(inputs, attrs)
    shape = list(x.shape)
    if inverse and onesided:
        shape[axis], shape[-1] = length, 1
    else:
        shape[axis], shape[-1] = (length // 2 + 1 if onesided else length), 2
    return [(tuple(shape), x.dtype)]


def _dft_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x = arrays[0]
    given = [None if a is None else int(np.asarray(a).reshape(())) for a in arrays[1:]]
    given += [None] * (2 - len(given))
    axis = normalize_axis(-2 if given[1] is None else given[1], x.ndim)
    inverse, onesided = bool(attrs["inverse"]), bool(attrs["onesided"])
    length = given[0]
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    z = _to_complex(x)
    if inverse and onesided:
        y = np.fft.irfft(z, n=length, axis=axis)[..., None]
    elif inverse:
        y = _from_complex(np.fft.ifft(z, n=length, axis=axis))
    else:
        spectrum = np.fft.fft(z, n=length, axis=axis)
        if onesided:
            spectrum = np.take(spectrum, np.arange(length // 2 + 1), axis=axis)
        y = _from_complex(spectrum)
    return [y.astype(x.dtype)]


def _dft_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    axis, length, _, _ = _dft_params(inputs, attrs)
    x = inputs[0]
    transforms = x.size // (x.shape[-1] * max(x.shape[axis], 1))
    return io_cost(_fft_flops(length, transforms), inputs, outputs)


register(
    OpDef(
        "DFT",
        _dft_infer,
        _dft_reference,
        _dft_cost,
        min_inputs=1,
        max_inputs=3,
        attrs={"inverse": 0, "onesided": 0},
    )
)


# ----------------------------------------------------------------------------------------- STFT
def _stft_params(inputs: list[Value | None], attrs: dict[str, Any]) -> tuple[int, int, int]:
    """(frame_step, frame_length, number of frames)."""
    x = inputs[0]
    window = inputs[2] if len(inputs) > 2 else None
    if x.rank != 3 or x.shape[-1] not in (1, 2):
        raise ShapeError(f"signal must be (batch, length, 1 or 2), got shape {x.shape}")
    check_dtype(x.dtype, FLOAT_DTYPES, "signal")
    step = _scalar_int(inputs[1], "frame_step")
    length = _scalar_int(inputs[3] if len(inputs) > 3 else None, "frame_length")
    if window is not None:
        if window.rank != 1 or window.dtype != x.dtype:
            raise ShapeError(f"window must be 1-D of the signal's dtype, got {window.dtype} "
                             f"{window.shape}")  # fmt: skip
        if length is not None and length != window.shape[0]:
            raise ShapeError(f"frame_length {length} differs from the window's {window.shape[0]}")
        length = window.shape[0]
    if length is None:
        raise ShapeError("STFT needs a window or a frame_length")
    if step is None or step < 1 or not 1 <= length <= x.shape[1]:
        raise ShapeError(f"frame_step {step} / frame_length {length} do not fit {x.shape[1]}")
    if attrs["onesided"] and x.shape[-1] != 1:
        raise ShapeError("onesided=1 needs a real signal (last axis 1)")
    return step, length, 1 + (x.shape[1] - length) // step


def _stft_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    x = inputs[0]
    _, length, frames = _stft_params(inputs, attrs)
    bins = length // 2 + 1 if attrs["onesided"] else length
    return [((x.shape[0], frames, bins, 2), x.dtype)]


def _stft_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    x, step = arrays[0], int(np.asarray(arrays[1]).reshape(()))
    window = arrays[2] if len(arrays) > 2 else None
    frames = outs[0].shape[1]
    length = window.shape[0] if window is not None else int(np.asarray(arrays[3]).reshape(()))
    signal = _to_complex(x)  # (batch, samples)
    index = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    framed = signal[:, index]  # (batch, frames, length)
    if window is not None:
        framed = framed * window.astype(framed.real.dtype)
    spectrum = np.fft.fft(framed, n=length, axis=-1)
    if attrs["onesided"]:
        spectrum = spectrum[..., : length // 2 + 1]
    return [_from_complex(spectrum).astype(x.dtype)]


def _stft_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    _, length, frames = _stft_params(inputs, attrs)
    transforms = inputs[0].shape[0] * frames
    return io_cost(_fft_flops(length, transforms) + length * transforms, inputs, outputs)


register(
    OpDef(
        "STFT",
        _stft_infer,
        _stft_reference,
        _stft_cost,
        min_inputs=2,
        max_inputs=4,
        attrs={"onesided": 1},
    )
)


# ------------------------------------------------------------------------------ MelWeightMatrix
def _mel_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    bins = _scalar_int(inputs[0], "num_mel_bins")
    length = _scalar_int(inputs[1], "dft_length")
    _scalar_int(inputs[2], "sample_rate")
    for v, what in ((inputs[3], "lower_edge_hertz"), (inputs[4], "upper_edge_hertz")):
        if v.size != 1 or v.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{what} must be a float scalar, got {v.dtype} {v.shape}")
    if bins is None or length is None or bins < 1 or length < 1:
        raise ShapeError(f"num_mel_bins {bins} and dft_length {length} must be >= 1")
    return [((length // 2 + 1, bins), onnx_dtype(attrs["output_datatype"]))]


def _mel_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    bins, length, rate = (int(np.asarray(a).reshape(())) for a in arrays[:3])
    low, high = (np.asarray(a).reshape(()) for a in arrays[3:])
    # The arithmetic (and its float32 steps for float32 edges) follows the ONNX reference: the
    # floor division below decides which FFT bin each mel edge lands in.
    low_mel = 2595 * np.log1p(low / 700) / np.log(10)
    high_mel = 2595 * np.log1p(high / 700) / np.log(10)
    step = (high_mel - low_mel) / (bins + 2)
    hertz = 700 * np.expm1((np.arange(bins + 2) * step + low_mel) / 2595 * np.log(10))
    edges = (((length + 1) * hertz) // rate).astype(int)
    out = np.zeros((length // 2 + 1, bins))
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return [out.astype(outs[0].dtype)]


def _generated_cost(flops_per_output: float) -> Any:
    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        return io_cost(flops_per_output * outputs[0].size, inputs, outputs)

    return cost


register(
    OpDef(
        "MelWeightMatrix",
        _mel_infer,
        _mel_reference,
        _generated_cost(4),
        min_inputs=5,
        max_inputs=5,
        attrs={"output_datatype": 1},
    )
)


# ------------------------------------------------------------------------------------- windows
def _window_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    size = _scalar_int(inputs[0], "size")
    if size is None or size < 0:
        raise ShapeError(f"size must be >= 0, got {size}")
    dtype = onnx_dtype(attrs["output_datatype"])
    if dtype.kind != "f":
        raise ShapeError(f"output_datatype must be a float type, got {dtype}")
    return [((size,), dtype)]


def _window(coefficients: tuple[float, ...]) -> Any:
    """sum_k (-1)^k a_k cos(2 pi k n / N), N = size (periodic) or size - 1 (symmetric)."""

    def reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        size = outs[0].shape[0]
        period = size if attrs["periodic"] else size - 1
        phase = 2 * np.pi * np.arange(size) / period if period else np.zeros(size)
        y = sum((-1) ** k * a * np.cos(k * phase) for k, a in enumerate(coefficients))
        return [np.asarray(y).astype(outs[0].dtype)]

    return reference


WINDOWS = {
    "HannWindow": (0.5, 0.5),
    "HammingWindow": (25 / 46, 21 / 46),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}
for _name, _coefficients in WINDOWS.items():
    register(
        OpDef(
            _name,
            _window_infer,
            _window(_coefficients),
            _generated_cost(4 * len(_coefficients)),
            attrs={"periodic": 1, "output_datatype": 1},
        )
    )

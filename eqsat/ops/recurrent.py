"""Recurrent layers: ``RNN``, ``GRU`` and ``LSTM`` in their opset-22 form.

All three share one frame: inputs ``X, W, R, B?, sequence_lens?, initial_h?`` (LSTM adds
``initial_c?`` and the peepholes ``P?``), outputs ``Y?, Y_h?`` (LSTM adds ``Y_c?``), directions
forward/reverse/bidirectional, ``layout`` 0 (time major) or 1 (batch major), ``clip`` on every gate
pre-activation and per-direction activation lists. The numpy references follow onnxruntime where
the specification leaves room:

* ``activation_alpha``/``activation_beta`` are consumed in order by the activations that take
  them (across both directions); a missing one takes onnxruntime's default (LeakyRelu 0.01,
  HardSigmoid 0.2/0.5, Elu 1.0, otherwise 0). Activation names are case-insensitive.
* A bidirectional layer given only one direction's activations uses them for both.
* ``sequence_lens`` is honoured at run time: a batch entry stops at its length, its Y rows past it
  are zero, its Y_h/Y_c are the state at its last step, and the reverse direction starts from its
  last valid step (steps past the length leave the state as it was).

float16 layers are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import EqsatError, InputError, ShapeError
from eqsat.ir import Value
from eqsat.ops import Cost, OpDef, register

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
LENGTH_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}

Array = np.ndarray
Attrs = dict[str, Any]
Activation = Callable[[Array, float, float], Array]
Acts = list[tuple[Activation, float, float]]


def _sigmoid(x: np.ndarray, _a: float, _b: float) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: 1/inf = 0
        return 1 / (1 + np.exp(-x))


def _elu(x: np.ndarray, a: float, _b: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1))


# name (lower case) -> (takes alpha, takes beta, default alpha, default beta, function)
ACTIVATIONS: dict[str, tuple[bool, bool, float, float, Activation]] = {
    "relu": (False, False, 0.0, 0.0, lambda x, a, b: np.maximum(x, 0)),
    "tanh": (False, False, 0.0, 0.0, lambda x, a, b: np.tanh(x)),
    "sigmoid": (False, False, 0.0, 0.0, _sigmoid),
    "affine": (True, True, 0.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (True, False, 0.01, 0.0, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (True, False, 0.0, 0.0, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (True, True, 0.0, 0.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (True, True, 0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (True, False, 1.0, 0.0, _elu),
    "softsign": (False, False, 0.0, 0.0, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (False, False, 0.0, 0.0, lambda x, a, b: np.logaddexp(0, x)),
}


class _Spec:
    """What one recurrent op is: gate count, activations per direction, inputs and outputs."""

    def __init__(self, op: str, gates: int, activations: tuple[str, ...], inputs: tuple[str, ...]):
        self.op = op
        self.gates = gates
        self.activations = activations
        self.inputs = inputs
        self.outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")

    def input(self, inputs: list[Any], name: str) -> Any:
        index = self.inputs.index(name)
        return inputs[index] if index < len(inputs) else None


SPECS = {
    "RNN": _Spec("RNN", 1, ("Tanh",), ("X", "W", "R", "B", "sequence_lens", "initial_h")),
    "GRU": _Spec("GRU", 3, ("Sigmoid", "Tanh"), ("X", "W", "R", "B", "sequence_lens", "initial_h")),
    "LSTM": _Spec(
        "LSTM",
        4,
        ("Sigmoid", "Tanh", "Tanh"),
        ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    ),
}


def _direction(attrs: dict[str, Any]) -> int:
    direction = attrs["direction"]
    if direction not in DIRECTIONS:
        raise ShapeError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    return DIRECTIONS[direction]


def activations(spec: _Spec, attrs: dict[str, Any]) -> list[list[tuple[Activation, float, float]]]:
    """Per direction, the activation functions with their alpha and beta."""
    num_dir = _direction(attrs)
    names = list(attrs["activations"] or spec.activations * num_dir)
    per_dir = len(spec.activations)
    if len(names) == per_dir and num_dir == 2:
        names = names * 2
    if len(names) != per_dir * num_dir:
        raise ShapeError(
            f"activations must list {per_dir} function(s) per direction ({per_dir * num_dir} "
            f"in all), got {len(names)}: {names}"
        )
    alphas = list(attrs["activation_alpha"] or [])
    betas = list(attrs["activation_beta"] or [])
    funcs = []
    for name in names:
        key = str(name).lower()
        if key not in ACTIVATIONS:
            known = ["Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu"]
            known += ["ScaledTanh", "HardSigmoid", "Elu", "Softsign", "Softplus"]
            raise ShapeError(f"unknown activation {name!r}; known: {', '.join(known)}")
        takes_alpha, takes_beta, alpha, beta, func = ACTIVATIONS[key]
        if takes_alpha and alphas:
            alpha = float(alphas.pop(0))
        if takes_beta and betas:
            beta = float(betas.pop(0))
        funcs.append((func, alpha, beta))
    return [funcs[d * per_dir : (d + 1) * per_dir] for d in range(num_dir)]


# ------------------------------------------------------------------ shape rule
def _expect(value: Value | None, name: str, shape: tuple[int, ...]) -> None:
    if value is not None and value.shape != shape:
        raise ShapeError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")


def _infer(spec: _Spec) -> Callable[..., list[Any]]:
    def infer(inputs: list[Value | None], attrs: dict[str, Any], num_outputs: int) -> list[Any]:
        x, w, r = inputs[0], inputs[1], inputs[2]
        if x is None or w is None or r is None:
            raise ShapeError("X, W and R must be given")
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"X must be float16, float32 or float64, got {x.dtype}")
        for name in spec.inputs:
            value = spec.input(inputs, name)
            if value is not None and name != "sequence_lens" and value.dtype != x.dtype:
                raise ShapeError(f"{name} has dtype {value.dtype}, X has {x.dtype}")
        if x.rank != 3 or w.rank != 3 or r.rank != 3:
            raise ShapeError(
                f"X, W and R must be 3-D, got shapes {list(x.shape)}, {list(w.shape)}, "
                f"{list(r.shape)}"
            )
        layout = attrs["layout"]
        if layout not in (0, 1):
            raise ShapeError(f"layout must be 0 or 1, got {layout}")
        num_dir = _direction(attrs)
        seq, batch, size = x.shape if layout == 0 else (x.shape[1], x.shape[0], x.shape[2])
        hidden = r.shape[2]
        if attrs["hidden_size"] is not None and attrs["hidden_size"] != hidden:
            raise ShapeError(f"hidden_size is {attrs['hidden_size']} but R is {list(r.shape)}")
        gates = spec.gates * hidden
        _expect(w, "W", (num_dir, gates, size))
        _expect(r, "R", (num_dir, gates, hidden))
        _expect(spec.input(inputs, "B"), "B", (num_dir, 2 * gates))
        _expect(spec.input(inputs, "sequence_lens"), "sequence_lens", (batch,))
        lengths = spec.input(inputs, "sequence_lens")
        if lengths is not None:
            if lengths.dtype not in LENGTH_DTYPES:
                raise ShapeError(f"sequence_lens must be int32 (or int64), got {lengths.dtype}")
            if lengths.const is not None:
                _check_lengths(lengths.const, seq)
        state = (num_dir, batch, hidden) if layout == 0 else (batch, num_dir, hidden)
        for name in ("initial_h", "initial_c"):
            if name in spec.inputs:
                _expect(spec.input(inputs, name), name, state)
        if "P" in spec.inputs:
            _expect(spec.input(inputs, "P"), "P", (num_dir, 3 * hidden))
        if spec.op == "LSTM" and attrs["input_forget"] not in (0, 1):
            raise ShapeError(f"input_forget must be 0 or 1, got {attrs['input_forget']}")
        if attrs["clip"] is not None and not attrs["clip"] > 0:
            raise ShapeError(f"clip must be positive, got {attrs['clip']}")
        activations(spec, attrs)  # validates names and counts
        y = (seq, num_dir, batch, hidden) if layout == 0 else (batch, seq, num_dir, hidden)
        types = [(y, x.dtype)] + [(state, x.dtype)] * (len(spec.outputs) - 1)
        return types[:num_outputs]

    return infer


def _check_lengths(lengths: np.ndarray, seq: int, error: type[EqsatError] = ShapeError) -> None:
    # A constant sequence_lens is checked when the node is made, a fed one when it runs.
    bad = (lengths < 0) | (lengths > seq)
    if np.any(bad):
        raise error(f"sequence_lens {lengths.tolist()} must lie in [0, {seq}]")


# ------------------------------------------------------------------ references
def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return x if clip is None else np.clip(x, -clip, clip)


def _rnn_cell(
    gx: Array, h: Array, c: Array, r: Array, rb: Array, p: Array | None, acts: Acts, attrs: Attrs
) -> tuple[Array, Array | None]:
    (f, fa, fb) = acts[0]
    return f(_clip(gx + h @ r.T + rb, attrs["clip"]), fa, fb), None


def _gru_cell(
    gx: Array, h: Array, c: Array, r: Array, rb: Array, p: Array | None, acts: Acts, attrs: Attrs
) -> tuple[Array, Array | None]:
    (f, fa, fb), (g, ga, gb) = acts
    clip = attrs["clip"]
    hidden = h.shape[-1]
    zr = gx[:, : 2 * hidden] + h @ r[: 2 * hidden].T + rb[: 2 * hidden]
    z = f(_clip(zr[:, :hidden], clip), fa, fb)
    reset = f(_clip(zr[:, hidden:], clip), fa, fb)
    r_h, rb_h = r[2 * hidden :], rb[2 * hidden :]
    if attrs["linear_before_reset"]:
        pre = gx[:, 2 * hidden :] + reset * (h @ r_h.T + rb_h)
    else:
        pre = gx[:, 2 * hidden :] + (reset * h) @ r_h.T + rb_h
    candidate = g(_clip(pre, clip), ga, gb)
    return (1 - z) * candidate + z * h, None


def _lstm_cell(
    gx: Array, h: Array, c: Array, r: Array, rb: Array, p: Array | None, acts: Acts, attrs: Attrs
) -> tuple[Array, Array | None]:
    (f, fa, fb), (g, ga, gb), (hf, ha, hb) = acts
    clip = attrs["clip"]
    hidden = h.shape[-1]
    gates = gx + h @ r.T + rb
    pre_i, pre_o, pre_f, pre_c = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
    p_i, p_o, p_f = (
        (0, 0, 0) if p is None else (p[:hidden], p[hidden : 2 * hidden], p[2 * hidden :])
    )
    i = f(_clip(pre_i + p_i * c, clip), fa, fb)
    forget = 1 - i if attrs["input_forget"] else f(_clip(pre_f + p_f * c, clip), fa, fb)
    c_new = forget * c + i * g(_clip(pre_c, clip), ga, gb)
    o = f(_clip(pre_o + p_o * c_new, clip), fa, fb)
    return o * hf(c_new, ha, hb), c_new


CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


def recurrent(
    spec: _Spec, arrays: list[np.ndarray | None], attrs: dict[str, Any]
) -> list[np.ndarray]:
    """Y, Y_h (and Y_c for LSTM) of one recurrent layer, all outputs computed."""
    x = arrays[0]
    out_dtype = x.dtype
    work = np.float32 if x.dtype == np.float16 else x.dtype

    def get(name: str) -> np.ndarray | None:
        value = spec.input(arrays, name)
        return None if value is None else np.asarray(value).astype(work, copy=False)

    x, w, r = get("X"), get("W"), get("R")
    layout = attrs["layout"]
    h0, c0 = get("initial_h"), get("initial_c") if spec.op == "LSTM" else None
    if layout == 1:
        x = x.swapaxes(0, 1)
        h0 = None if h0 is None else h0.swapaxes(0, 1)
        c0 = None if c0 is None else c0.swapaxes(0, 1)
    seq, batch, _ = x.shape
    num_dir, hidden = w.shape[0], r.shape[2]
    gates = spec.gates * hidden
    b = get("B")
    b = np.zeros((num_dir, 2 * gates), work) if b is None else b
    p = get("P") if spec.op == "LSTM" else None
    lengths_in = spec.input(arrays, "sequence_lens")
    lengths = np.full(batch, seq) if lengths_in is None else np.asarray(lengths_in, np.int64)
    _check_lengths(lengths, seq, InputError)
    acts = activations(spec, attrs)
    cell = CELLS[spec.op]

    y = np.zeros((seq, num_dir, batch, hidden), work)
    y_h = np.zeros((num_dir, batch, hidden), work)
    y_c = np.zeros((num_dir, batch, hidden), work)
    for d in range(num_dir):
        reverse = attrs["direction"] == "reverse" or d == 1
        # The input projection of every step at once: one matmul instead of seq small ones.
        gx = x @ w[d].T + b[d, :gates]
        h = np.zeros((batch, hidden), work) if h0 is None else h0[d]
        c = np.zeros((batch, hidden), work) if c0 is None else c0[d]
        for t in range(seq - 1, -1, -1) if reverse else range(seq):
            h_new, c_new = cell(
                gx[t], h, c, r[d], b[d, gates:], None if p is None else p[d], acts[d], attrs
            )
            active = (t < lengths)[:, None]
            h = np.where(active, h_new, h)
            if c_new is not None:
                c = np.where(active, c_new, c)
            y[t, d] = np.where(active, h_new, 0)
        y_h[d], y_c[d] = h, c
    if layout == 1:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.swapaxes(0, 1), y_c.swapaxes(0, 1)
    results = [y, y_h, y_c][: len(spec.outputs)]
    return [np.ascontiguousarray(a).astype(out_dtype, copy=False) for a in results]


def _reference(spec: _Spec) -> Callable[..., list[Any]]:
    def reference(arrays: list[Any], attrs: dict[str, Any], outputs: list[Any]) -> list[Any]:
        results = recurrent(spec, arrays, attrs)
        return [a if o is not None else None for a, o in zip(results, outputs, strict=False)]

    return reference


# ------------------------------------------------------------------ cost
# Elementwise FLOPs per hidden unit and step besides the two matmuls: bias and recurrent adds,
# activations (an exp or tanh counted as 4), clipping ignored; LSTM cell/hidden updates, GRU's
# interpolation and reset product.
ELEMENTWISE_FLOPS = {"RNN": 6, "GRU": 24, "LSTM": 34}


def _cost(spec: _Spec) -> Callable[..., Cost]:
    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        x, w, r = inputs[0], inputs[1], inputs[2]
        num_dir, gates, size = w.shape
        hidden = r.shape[2]
        seq, batch = (x.shape[0], x.shape[1]) if attrs["layout"] == 0 else x.shape[1::-1]
        matmul = 2 * batch * gates * (size + hidden)
        per_step = matmul + ELEMENTWISE_FLOPS[spec.op] * batch * hidden
        if spec.op == "LSTM" and spec.input(inputs, "P") is not None:
            per_step += 6 * batch * hidden
        read = sum(v.nbytes for v in inputs if v is not None)
        # Every output is computed even when omitted; only the kept ones are written out.
        written = sum(v.nbytes for v in outputs if v is not None)
        return Cost(float(num_dir * seq * per_step), float(read), float(written))

    return cost


def _attrs(spec: _Spec) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "activation_alpha": None,
        "activation_beta": None,
        "activations": None,
        "clip": None,
        "direction": "forward",
        "hidden_size": None,
        "layout": 0,
    }
    if spec.op == "GRU":
        attrs["linear_before_reset"] = 0
    if spec.op == "LSTM":
        attrs["input_forget"] = 0
    return attrs


for _spec in SPECS.values():
    register(
        OpDef(
            _spec.op,
            _infer(_spec),
            _reference(_spec),
            _cost(_spec),
            min_inputs=3,
            max_inputs=len(_spec.inputs),
            min_outputs=0,
            max_outputs=len(_spec.outputs),
            attrs=_attrs(_spec),
            doc=f"{_spec.op} recurrent layer (gates {_spec.gates}; all directions and layouts).",
        )
    )

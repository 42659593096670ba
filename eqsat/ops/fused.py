"""Fused operators: what fusion rules produce, each one kernel (DESIGN principle 1).

* ``FusedElementwise(x0..xN-1; body, dtype)``: N <= 8 inputs broadcast numpy-style; ``body`` is a
  scalar expression of the language of :mod:`eqsat.ops.elementwise` over operands ``{0}..{N-1}``;
  the output has the broadcast shape and dtype ``dtype``. SiLU is ``"({0} / (1 + exp(-{0})))"``.
* ``FusedConv``, ``FusedConvTranspose``, ``FusedMatMul``, ``FusedGemm``: the base op's inputs
  (``num_base_inputs`` of them, omitted optional ones as ``None``) then K <= 8 epilogue tensors.
  ``epilogue`` is a scalar expression where ``{0}`` is the base op's result (its own bias applied)
  and ``{1}..{K}`` the extra inputs, broadcast to the output shape.
* ``Attention(Q, K, V[, mask]; scale, nan_to_zero)``: ``softmax(Q @ K^T * scale + mask) @ V`` over
  the last two axes; Q is [..., S, D], K [..., L, D], V [..., L, Dv], mask broadcasts to
  [..., S, L]. A row whose scores are all -inf (or hold a NaN or +inf) has a NaN softmax; with
  ``nan_to_zero=1`` its probabilities are 0 instead, the ``Where(IsNaN(p), 0, p)`` guard that
  SDPA exports put after the softmax (so a fully masked query row gives 0 @ V).

Costs are honest for a fused kernel: each input is read once, the output written once, and no
intermediate touches memory; the FLOPs are those of the base op plus the scalar body per element.
These ops export in the ONNX domain ``eqsat`` (:data:`DOMAIN`).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import ShapeError
from eqsat.ir import Value
from eqsat.ops import OPS, REQUIRED, Cost, OpDef, broadcast_shapes, register
from eqsat.ops.elementwise import SCALAR_FUNCTIONS, _div

DOMAIN = "eqsat"
# A fused kernel reads at most this many tensors. The bound keeps the e-graph finite: merging
# fused nodes adds one alternative per way to cut a tree of elementwise ops into kernels, and with
# the inputs bounded that number is bounded too. Eight also keeps a generated kernel's argument
# list and register pressure small, and covers every epilogue seen in the zoo (bias, residual,
# activation parameters).
MAX_FUSED_INPUTS = 8
EPILOGUE_BASES = {"FusedConv": "Conv", "FusedConvTranspose": "ConvTranspose"}
EPILOGUE_BASES |= {"FusedMatMul": "MatMul", "FusedGemm": "Gemm"}
FUSED_OPS = frozenset({"FusedElementwise", "Attention", *EPILOGUE_BASES})

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: _div,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
}
_NAMES = {"inf": np.inf, "nan": np.nan}


# ------------------------------------------------------------------ scalar bodies
@functools.lru_cache(maxsize=4096)
def parse_body(body: str) -> tuple[ast.expr, int]:
    """The parsed body and the number of operands it needs (1 + its largest ``{k}``)."""
    used = [int(k) for k in re.findall(r"\{(\d+)\}", body)]
    text = re.sub(r"\{(\d+)\}", r"_op\1", body)
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ShapeError(f"fused body {body!r} is not a scalar expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in SCALAR_FUNCTIONS
        ):
            raise ShapeError(f"fused body {body!r} calls an unknown function")
        if isinstance(node, ast.Name) and not (
            node.id.startswith("_op") or node.id in _NAMES or node.id in SCALAR_FUNCTIONS
        ):
            raise ShapeError(f"fused body {body!r} names unknown {node.id!r}")
    return tree, (max(used) + 1 if used else 0)


@functools.lru_cache(maxsize=4096)
def body_flops(body: str) -> int:
    """Arithmetic operations per element (transcendental calls count as 10)."""
    tree, _ = parse_body(body)
    flops = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.Compare | ast.BoolOp | ast.IfExp):
            flops += 1
        elif isinstance(node, ast.Call):
            flops += 1 if node.func.id in ("min", "max", "abs", "cast") else 10  # type: ignore[attr-defined]
    return flops


def evaluate_body(body: str, operands: list[np.ndarray]) -> np.ndarray:
    """``body`` on numpy arrays (broadcast); float16 is computed in float32 like the references."""
    tree, _ = parse_body(body)
    args = [a.astype(np.float32) if a.dtype == np.float16 else a for a in operands]
    with np.errstate(all="ignore"):
        return np.asarray(_eval(tree, args))


def _eval(node: ast.expr, args: list[np.ndarray]) -> Any:
    if isinstance(node, ast.Name):
        if node.id.startswith("_op"):
            return args[int(node.id[3:])]
        return _NAMES[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _typed(_eval(node.left, args), _eval(node.right, args))
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, args)
        if isinstance(node.op, ast.USub):
            return np.negative(value)
        if isinstance(node.op, ast.Not):
            return np.logical_not(value)
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, args)
        out = None
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, args)
            r = _CMPOPS[type(op)](*_typed(left, right))
            out = r if out is None else np.logical_and(out, r)
            left = right
        return out
    if isinstance(node, ast.BoolOp):
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return functools.reduce(combine, (_eval(v, args) for v in node.values))
    if isinstance(node, ast.IfExp):
        return np.where(_eval(node.test, args), _eval(node.body, args), _eval(node.orelse, args))
    if isinstance(node, ast.Call):
        fn = SCALAR_FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
        return fn(*(_eval(a, args) for a in node.args))
    raise ShapeError(f"unsupported construct {type(node).__name__} in a fused body")


def _typed(a: Any, b: Any) -> tuple[Any, Any]:
    """A literal takes the other operand's dtype (C's rule for ``x / 2`` on integers)."""
    if isinstance(a, int | float) and isinstance(b, np.ndarray | np.generic):
        a = np.asarray(a, b.dtype) if b.dtype.kind in "iuf" else a
    elif isinstance(b, int | float) and isinstance(a, np.ndarray | np.generic):
        b = np.asarray(b, a.dtype) if a.dtype.kind in "iuf" else b
    elif isinstance(a, int | float) and isinstance(b, int | float):
        a, b = np.asarray(a), np.asarray(b)
    return a, b


def _check_body(body: Any, operands: int, what: str) -> str:
    if not isinstance(body, str):
        raise ShapeError(f"{what} must be a string, got {body!r}")
    # parse_body is cached per body, so checking a body again costs a dictionary lookup.
    _, needed = parse_body(body)
    if needed > operands:
        raise ShapeError(f"{what} {body!r} uses operand {{{needed - 1}}}, only {operands} given")
    return body


def canonical_elementwise(
    ins: list[Any], attrs: dict[str, Any]
) -> tuple[str, list[Any], dict[str, Any]]:
    """A FusedElementwise node as it is built: each distinct input (by identity) read once, and a
    kernel of one attribute-free elementwise op on distinct operands as that plain op."""
    unique: list[Any] = []
    index: dict[int, int] = {}
    mapping = {}
    for k, v in enumerate(ins):
        if id(v) not in index:
            index[id(v)] = len(unique)
            unique.append(v)
        mapping[k] = index[id(v)]
    body = re.sub(r"\{(\d+)\}", lambda m: f"{{{mapping[int(m.group(1))]}}}", attrs["body"])
    plain = _plain_bodies().get((body, len(unique)))
    if plain is not None:
        return plain, unique, {}
    return "FusedElementwise", unique, {**attrs, "body": body}


@functools.cache
def _plain_bodies() -> dict[tuple[str, int], str]:
    """Bodies of one attribute-free elementwise op on distinct operands -> that op (built on first
    use, once every op is registered)."""
    from eqsat.ops.elementwise import scalar_expr

    found: dict[tuple[str, int], str] = {}
    for name, opdef in OPS.items():
        if not opdef.elementwise or opdef.attrs or name in ("Identity", "Dropout", "Clip"):
            continue
        n = opdef.min_inputs
        found.setdefault((scalar_expr(name, [f"{{{k}}}" for k in range(n)], {}), n), name)
    return found


def _dtype(name: Any) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise ShapeError(f"fused op: dtype {name!r} is not a numpy dtype name") from None


# ------------------------------------------------------------------ FusedElementwise
def _fe_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    if any(v is None for v in inputs):
        raise ShapeError("FusedElementwise: inputs cannot be omitted")
    _check_body(attrs["body"], len(inputs), "FusedElementwise body")
    shape = broadcast_shapes(*(v.shape for v in inputs))  # type: ignore[union-attr]
    return [(shape, _dtype(attrs["dtype"]))]


def _fe_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    result = evaluate_body(attrs["body"], arrays)
    return [np.broadcast_to(result, shape).astype(outs[0].dtype)]


def _fe_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    out = outputs[0]
    read = sum(v.nbytes for v in inputs if v is not None)
    return Cost(float(body_flops(attrs["body"]) * out.size), float(read), float(out.nbytes))


register(
    OpDef(
        "FusedElementwise",
        _fe_infer,
        _fe_reference,
        _fe_cost,
        min_inputs=1,
        max_inputs=MAX_FUSED_INPUTS,
        attrs={"body": REQUIRED, "dtype": REQUIRED},
        doc="A chain or tree of elementwise ops as one kernel: body over operands {0}..{N-1}.",
    )
)


# ------------------------------------------------------------------ base op + epilogue
def _split(inputs: list[Any], attrs: dict[str, Any], op: str) -> tuple[list[Any], list[Any]]:
    n = attrs["num_base_inputs"]
    base = OPS[EPILOGUE_BASES[op]]
    if (
        not isinstance(n, int)
        or not base.min_inputs <= n <= base.max_inputs
        or len(inputs) < base.min_inputs
    ):
        raise ShapeError(f"{op}: num_base_inputs {n!r} does not fit {len(inputs)} inputs")
    # Fewer inputs than the base's: its trailing optional ones were left out (a Conv without
    # bias, its epilogue without tensor operands), as ONNX and the decoder write such nodes.
    inputs = [*inputs, *[None] * (n - len(inputs))]
    return inputs[:n], inputs[n:]


def _base_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in ("num_base_inputs", "epilogue")}


def _epilogue_opdef(name: str) -> OpDef:
    base = OPS[EPILOGUE_BASES[name]]

    def infer(inputs: list[Value | None], attrs: dict[str, Any], n_out: int) -> list[Any]:
        ins, extra = _split(inputs, attrs, name)
        if any(v is None for v in extra):
            raise ShapeError(f"{name}: epilogue inputs cannot be omitted")
        _check_body(attrs["epilogue"], 1 + len(extra), f"{name} epilogue")
        (out,) = base.infer(ins, _base_attrs(attrs), 1)
        shape, dtype = out
        try:
            full = broadcast_shapes(shape, *(v.shape for v in extra))  # type: ignore[union-attr]
        except ShapeError:
            full = None
        if full != tuple(shape):
            raise ShapeError(
                f"{name}: epilogue inputs {[v.shape for v in extra]} do not broadcast "  # type: ignore[union-attr]
                f"to the output shape {tuple(shape)}"
            )
        return [(tuple(shape), dtype)]

    def reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
        ins, extra = _split(arrays, attrs, name)
        (y,) = base.reference(ins, _base_attrs(attrs), outs)
        y = np.asarray(y)
        result = evaluate_body(attrs["epilogue"], [y, *extra])
        return [np.broadcast_to(result, y.shape).astype(outs[0].dtype)]

    def cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
        ins, extra = _split(inputs, attrs, name)
        c = base.cost(ins, outputs, _base_attrs(attrs))
        out = outputs[0]
        flops = body_flops(attrs["epilogue"]) * out.size  # type: ignore[union-attr]
        read = sum(v.nbytes for v in extra if v is not None)
        return Cost(c.flops + flops, c.bytes_read + read, c.bytes_written)

    attrs = dict(base.attrs)
    attrs.update({"num_base_inputs": base.max_inputs, "epilogue": "{0}"})
    return OpDef(
        name,
        infer,
        reference,
        cost,
        min_inputs=base.min_inputs,
        max_inputs=base.max_inputs + MAX_FUSED_INPUTS,
        attrs=attrs,
        doc=f"{base.name} with an elementwise epilogue over its result and extra inputs.",
    )


for _name in EPILOGUE_BASES:
    register(_epilogue_opdef(_name))


# ------------------------------------------------------------------ Attention
def _attn_infer(inputs: list[Value | None], attrs: dict[str, Any], _: int) -> list[Any]:
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    if q is None or k is None or v is None:
        raise ShapeError("Attention: Q, K and V are required")
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ShapeError(
            f"Attention: Q, K, V must share a rank >= 2, got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"Attention: Q {q.shape}, K {k.shape}, V {v.shape} do not fit")
    if len({q.dtype, k.dtype, v.dtype}) != 1 or q.dtype.kind != "f":
        raise ShapeError("Attention: Q, K, V must share one floating-point dtype")
    lead = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    scores = (*lead, q.shape[-2], k.shape[-2])
    if mask is not None and broadcast_shapes(scores, mask.shape) != scores:
        raise ShapeError(f"Attention: mask {mask.shape} does not broadcast to {scores}")
    if not isinstance(attrs["scale"], float | int):
        raise ShapeError(f"Attention: scale must be a number, got {attrs['scale']!r}")
    if attrs["nan_to_zero"] not in (0, 1):
        raise ShapeError(f"Attention: nan_to_zero must be 0 or 1, got {attrs['nan_to_zero']!r}")
    return [((*lead, q.shape[-2], v.shape[-1]), q.dtype)]


def _attn_reference(arrays: list[Any], attrs: dict[str, Any], outs: list[Any]) -> list[Any]:
    q, k, v = arrays[:3]
    mask = arrays[3] if len(arrays) > 3 else None
    dt = np.dtype(np.float32) if q.dtype == np.float16 else q.dtype
    s = np.matmul(q.astype(dt), np.swapaxes(k.astype(dt), -1, -2)) * dt.type(attrs["scale"])
    if mask is not None:
        s = s + mask.astype(dt)
    # Rows of -inf scores: -inf - -inf is NaN, a NaN softmax row as onnxruntime's Softmax gives.
    with np.errstate(invalid="ignore"):
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        p = s / s.sum(axis=-1, keepdims=True)
    if attrs["nan_to_zero"]:
        p = np.where(np.isnan(p), dt.type(0), p)
    return [np.matmul(p, v.astype(dt)).astype(outs[0].dtype)]


def _attn_cost(inputs: list[Value | None], outputs: list[Value | None], attrs: dict) -> Cost:
    q, k, v = inputs[:3]
    out = outputs[0]
    batch = out.size // (out.shape[-1] * out.shape[-2]) if out.size else 0  # type: ignore[union-attr]
    s, l_, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]  # type: ignore[union-attr]
    flops = batch * (2 * s * l_ * d + 2 * s * l_ * dv + 15 * s * l_)
    read = sum(x.nbytes for x in inputs if x is not None)
    return Cost(float(flops), float(read), float(out.nbytes))  # type: ignore[union-attr]


register(
    OpDef(
        "Attention",
        _attn_infer,
        _attn_reference,
        _attn_cost,
        min_inputs=3,
        max_inputs=4,
        attrs={"scale": REQUIRED, "nan_to_zero": 0},
        doc="softmax(Q K^T * scale + mask) V as one kernel (NaN softmax rows as 0: nan_to_zero).",
    )
)

del _name

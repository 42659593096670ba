"""CPU steps for the compute-heavy ops: MatMul, Gemm and Conv (plain and fused) over BLAS.

Each MatMul/Gemm step writes the base op's result straight into its planned output buffer with
numpy's ``matmul`` (BLAS sgemm/dgemm), then applies everything elementwise that follows (Gemm's
alpha and beta*C, and a fused node's ``epilogue`` over its extra inputs) with one generated
kernel, in place over the output while it is still in cache. Convs (1-D and 2-D) take one of
three paths: depthwise 2-D convs with up to 7x7 taps a generated kernel
(:mod:`eqsat.lowering.cpu_depthwise_step`) with the bias and scalar epilogues applied on the fly; 3x3 stride-1 convs with enough tiles Winograd
F(4x4, 3x3) (:mod:`eqsat.lowering.cpu_winograd`, ~4x fewer multiply-adds, the epilogue applied
as the output is stored); every other conv im2col + GEMM by blocks of output rows with the bias
and epilogue applied per block, or a BLAS-free kernel for a few output positions
(:mod:`eqsat.lowering.cpu_conv`). Weights are reshaped (or Winograd-transformed) and made
contiguous once, at compile time.

Cases outside these paths (non-float dtypes, 3-D convs, weights that are not constants) return
``None`` and run on the numpy reference (a fused node's epilogue then still runs as a kernel).

With ``cpu.BLAS_GEMM_THREADS`` threads or more, GEMM steps of at least ``cpu.BLAS_GEMM_FLOPS`` run
on BLAS's own threads (:func:`~eqsat.lowering.cpu_gemm.threaded_matmul`); other big steps run as chunks on eqsat's pool
(:mod:`eqsat.lowering.cpu_threads`): GEMMs cut by :func:`~eqsat.lowering.cpu_gemm.matmul_parts` (by batch, rows or
columns), convs by blocks of output rows, output channels or tile rows (in
:mod:`~eqsat.lowering.cpu_conv` and :mod:`~eqsat.lowering.cpu_winograd`), depthwise convs by
(image, channel block); BLAS stays on one thread but for the products it is handed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import codegen, cpu_conv, cpu_depthwise_step, cpu_winograd
from eqsat.lowering.cpu import GEMM_CHUNKS_PER_THREAD as GEMM_CHUNKS
from eqsat.lowering.cpu import ElementwiseKernel, Env, Lowering, Step, StepFn
from eqsat.lowering.cpu_gemm import (
    PackedMatMul,
    few_rows_matmul,
    gemm_runner,
    matmul_parts,
    packed_matmul,
    tiles_matmul,
)
from eqsat.lowering.cpu_gemm_epilogue import (
    COLUMN,
    BlockEpilogue,
    block_epilogue,
    fused_gemm_runner,
    fused_packed_matmul,
    then_epilogue,
)
from eqsat.lowering.memory import Usage

from eqsat.ir import Node, Value
from eqsat.ops.conv import window_geometry

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Depthwise convs with more taps go to the direct conv of :mod:`~eqsat.lowering.cpu_conv`.
DEPTHWISE_TAPS = 49


def build_step(lowering: Lowering, node: Node) -> Step | None:
    builder = _BUILDERS.get(node.op)
    if builder is None or node.outputs[0] is None or node.outputs[0].dtype not in FLOATS:
        return None
    try:
        return builder(lowering, node)
    except codegen.Unsupported:
        return None  # an epilogue the kernels do not compute: the op's reference runs it


def _split(node: Node) -> tuple[list[Value | None], list[Value]]:
    """The base op's inputs and a fused node's extra epilogue inputs."""
    count = int(node.attrs.get("num_base_inputs", len(node.inputs)))
    extras = node.inputs[count:]
    if any(v is None for v in extras):
        raise ValueError(f"node {node.name!r}: an epilogue input is missing")
    return list(node.inputs[:count]), [v for v in extras if v is not None]


def _nothing(env: Env) -> None:
    pass


class Epilogue:
    """``out = f(out, extras..., tail...)`` in place, where ``tail`` are bias-like operands."""

    def __init__(
        self,
        lowering: Lowering,
        node: Node,
        base: str,
        extras: list[Value],
        tail: list[tuple[Value | None, np.ndarray | None, tuple[int, ...]]],
    ):
        out = node.outputs[0]
        epilogue = str(node.attrs.get("epilogue", "{0}"))
        expr = re.sub(r"\{0\}", lambda _: base, epilogue)
        self.kernel: ElementwiseKernel | None = None
        self.slots: list[int | None] = []
        self.expr, self.out = expr, out
        self.inputs: list[tuple[tuple[int, ...], np.dtype, np.ndarray | None]] = []
        if expr == "{0}":
            return
        for v in extras:
            self.inputs.append((v.shape, v.dtype, v.const))
            self.slots.append(None if v.const is not None else lowering.slot(v))
        for value, const, shape in tail:
            self.inputs.append((shape, out.dtype, const))
            self.slots.append(None if value is None else lowering.slot(value))
        # Operand 0 is the output itself: the update is in place.
        self.kernel = ElementwiseKernel(
            lowering, expr, [(out.shape, out.dtype, None), *self.inputs], out.shape, out.dtype,
            alias=0,
        )  # fmt: skip

    def block(self) -> BlockEpilogue | None:
        """This epilogue in the form GEMM lanes apply block by block, or None."""
        if self.kernel is None:
            return None
        return block_epilogue(self.expr, self.inputs, self.slots, self.out.shape, self.out.dtype)

    def column_bias(self) -> np.ndarray | None:
        """The constant (N,) vector where this epilogue is exactly ``{0} + bias`` along the
        output's last axis (a product kernel can start its sums from it), else None."""
        block = self.block()
        if block is None or len(block.operands) != 1:
            return None
        operand = block.operands[0]
        sums = ("{0}+{1}", "{1}+{0}")
        if operand.kind != COLUMN or operand.const is None:
            return None
        return operand.const if block.expr.replace(" ", "").strip("()") in sums else None

    def drop(self) -> None:
        """No epilogue from now on: the product computes it (:meth:`column_bias`)."""
        self.kernel, self.slots, self.inputs = None, [], []

    def reads(self) -> list[int]:
        return [s for s in self.slots if s is not None]

    def bound(self, o: int, arrays: dict[int, np.ndarray]) -> StepFn:
        """The epilogue over slot ``o`` as ``run(env)`` with planned buffers bound in."""
        if self.kernel is None:
            return _nothing
        return self.kernel.bound(o, [o, *self.slots], arrays)

    def __call__(self, env: Env, out: np.ndarray) -> None:
        if self.kernel is not None:
            self.kernel(out, [out, *(None if s is None else env[s] for s in self.slots)])


def _operand(lowering: Lowering, value: Value) -> tuple[np.ndarray | None, int | None]:
    return (value.const, None) if value.const is not None else (None, lowering.slot(value))


# ------------------------------------------------------------------------------ MatMul / Gemm
def _product(
    lowering: Lowering, parts: list[Any], flops: float, few: Any, epi: Epilogue, bound: StepFn,
    out_shape: tuple[int, ...], computed: bool,
) -> Callable[..., None]:  # fmt: skip
    """``mm(x, y, out, env)`` of a GEMM step: the few-rows kernel, BLAS's threads, the pool's
    parts or, on the calling thread, the tiles (``computed``: two computed operands,
    :func:`tiles_matmul`) or numpy; then ``epi`` (``bound``: its pass over the output; in the
    parts' lanes instead, block by block, where they run them)."""
    after = None if epi.kernel is None else bound
    if isinstance(few, PackedMatMul) and after is not None:
        fused = fused_packed_matmul(few, epi.block(), after)
        if fused is not None:
            return fused
    if few is None and parts:
        runner = gemm_runner(lowering, parts, flops, out_shape)
        return fused_gemm_runner(lowering, parts, flops, epi.block(), runner, after)
    return then_epilogue(few or (tiles_matmul if computed else np.matmul), after)


def _few_rows(epi: Epilogue, weights: np.ndarray, rows: int, pool: Any, count: int) -> Any:
    """:func:`few_rows_matmul` for a step with epilogue ``epi``, which it drops where the
    kernel adds it (a constant bias)."""
    mm = few_rows_matmul(weights, rows, pool, count, epi.column_bias())
    if getattr(mm, "adds_bias", False):
        epi.drop()
    return mm


def _matmul(lowering: Lowering, node: Node) -> Step | None:
    (a, b), extras = _split(node)
    out = node.outputs[0]
    if a is None or b is None or a.dtype not in FLOATS:
        return None
    epi = Epilogue(lowering, node, "{0}", extras, [])
    a_const, a_slot = _operand(lowering, a)
    b_const, b_slot = _operand(lowering, b)
    if b_const is not None:
        b_const = np.ascontiguousarray(b_const)
    o = lowering.slot(out)
    # A stack of rows times one matrix is a single GEMM, not a loop of small ones.
    flat = a.rank > 2 and b.rank == 2
    k, n = b.shape[-2:] if b.rank >= 2 else (b.shape[0], 1)

    x_shape = (int(np.prod(a.shape[:-1])), k) if flat else a.shape
    o_shape = (x_shape[0], n) if flat else out.shape
    flops = 2.0 * out.size * k
    count = lowering.split(flops, most=GEMM_CHUNKS)
    parts = matmul_parts(x_shape, b.shape, o_shape, count)

    # (a vector times a matrix, or a stack of them, has no rows to block: BLAS's gemv does it)
    few = None
    if b_const is not None and (flat or a.rank == 2):
        rows = x_shape[-2]
        blas = lowering.blas_threads(flops)
        few = packed_matmul(b_const, rows, lowering.pool, count, blas)
        few = few or _few_rows(epi, b_const, rows, lowering.pool, count)

    def bind(arrays: dict[int, np.ndarray]) -> StepFn:
        matmul = _product(
            lowering, parts, flops, few, epi, epi.bound(o, arrays), o_shape, b_const is None
        )
        fixed_out = arrays.get(o)
        if flat and fixed_out is not None:
            fixed_out = fixed_out.reshape(-1, n)
        if b_const is not None and fixed_out is not None:

            def run_fixed(env: Env) -> None:
                x = a_const if a_const is not None else env[a_slot]
                if flat:
                    x = np.ascontiguousarray(x).reshape(-1, k)
                matmul(x, b_const, fixed_out, env)

            return run_fixed

        def run_bound(env: Env) -> None:
            x = a_const if a_const is not None else env[a_slot]
            y = b_const if b_const is not None else env[b_slot]
            result = env[o]
            if flat:
                matmul(np.ascontiguousarray(x).reshape(-1, k), y, result.reshape(-1, n), env)
            else:
                matmul(x, y, result, env)

        return run_bound

    def unbound(env: Env) -> None:  # (steps run bound: see cpu._build_steps' caller)
        bind({})(env)

    reads = [s for s in (a_slot, b_slot) if s is not None] + epi.reads()
    return Step(unbound, Usage(reads, [o], True), "gemm", node.name, bind)


def _gemm(lowering: Lowering, node: Node) -> Step | None:
    base, extras = _split(node)
    a, b = base[0], base[1]
    c = base[2] if len(base) > 2 else None
    out = node.outputs[0]
    if a is None or b is None or a.dtype not in FLOATS:
        return None
    attrs = node.attrs
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    dtype = out.dtype.type
    a_const, a_slot = _operand(lowering, a)
    b_const, b_slot = _operand(lowering, b)
    trans_a, trans_b = bool(attrs["transA"]), bool(attrs["transB"])
    expr = "{0}"
    if b_const is not None:
        b_const = np.ascontiguousarray((b_const.T if trans_b else b_const) * dtype(alpha))
    elif alpha != 1.0:
        expr = f"({{0}} * {alpha!r})"
    if a_const is not None:
        a_const = np.ascontiguousarray(a_const.T if trans_a else a_const)
    tail: list[tuple[Value | None, np.ndarray | None, tuple[int, ...]]] = []
    if c is not None and beta != 0.0:
        index = len(extras) + 1
        if c.const is not None:
            tail.append((None, c.const * dtype(beta), c.shape))
            expr = f"({expr} + {{{index}}})"
        else:
            tail.append((c, None, c.shape))
            term = f"{{{index}}}" if beta == 1.0 else f"({{{index}}} * {beta!r})"
            expr = f"({expr} + {term})"
    epi = Epilogue(lowering, node, expr, extras, tail)
    o = lowering.slot(out)

    k_ = a.shape[0] if trans_a else a.shape[1]
    x_shape = (out.shape[0], k_)
    flops = 2.0 * out.size * k_
    count = lowering.split(flops, most=GEMM_CHUNKS)
    parts = matmul_parts(x_shape, (k_, out.shape[1]), out.shape, count)

    few = None
    if b_const is not None:
        blas = lowering.blas_threads(flops)
        few = packed_matmul(b_const, out.shape[0], lowering.pool, count, blas)
        few = few or _few_rows(epi, b_const, out.shape[0], lowering.pool, count)

    def bind(arrays: dict[int, np.ndarray]) -> StepFn:
        matmul = _product(
            lowering, parts, flops, few, epi, epi.bound(o, arrays), out.shape, b_const is None
        )

        def run_bound(env: Env) -> None:
            x = a_const if a_const is not None else (env[a_slot].T if trans_a else env[a_slot])
            y = b_const if b_const is not None else (env[b_slot].T if trans_b else env[b_slot])
            matmul(x, y, env[o], env)

        return run_bound

    def unbound(env: Env) -> None:  # (steps run bound: see cpu._build_steps' caller)
        bind({})(env)

    reads = [s for s in (a_slot, b_slot) if s is not None] + epi.reads()
    return Step(unbound, Usage(reads, [o], True), "gemm", node.name, bind)


# ------------------------------------------------------------------------------------- Conv
class _Scratch:
    """One im2col buffer per dtype, shared by every conv step (steps run one at a time)."""

    def __init__(self) -> None:
        self.arrays: dict[np.dtype, np.ndarray] = {}

    def get(self, dtype: np.dtype, size: int) -> np.ndarray:
        have = self.arrays.get(dtype)
        if have is None or have.size < size:
            have = self.arrays[dtype] = np.empty(size, dtype)
        return have[:size]


def _scratch(lowering: Lowering, purpose: str = "im2col") -> _Scratch:
    return lowering.shared.setdefault(purpose, _Scratch())


def _conv(lowering: Lowering, node: Node) -> Step | None:
    base, extras = _split(node)
    x, w = base[0], base[1]
    b = base[2] if len(base) > 2 else None
    out = node.outputs[0]
    if x is None or w is None or x.rank not in (3, 4) or x.dtype not in FLOATS or w.const is None:
        return None
    if b is not None and b.const is None:
        return None
    window = window_geometry(x.shape[2:], tuple(w.shape[2:]), node.attrs)
    group = int(node.attrs["group"])
    c_, m_ = x.shape[1], w.shape[0]
    dtype = out.dtype
    bias = np.zeros(m_, dtype) if b is None else np.ascontiguousarray(b.const.reshape(-1), dtype)
    # Depthwise kernels unroll every tap: past ~7x7 they compile slowly and run slower than the
    # direct conv (basic-pitch's single-channel 1x256 stride-2 conv: 1.2 GFLOP/s, 20 direct).
    if x.rank == 4 and group == c_ and m_ == c_ and np.prod(window.kernel) <= DEPTHWISE_TAPS:
        return cpu_depthwise_step.build(lowering, node, x, extras, bias, window)
    if x.rank == 4 and cpu_winograd.applies(
        window.kernel, window.strides, window.dilations, group, c_, m_, window.out,
        lowering.workers,
    ):  # fmt: skip
        return _winograd(lowering, node, x, extras, bias, window)
    return cpu_conv.build(
        lowering,
        node,
        x,
        extras,
        bias,
        window,
        lambda purpose: _scratch(lowering, purpose),
        lambda: Epilogue(lowering, node, "{0}", extras, []),
    )


def _winograd_epilogue(
    node: Node, extras: list[Value], dtype: np.dtype
) -> tuple[str, list[tuple[Value, np.ndarray | None, str]]] | None:
    """The epilogue with scalar constants inlined and the other operands renumbered 1, 2, ...,
    each with its constant (or None) and kind ("full": shaped like the output, "channel": one
    value per output channel); None when an operand is neither."""
    from eqsat.lowering import cpu_depthwise

    out = node.outputs[0]
    n_, m_, oh, ow = out.shape
    epilogue = str(node.attrs.get("epilogue", "{0}"))
    scalars = cpu_depthwise.scalar_constants(extras)
    numbers: dict[int, int] = {}
    operands: list[tuple[Value, np.ndarray | None, str]] = []
    for i, v in enumerate(extras, 1):
        if i in scalars:
            continue
        if v.rank > 4 or v.dtype != dtype:
            return None
        shape = (1,) * (4 - v.rank) + tuple(v.shape)
        if shape[1:] == (m_, oh, ow) and shape[0] in (1, n_):
            kind = "full"
            const = None if v.const is None else np.ascontiguousarray(v.const.reshape(shape))
        elif shape == (1, m_, 1, 1):
            kind = "channel"
            const = None if v.const is None else np.ascontiguousarray(v.const.reshape(m_))
        else:
            return None
        numbers[i] = len(operands) + 1
        operands.append((v, const, kind))
    return cpu_depthwise.inline_and_renumber(epilogue, scalars, numbers), operands


def _winograd(
    lowering: Lowering, node: Node, x: Value, extras: list[Value], bias: np.ndarray, window: Any
) -> Step:
    """A 3x3 stride-1 conv through Winograd F(4x4, 3x3); the bias, and the epilogue where its
    operands are scalars, per-channel or output-shaped, applied as the output is stored."""
    out = node.outputs[0]
    w = node.inputs[1]
    assert w is not None and w.const is not None
    fused = _winograd_epilogue(node, extras, out.dtype)
    output = None
    if fused is not None and fused[0] != "{0}":
        try:
            output = cpu_winograd.load_fused(out.dtype, fused[0], [k for _, _, k in fused[1]])
            lowering.kernels += 1
        except codegen.Unsupported:
            fused = None
    flops = 2.0 * out.size // x.shape[0] * x.shape[1] * 9 / 4  # per image, ~2.25 C MACs per output
    parts = lowering.split(flops)
    plan = cpu_winograd.Winograd(
        w.const,
        bias,
        x.shape[2:],
        window.out,
        window.begin,
        out.dtype,
        output=output,
        parts=parts,
        threads=lowering.workers,
    )
    pool = lowering.pool if parts > 1 and plan.parallel else None
    size = plan.scratch_size(pool.threads if pool is not None else 1)
    # An epilogue the output transform cannot apply is a pass of its own.
    epi = Epilogue(lowering, node, "{0}", extras, []) if fused is None else None
    scratch = _scratch(lowering, "winograd")
    scratch.get(out.dtype, size)
    x_const, x_slot = _operand(lowering, x)
    o = lowering.slot(out)
    images = x.shape[0]
    # (constant, slot, shape the kernel indexes: (N or 1, M, OH, OW) or (M,))
    items = [
        (
            const,
            None if const is not None else lowering.slot(v),
            (1,) * (4 - v.rank) + tuple(v.shape) if kind == "full" else (out.shape[1],),
        )
        for v, const, kind in (fused[1] if fused is not None else [])
    ]

    def bind(arrays: dict[int, np.ndarray]) -> StepFn:
        conv = plan.bind(scratch.get(out.dtype, size), pool)
        epilogue = _nothing if epi is None else epi.bound(o, arrays)
        fixed = arrays.get(o)

        def run(env: Env) -> None:
            data = x_const if x_const is not None else env[x_slot]
            result = fixed if fixed is not None else env[o]
            tensors = [c if c is not None else env[slot].reshape(shape) for c, slot, shape in items]
            for i in range(images):
                per_image = [
                    t if t.ndim == 1 else t[i if t.shape[0] == images else 0] for t in tensors
                ]
                conv(data[i], result[i], *per_image)
            epilogue(env)

        return run

    def unbound(env: Env) -> None:
        bind({})(env)

    reads = ([x_slot] if x_slot is not None else []) + ([] if epi is None else epi.reads())
    reads += [slot for _, slot, _ in items if slot is not None]
    return Step(unbound, Usage(reads, [o], True), "conv", node.name, bind)


def _fused_reference_base(lowering: Lowering, node: Node) -> Step | None:
    """A fused op whose base runs on the numpy reference, with its epilogue as a kernel."""
    from eqsat import ops

    base_op = node.op.removeprefix("Fused")
    opdef = ops.get(base_op, node.name)
    base, extras = _split(node)
    base_attrs = {k: v for k, v in node.attrs.items() if k in opdef.attrs}
    epi = Epilogue(lowering, node, "{0}", extras, [])
    items = [None if v is None else _operand(lowering, v) for v in base]
    o = lowering.slot(node.outputs[0])
    base_node = Node(base_op, list(base), [node.outputs[0]], base_attrs, node.name)

    def run(env: Env) -> None:
        arrays: list[Any] = [
            None if item is None else (item[0] if item[0] is not None else env[item[1]])
            for item in items
        ]
        with np.errstate(all="ignore"):
            (result,) = opdef.evaluate(base_node, arrays)
        env[o][...] = result
        epi(env, env[o])

    reads = [it[1] for it in items if it is not None and it[1] is not None] + epi.reads()
    return Step(run, Usage(reads, [o], True), "reference", node.name)


def _conv_or_reference(lowering: Lowering, node: Node) -> Step | None:
    step = _conv(lowering, node)
    if step is None and node.op == "FusedConv":
        return _fused_reference_base(lowering, node)
    return step


def _conv_transpose(lowering: Lowering, node: Node) -> Step | None:
    """(Fused)ConvTranspose: :mod:`cpu_misc`'s scatter where taps do not overlap (stride =
    kernel), else GEMM + col2im (:mod:`cpu_deconv`), else the reference (with a fused op's
    epilogue as a kernel)."""
    from eqsat.lowering import cpu_deconv, cpu_misc

    step = cpu_misc.build_step(lowering, node) or cpu_deconv.build(lowering, node)
    if step is None and node.op == "FusedConvTranspose":
        return _fused_reference_base(lowering, node)
    return step


_BUILDERS: dict[str, Any] = {
    "MatMul": _matmul,
    "FusedMatMul": _matmul,
    "Gemm": _gemm,
    "FusedGemm": _gemm,
    "Conv": _conv_or_reference,
    "FusedConv": _conv_or_reference,
    "ConvTranspose": _conv_transpose,
    "FusedConvTranspose": _conv_transpose,
}

__all__ = ["build_step"]

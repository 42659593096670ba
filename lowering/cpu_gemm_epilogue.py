"""GEMM steps whose fused epilogue runs inside their lanes: each block of the output gets its
GEMM and then the epilogue (a bias, a residual, an activation) while it is still in cache, in
the same ``nogil`` call on the same thread.

Without this a ``FusedMatMul`` split over the pool ran as two passes: the blocks' GEMMs in lanes,
then the epilogue as an elementwise kernel over the whole output (a second map, or the calling
thread alone while the workers waited, for outputs under the kernels' split threshold). A
transformer layer has six such products; each paid the second pass and its hand-over.

The epilogue is generated from the fused node's expression (:func:`eqsat.lowering.codegen.translate`,
as the elementwise kernels are) over the output viewed as rows (every leading axis) by columns
(the last axis). Its values are the elementwise kernel's, but for a division by a scalar
constant: written in as a literal, it becomes a multiplication by the reciprocal (within an ulp). Its operands are one of three kinds: scalar
constants (written into the code as literals), ``column`` operands broadcast along the rows (a
bias ``[N]``), and ``full`` operands shaped like the output (a residual). Anything else (a
per-row operand, an operand of another dtype) leaves the epilogue as a pass of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from eqsat.lowering import codegen, cpu_lanes, kernel_cache
from eqsat.lowering.cpu import StepFn
from eqsat.lowering.cpu_depthwise import inline_and_renumber

_VERSION = "gemm epilogue 2"
FULL, COLUMN = "full", "column"


@dataclass(frozen=True)
class Operand:
    """An epilogue operand as the block epilogue reads it: ``kind`` :data:`FULL` (rows, N) or
    :data:`COLUMN` (N,); ``const`` its array already in that form, else ``slot``'s value is
    viewed so at run time."""

    kind: str
    const: np.ndarray | None
    slot: int | None


@dataclass(frozen=True)
class BlockEpilogue:
    """A fused epilogue in the form the lanes take: ``expr`` over ``{0}`` (the product) and
    ``{1}``, ``{2}``, ... (``operands`` in order), scalar constants written in as literals."""

    expr: str
    operands: tuple[Operand, ...]
    dtype: np.dtype


def block_epilogue(
    expr: str,
    inputs: list[tuple[tuple[int, ...], np.dtype, np.ndarray | None]],
    slots: list[int | None],
    out_shape: tuple[int, ...],
    out_dtype: np.dtype,
) -> BlockEpilogue | None:
    """``expr`` (operands ``{0}``: the product, ``{i}``: ``inputs[i - 1]``, each (shape, dtype,
    constant or None) with its slot) as a :class:`BlockEpilogue` over ``out_shape`` viewed as
    (rows, columns), or None where an operand is neither a scalar constant, a column nor
    output-shaped, or the expression is not one the kernels generate."""
    if expr == "{0}" or not out_shape or out_dtype not in codegen.FLOATS:
        return None
    rank, n = len(out_shape), out_shape[-1]
    rows = int(np.prod(out_shape[:-1], dtype=np.int64))
    scalars: dict[int, float] = {}
    numbers: dict[int, int] = {}
    operands: list[Operand] = []
    for i, ((shape, dtype, const), slot) in enumerate(zip(inputs, slots, strict=True), 1):
        if dtype != out_dtype or len(shape) > rank:
            return None
        if const is not None and const.size == 1:
            scalars[i] = float(const.reshape(-1)[0])
            continue
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        if padded == tuple(out_shape):
            kind, form = FULL, (rows, n)
        elif padded[-1] == n and all(d == 1 for d in padded[:-1]):
            kind, form = COLUMN, (n,)
        else:
            return None
        array = None if const is None else np.ascontiguousarray(const, out_dtype).reshape(form)
        numbers[i] = len(operands) + 1
        operands.append(Operand(kind, array, None if const is not None else slot))

    renumbered = inline_and_renumber(expr, scalars, numbers)
    block = BlockEpilogue(renumbered, tuple(operands), np.dtype(out_dtype))
    try:
        codegen.translate(block.expr, block.dtype)
    except codegen.Unsupported:
        return None
    return block


def epilogue_source(dtype: np.dtype, expr: str, kinds: list[str]) -> str:
    """A module with ``epilogue(out, r0, r1, c0, c1, t1, t2, ...)``, which applies ``expr`` to
    the block ``out[r0:r1, c0:c1]`` in place (operand ``t<i>`` (rows, N) where ``kinds[i-1]``
    is "full", (N,) where it is "column"), the lane ``lane_matmul_epilogue`` that computes
    each block's GEMM and then its epilogue, and ``lane_packed_epilogue``, which does the same
    panel by panel for :class:`~eqsat.lowering.cpu_gemm.PackedMatMul`'s blocks. Loops run over slices from 0 (indexed from c0 the
    loop does not vectorize)."""
    code, constants = codegen.translate(expr, dtype)
    args = "".join(f", t{i + 1}" for i in range(len(kinds)))
    slices = [
        f"v{i + 1} = t{i + 1}[r, c0:c1]" if kind == FULL else f"v{i + 1} = t{i + 1}[c0:c1]"
        for i, kind in enumerate(kinds)
    ]
    # Column operands do not depend on the row: sliced once per block.
    hoisted = [s for s, kind in zip(slices, kinds, strict=True) if kind == COLUMN]
    per_row = [s for s, kind in zip(slices, kinds, strict=True) if kind == FULL]
    loads = [f"x{i + 1} = v{i + 1}[p]" for i in range(len(kinds))]
    lines = codegen.module_header(
        [f"{_VERSION}: {expr}; operands {kinds}"], f"np.{dtype}", constants
    )
    lines += [
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        f"def epilogue(out, r0, r1, c0, c1{args}):",
        *(f"    {line}" for line in hoisted),
        "    for r in range(r0, r1):",
        "        row = out[r, c0:c1]",
        *(f"        {line}" for line in per_row),
        "        for p in range(row.shape[0]):",
        "            x0 = row[p]",
        *(f"            {line}" for line in loads),
        f"            row[p] = {code}",
        "",
        "",
        *cpu_lanes.imports(),
        "from eqsat.lowering.cpu_blas import gemm",
        *cpu_lanes.lane(
            "lane_matmul_epilogue", f"blocks, x, y, out{args}", "blocks.shape[0]",
            ["m_, n_ = out.shape"],
            [
                "r0, r1, c0, c1 = blocks[j, 0], blocks[j, 1], blocks[j, 2], blocks[j, 3]",
                "r1 = m_ if r1 < 0 else r1",
                "c1 = n_ if c1 < 0 else c1",
                "gemm(x[r0:r1], y[:, c0:c1], out[r0:r1, c0:c1])",
                f"epilogue(out, r0, r1, c0, c1{args})",
            ],
        ),
        "from eqsat.lowering.cpu_microkernel import packed_panel",
        *cpu_lanes.lane(
            "lane_packed_epilogue", f"blocks, x, panels, out{args}", "blocks.shape[0]",
            ["n_ = out.shape[1]", "width = panels.shape[2]"],
            [
                "r0, r1 = blocks[j, 0], blocks[j, 1]",
                "for q in range(blocks[j, 2], blocks[j, 3]):",
                "    packed_panel(x, panels, out, r0, r1, q)",
                f"    epilogue(out, r0, r1, q * width, min(q * width + width, n_){args})",
            ],
        ),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


MatMul = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def then_epilogue(matmul: MatMul, epilogue: StepFn | None) -> Callable[..., None]:
    """``mm(x, y, out, env)``: ``matmul(x, y, out)``, then ``epilogue(env)`` (a pass over the
    output) unless it is None."""
    if epilogue is None:
        return lambda x, y, out, env: matmul(x, y, out)

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray, env: Any) -> None:
        matmul(x, y, out)
        epilogue(env)

    return mm


def fused_gemm_runner(
    lowering: Any,
    parts: list[Any],
    flops: float,
    block: BlockEpilogue | None,
    matmul: MatMul,
    epilogue: StepFn | None,
) -> Callable[..., None]:
    """``mm(x, y, out, env)`` for a GEMM step cut into ``parts`` whose product ``matmul``
    computes: the epilogue applied block by block in the product's lanes where the pool runs
    them (:func:`fused_lane_matmul`), else ``matmul`` and then ``epilogue``'s pass."""
    from eqsat.lowering.cpu_gemm import lane_blocks

    pool = lowering.pool
    blocks = None if block is None else lane_blocks(parts)
    if (
        block is None or blocks is None or len(blocks) < 2 or pool is None or pool.threads < 2
        or lowering.blas_threads(flops) > 1 or not cpu_lanes.available(block.dtype)
    ):  # fmt: skip
        return then_epilogue(matmul, epilogue)
    assert epilogue is not None
    return fused_lane_matmul(pool, blocks, block, matmul, epilogue)


def _run_operands(block: BlockEpilogue) -> Callable[[Any, tuple[int, ...]], list[Any]]:
    """``operands(env, out_shape)``: ``block``'s operands for a run, constants as they are and
    the others read from the run's ``env``, viewed as (rows, N) ("full") or (N,) ("column")."""
    fixed = [o.const for o in block.operands]
    dynamic = [(k, o.slot, o.kind) for k, o in enumerate(block.operands) if o.const is None]
    contiguous = np.ascontiguousarray

    def operands(env: Any, shape: tuple[int, ...]) -> list[Any]:
        values: list[Any] = fixed.copy()
        for k, slot, kind in dynamic:
            values[k] = contiguous(env[slot]).reshape(shape if kind == FULL else (shape[1],))
        return values

    return operands


def fused_lane_matmul(
    pool: Any,
    blocks: np.ndarray,
    block: BlockEpilogue,
    unfused: MatMul,
    epilogue: StepFn,
) -> Callable[..., None]:
    """``mm(x, y, out, env)``: ``out = epilogue(x @ y)`` by output ``blocks`` (rows (r0, r1, c0,
    c1), -1: to the end) in lanes on ``pool``, each block's epilogue right after its GEMM.
    Operands that are not 2-D float rows take ``unfused`` and then ``epilogue(env)``, the
    separate pass."""
    dtype = block.dtype
    lane = kernel_cache.load(
        epilogue_source(dtype, block.expr, [o.kind for o in block.operands])
    ).lane_matmul_epilogue
    run = cpu_lanes.runner(pool, len(blocks))
    operands_of = _run_operands(block)
    item = dtype.itemsize

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray, env: Any) -> None:
        if not (
            x.ndim == y.ndim == out.ndim == 2 and x.dtype == dtype and y.dtype == dtype
            and out.dtype == dtype and x.strides[1] == item and y.strides[1] == item
            and out.strides[1] == item
        ):  # fmt: skip
            unfused(x, y, out)
            epilogue(env)
            return
        run(lane, blocks, x, y, out, *operands_of(env, out.shape))

    return mm


def fused_packed_matmul(
    packed: Any, block: BlockEpilogue | None, epilogue: StepFn
) -> Callable[..., None] | None:
    """``mm(x, y, out, env)``: ``out = epilogue(x @ weights)`` for a
    :class:`~eqsat.lowering.cpu_gemm.PackedMatMul`, each panel's epilogue right after its tile
    while the block is in cache (``lane_packed_epilogue``): in lanes on the product's pool, or
    on the calling thread alone. None where the epilogue has no block form (``block`` None) or
    lanes do not take the dtype; rows the blocks were not made for take the product and then
    ``epilogue(env)``, the separate pass.

    A transformer's 128 x 256 x 1024 product with its GELU took 302 us on one thread as the
    product then the pass, on the 2-core VM."""
    if block is None or not cpu_lanes.available(block.dtype) or block.dtype != packed.dtype:
        return None
    lane = kernel_cache.load(
        epilogue_source(block.dtype, block.expr, [o.kind for o in block.operands])
    ).lane_packed_epilogue
    pool = packed.pool
    run = None if pool is None else cpu_lanes.runner(pool, len(packed.blocks))
    operands_of = _run_operands(block)
    contiguous, blocks, panels = np.ascontiguousarray, packed.blocks, packed.panels
    alone = cpu_lanes.alone

    def mm(x: np.ndarray, y: np.ndarray, out: np.ndarray, env: Any) -> None:
        x = contiguous(x)
        if not packed.suits(x, out):
            packed(x, y, out)
            epilogue(env)
            return
        operands = operands_of(env, out.shape)
        if run is None:
            alone(lane, blocks, x, panels, out, *operands)
        else:
            run(lane, blocks, x, panels, out, *operands)

    return mm


__all__ = ["COLUMN", "FULL", "BlockEpilogue", "Operand", "block_epilogue", "epilogue_source",
           "fused_gemm_runner", "fused_lane_matmul", "fused_packed_matmul",
           "then_epilogue"]  # fmt: skip

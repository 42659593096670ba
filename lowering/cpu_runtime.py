"""The CPU executable at run time: one generated entry point per graph, BLAS thread pinning.

:func:`eqsat.lowering.cpu.compile` hands :class:`CpuExecutable` its steps, each a ``run(env)``
closure with its planned buffers and prepared constants already bound. The executable then writes
the Python source of one function for the whole graph and ``exec``s it once; ``run(feeds)`` is
that function. Everything it needs (the steps, the template of slots, each feed's dtype and shape,
each fresh buffer's shape and dtype, the BLAS thread-count calls) is a closure variable of it, and
the steps are called one after another in straight-line code: no loop, no attribute lookups, no
per-step dispatch. A step that is a generated kernel over fixed buffers (``run.direct``, set by
:meth:`~eqsat.lowering.cpu.ElementwiseKernel.bound`) is called without its wrapper.

Feeds take a fast path when they are a plain dict of exactly the graph's input names holding
``ndarray`` objects (not subclasses) whose dtype and shape match; anything else goes through
:func:`~eqsat.lowering.executable.check_feeds`, which converts or raises.

Outputs never alias memory that a later run writes, the caller's feeds or the graph's constants:
an output held in a buffer allocated fresh for this run (directly or through reshape views, and
sharing it with no other output) is handed out as it is; any other output is checked per run and
copied when it is a constant, a feed, or a view.

BLAS is pinned to one thread during a run whatever the executable's thread count: with
``threads > 1`` the steps split their own work over eqsat's pool (:mod:`eqsat.lowering.cpu_threads`),
and OpenBLAS's threads, which barrier-wait (spinning) after equal static splits, would compete
with it. The pin is set only when a step may call BLAS (``Step.blas``, else any step kind but
depthwise, copy and view), and only for libraries whose count differs.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from eqsat.lowering.executable import Executable, check_feeds
from eqsat.lowering.memory import MemoryPlan

from eqsat.ir import Graph

if TYPE_CHECKING:
    from eqsat.lowering.cpu import Step

# Formerly the size below which BLAS ran on one thread; BLAS now always does (OpenBLAS's threads
# stalled badly when another process held a core: an 8x784x256 GEMM took 24 ms on two threads of
# a loaded 2-core machine, 0.07 ms on one). Kept for callers that import it.
SMALL_BLAS_FLOPS = float(1 << 24)
BLAS_KINDS = frozenset({"gemm", "conv", "attention"})
# Step kinds that never call BLAS; every other kind may (the numpy reference, and "kernel" steps
# too: a Numba kernel may call np.dot, which is BLAS), so a run that has one pins BLAS.
NO_BLAS_KINDS = frozenset({"depthwise", "copy", "view"})
Env = list[Any]
StepFn = Callable[[Env], None]


class CpuExecutable(Executable):
    target = "cpu"

    def __init__(
        self,
        graph: Graph,
        steps: list[Step],
        template: Env,
        feed_slots: list[tuple[int, str]],
        out_slots: list[int],
        plan: MemoryPlan,
        threads: int,
        report: dict[str, Any],
        pool: Any = None,
    ):
        super().__init__(graph)
        self._pool = pool  # a cpu_threads.Pool when steps split over threads
        # One BLAS thread always: parallel steps split their work over eqsat's own pool.
        self._blas = BlasPin(1)
        self._run_steps = tuple(s.run for s in steps)
        self.steps = steps
        self._template = template
        self._feed_slots = tuple(feed_slots)
        self._fresh = tuple(
            (slot, shape, np.dtype(dtype)) for slot, shape, dtype in plan.fresh_specs
        )
        self._threads = threads
        self.memory = plan
        self.report = report
        self._const_ids = frozenset(id(v.const) for v in graph.outputs if v.const is not None)
        direct = _direct_outputs(steps, out_slots, plan)
        self._outputs = tuple(
            (value.name, slot, slot in direct)
            for value, slot in zip(graph.outputs, out_slots, strict=True)
        )
        pin = any(
            s.kind not in NO_BLAS_KINDS if getattr(s, "blas", None) is None else s.blas
            for s in steps
        )
        if pin:
            prime_blas(pool)
        self._quiet = any(s.kind == "reference" for s in steps)
        self.entry_source, entry, self._run_fed = _build_entry(self, pin, self._quiet)
        # An instance attribute: ``exe.run(feeds)`` calls the generated function itself.
        self.run = entry  # type: ignore[method-assign]

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.run(feeds)

    def _execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run_fed(*[feeds[name] for _, name in self._feed_slots])

    def profile(self, feeds: dict[str, Any], runs: int = 5) -> list[dict[str, Any]]:
        """Per-step timing: for each node, its op, step kind and best seconds over ``runs`` runs."""
        checked = self.check_feeds(feeds)
        best = [float("inf")] * len(self.steps)
        clock = time.perf_counter
        fp_set, fp_reset, fp_ignore = _FP_IGNORE
        for _ in range(runs):
            env = self._env(checked)
            self._blas.enter()
            fp = fp_set(fp_ignore) if self._quiet else None
            try:
                for i, run in enumerate(self._run_steps):
                    start = clock()
                    run(env)
                    best[i] = min(best[i], clock() - start)
            finally:
                if fp is not None:
                    fp_reset(fp)
                self._blas.exit()
        ops_by_name = {n.name: n.op for n in self.graph.nodes}
        return [
            {"node": s.node, "op": ops_by_name.get(s.node, ""), "kind": s.kind, "seconds": t}
            for s, t in zip(self.steps, best, strict=True)
        ]

    def _env(self, feeds: dict[str, np.ndarray]) -> Env:
        env = self._template.copy()
        for slot, name in self._feed_slots:
            env[slot] = feeds[name]
        for slot, shape, dtype in self._fresh:
            env[slot] = np.empty(shape, dtype)
        return env


def FOLDED(env: list[Any]) -> None:
    """The ``run`` of a view step made once at compile time (``cpu._fold_views``): the
    executable leaves it out of its runs."""


def _hand_out(array: Any, fed: tuple[np.ndarray, ...], const_ids: frozenset[int]) -> np.ndarray:
    """An output that may be a constant, a feed or a view of one: copied when it is."""
    array = np.asarray(array)
    # Never hand out the graph's constants, the caller's feeds or views of them.
    if id(array) in const_ids or not array.flags.owndata or any(array is f for f in fed):
        array = array.copy()
    return array


def _direct_outputs(steps: list[Step], out_slots: list[int], plan: MemoryPlan) -> set[int]:
    """Output slots always held in this run's fresh buffers (written there, or reshape views of
    them) that share no buffer with another output: safe to hand out without a check."""
    origin: dict[int, frozenset[int] | None] = {}
    for step in steps:
        usage = step.usage
        for w in usage.writes:
            if usage.planned:
                origin[w] = frozenset({w})
            elif step.kind == "view" and len(usage.reads) == 1:
                origin[w] = origin.get(usage.reads[0])  # None: a feed or a constant
            else:
                origin[w] = None  # a reference result: it may be anything
    direct = set()
    for i, slot in enumerate(out_slots):
        mine = origin.get(slot)
        if not mine or not mine <= plan.fresh:
            continue
        others = [plan.roots.get(s, frozenset()) for j, s in enumerate(out_slots) if j != i]
        if all(mine.isdisjoint(o) for o in others):
            direct.add(slot)
    return direct


def _build_entry(
    exe: CpuExecutable, pin: bool, quiet: bool
) -> tuple[str, Callable[[Any], dict[str, np.ndarray]], Callable[..., dict[str, np.ndarray]]]:
    """The source of the graph's entry point, ``run(feeds)``, and ``run_fed(*feed arrays)``;
    ``pin``: around the steps BLAS is pinned, ``quiet``: numpy's floating-point errors ignored."""
    specs = list(exe.input_specs)
    # Nothing here refers back to ``exe``, so the executable is freed as soon as it is unused.
    bind: dict[str, Any] = {
        "template": exe._template,
        "empty": np.empty,
        "ndarray": np.ndarray,
        "check_feeds": lambda feeds: check_feeds(specs, feeds),
        "hand_out": _hand_out,
        "const_ids": exe._const_ids,
    }
    feeds = [f"f{i}" for i in range(len(exe._feed_slots))]
    tests = []
    for i, spec in enumerate(specs):
        bind[f"t{i}"], bind[f"z{i}"] = np.dtype(spec.dtype), tuple(spec.shape)
        tests.append(f"f{i}.__class__ is ndarray and f{i}.dtype is t{i} and f{i}.shape == z{i}")
    args = ", ".join(feeds)
    names = [name for _, name in exe._feed_slots]
    run = ["def run(feeds):", f"    if feeds.__class__ is dict and len(feeds) == {len(names)}:"]
    run += [f"        f{i} = feeds.get({name!r})" for i, name in enumerate(names)]
    run += [f"        if {' and '.join(tests) or 'True'}:", f"            return run_fed({args})"]
    run += ["    checked = check_feeds(feeds)"]
    run += [f"    return run_fed({', '.join(f'checked[{n!r}]' for n in names)})"]

    body = [f"def run_fed({args}):", "    env = template.copy()"]
    if exe._pool is not None:  # sleeping workers get up while the first steps run
        bind["wake"] = exe._pool.wake
        body.append("    wake()")
    body += [f"    env[{slot}] = f{i}" for i, (slot, _) in enumerate(exe._feed_slots)]
    for slot, shape, dtype in exe._fresh:
        bind[f"shape{slot}"], bind[f"dtype{slot}"] = shape, dtype
        body.append(f"    env[{slot}] = empty(shape{slot}, dtype{slot})")
    calls = []
    for i, run_step in enumerate(exe._run_steps):
        if run_step is FOLDED:  # a view made at compile time, in the template
            continue
        direct = getattr(run_step, "direct", None)
        if direct is not None:  # a kernel over fixed buffers: call it without the wrapper
            bind[f"k{i}"], bind[f"a{i}"] = direct
            calls.append(f"k{i}(*a{i})")
        else:
            bind[f"s{i}"] = run_step
            calls.append(f"s{i}(env)")
    enter, leave = [], []  # set up before the steps, undone after them even if one raises
    for j, (get, set_) in enumerate(exe._blas.calls if pin else []):
        bind["threads"], bind[f"get{j}"], bind[f"set{j}"] = exe._blas.threads, get, set_
        enter += [f"b{j} = get{j}()", f"if b{j} != threads:", f"    set{j}(threads)"]
        leave += [f"if b{j} != threads:", f"    set{j}(b{j})"]
    if quiet:
        bind["fp_set"], bind["fp_reset"], bind["fp_ignore"] = _FP_IGNORE
        enter.append("fp = fp_set(fp_ignore)")
        leave.append("fp_reset(fp)")
    if enter:
        body += [f"    {line}" for line in enter] + ["    try:"]
        body += [f"        {c}" for c in calls] or ["        pass"]
        body += ["    finally:"] + [f"        {line}" for line in leave]
    else:
        body += [f"    {c}" for c in calls]
    results = []
    for name, slot, direct_out in exe._outputs:
        value = (
            f"env[{slot}]"
            if direct_out
            else f"hand_out(env[{slot}], ({args}{',' * bool(args)}), const_ids)"
        )
        results.append(f"{name!r}: {value}")
    body.append(f"    return {{{', '.join(results)}}}")

    params = ", ".join(bind)
    inner = "\n".join(["", *run, "", *body, ""]).replace("\n", "\n    ")
    source = f"def make({params}):{inner}\n    return run, run_fed\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<eqsat cpu entry: {exe.graph.name}>", "exec"), namespace)
    entry, run_fed = namespace["make"](**bind)
    return source, entry, run_fed


def _fp_ignore() -> tuple[Callable[[Any], Any], Callable[[Any], None], Any]:
    """``(set, reset, state)``: numpy's floating-point error state "ignore" set and reset.

    Reference steps ignore floating-point errors (inf and nan follow IEEE rules, as in
    onnxruntime); one ``np.errstate`` per step cost ~2 us, more than many of those steps compute,
    so a run sets the state once. numpy keeps it in a context variable, set here directly
    (~0.5 us); a numpy without it falls back to a fresh ``np.errstate`` per run.
    """
    try:
        from numpy._core.umath import _extobj_contextvar, _make_extobj

        return _extobj_contextvar.set, _extobj_contextvar.reset, _make_extobj(all="ignore")
    except (ImportError, AttributeError, TypeError):

        def enter(_: Any) -> Any:
            state = np.errstate(all="ignore")
            state.__enter__()
            return state

        return enter, lambda state: state.__exit__(None, None, None), None


_FP_IGNORE = _fp_ignore()


class BlasPin:
    """Pins BLAS to ``threads`` threads during a run and restores its setting afterwards.

    threadpoolctl's ``limit()`` context costs ~20 us per run (it re-reads every library's state);
    here the libraries' ``openblas_get/set_num_threads`` are looked up once and called directly
    (well under a microsecond each). Libraries of another kind (MKL, BLIS, OpenMP builds of
    OpenBLAS) go through threadpoolctl's controllers, which is slower but correct.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.calls: list[tuple[Callable[[], int], Callable[[int], Any]]] = []
        self._saved: list[int] = []
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # threadpoolctl is a dependency; without it BLAS keeps its setting
            return
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            self.calls.append(_thread_calls(lib))

    def enter(self) -> None:
        saved = self._saved
        saved.clear()
        threads = self.threads
        for get, set_ in self.calls:
            now = get()
            saved.append(now)
            if now != threads:
                set_(threads)

    def exit(self) -> None:
        threads = self.threads
        for (_, set_), before in zip(self.calls, self._saved, strict=False):
            if before != threads:
                set_(before)

    def run_on(self, fn: Callable[..., Any], count: int) -> Callable[..., Any]:
        """``fn`` with BLAS on ``count`` threads while it runs, then back to ``threads`` (the
        count a run pins it to)."""
        setters = tuple(set_ for _, set_ in self.calls)
        if not setters:
            return fn
        threads = self.threads

        def on_count(*args: Any) -> Any:
            for set_ in setters:
                set_(count)
            try:
                return fn(*args)
            finally:
                for set_ in setters:
                    set_(threads)

        return on_count


_PRIMED = [0]  # BLAS buffers primed so far: as many as products ran at once


def prime_blas(pool: Any = None) -> None:
    """Runs a mid-sized float32 GEMM on one BLAS thread in each of ``pool``'s threads at once
    (the calling thread alone without a pool), once per process and thread count.

    On the 2-vCPU Zen 1 development VM, numpy's OpenBLAS (0.3.31) ran products at a third to
    half their speed until a product of at least ~64 rows by ~512 columns had run: 48x144 by
    144x612 at 21 GFLOP/s, then 36-42 for good; 128x256 by 256x256 in 1.4-1.8 ms, then 0.45 (a
    product of 16 rows or 64 columns did not do it). Products that run at once get buffers of
    their own, and a pool thread's part of a GEMM beside the caller's stayed slow after a
    product on one thread: transformer_encoder's 128x256 by 256x1024 product in 4 parts on 2
    threads took 1.9 ms (the worker's one part 1.85 of it); after products on the pool's own
    threads at once, 1.0-1.1 ms (1.2-1.4 when other threads ran them). The likely cause is the
    part of each packing buffer that small products never write (unconfirmed). openWakeWord's
    embedding model, whose convs are all small GEMMs, ran 10% faster in a fresh process after
    this (3.3 -> 2.9 ms, one thread). Elsewhere it costs the products: a few ms, once.
    """
    import threading

    from eqsat.lowering import cpu_threads

    count = pool.threads if pool is not None else 1
    if count <= _PRIMED[0] or cpu_threads.backing_off():
        return
    _PRIMED[0] = count
    a = np.ones((64, 256), np.float32)
    b = np.ones((256, 1024), np.float32)
    together = threading.Barrier(count)

    def product(item: int, worker: int) -> None:
        # All at once, so that each gets a buffer of its own.
        with contextlib.suppress(threading.BrokenBarrierError):
            together.wait(0.5)
        for _ in range(2):
            np.matmul(a, b)

    pin = one_thread_pin()
    pin.enter()
    try:
        if pool is None:
            product(0, 0)
        else:  # a map that wakes every thread (chunks), its items taken one per thread
            pool.map(product, list(range(count)), chunks=1 << 20)
    finally:
        pin.exit()


@functools.cache
def one_thread_pin() -> BlasPin:
    """The pin of the pool's threading (BLAS on one thread), its libraries looked up once: steps
    built before their executable switch BLAS's threads through it."""
    return BlasPin(1)


def _thread_calls(lib: Any) -> tuple[Callable[[], int], Callable[[int], Any]]:
    """Fast get/set of one BLAS library's thread count."""
    find = getattr(lib, "_find_affixes", None)
    dynlib = getattr(lib, "dynlib", None)
    if lib.internal_api == "openblas" and find is not None and dynlib is not None:
        affixes = find()
        if affixes is not None and getattr(lib, "threading_layer", "") != "openmp":
            prefix, suffix = affixes
            get = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return lib.get_num_threads, lib.set_num_threads


__all__ = ["BLAS_KINDS", "FOLDED", "SMALL_BLAS_FLOPS", "BlasPin", "CpuExecutable", "one_thread_pin"]

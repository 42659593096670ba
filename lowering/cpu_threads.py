"""eqsat's own intra-op thread pool: dynamic scheduling of independent chunks of one step.

With ``threads > 1`` the CPU executable keeps BLAS single-threaded and generates no Numba
``prange`` loops; a step that is big enough splits its work into chunks (GEMM rows or columns,
conv blocks of output rows, Winograd tile rows, depthwise channel blocks, attention batches,
elementwise slices) and hands them to :meth:`Pool.map`. The calling thread and ``threads - 1``
persistent worker threads pull chunk indices from a shared counter until none are left, so a
worker that the OS deschedules (another process holding its core) delays only the chunk it
holds: the others take the rest. BLAS's and Numba's own pools barrier-wait for their slowest
thread after equal static splits and spin while they wait; on a busy 2-core machine a 2-thread
transformer ran 25x slower than on one thread that way.

Chunks run numpy matmul (BLAS, which releases the GIL) and ``nogil`` Numba kernels, so the
threads compute in parallel; only the few microseconds of Python around each call hold the GIL.
A machine busier than its cores (other processes runnable) still stalls the pool: every hand-over
of the GIL between the threads (a few per chunk) and a worker preempted holding a chunk make
the caller wait for the OS to schedule the other thread, a time slice (milliseconds) under load;
on a loaded 2-core machine a 2-thread map of a 0.23 ms GEMM took 0.5-5 ms, the caller on the CPU
for 0.2 of them. So the pool watches for stalls (the caller waiting for the workers' chunks, once
its own are done, for more than half of a map's wall time plus :data:`STALL_SECONDS`; it spins
meanwhile, so its CPU time cannot tell) and, after one, runs
maps on the calling thread alone for a while: 5 ms at first, doubling with each stall that
follows up to 0.25 s, shrinking by 10% with each clean map: when more than ~1 map in 7 stalls
the pool stays serial but for a probe four times a second. Serial or
not, a map computes the same chunks, so results do not depend on it. On an idle machine stalls
do not happen and every map runs in parallel.

A map wakes no more workers than pay for themselves. Each one the map wakes has to take the GIL
in turn before its first chunk, so waking them is serial: on a 16-core machine a map of 20 us
chunks cost 30-40 us beyond its work with 2-4 threads, 100 us with 8 and 220 us with 16, and a
16-thread run was slower than a 1-thread one. With a wake costing ``h`` and work ``W``, a map on
``t`` threads takes about ``W / t + h * t``, least at ``t = sqrt(W / h)``; the map's chunks are
at least a grain each (:func:`chunk_count`), so ``W`` is taken as their count times
:data:`CHUNK_SECONDS` and ``h`` as :data:`WAKE_SECONDS`.

For the same reason a pool uses at most :data:`MAX_THREADS` threads whatever it is asked for:
on that machine runs with 16 threads were slower than with 8 on every model measured
(``docs/benchmarks.md``, "Many threads"), and those with 8 about as fast as with 4.

Hand-overs spin rather than sleep (:mod:`eqsat.lowering.cpu_spin`): waking a thread blocked on a
lock costs ~60 us on the 2-core VM, more than many chunks take, and two threads then ran a
model's steps no faster than one. So after a job a worker polls a posted-job counter without
the GIL for :data:`SPIN_SECONDS` before it blocks on its queue, and the caller polls the job's
done flag for up to :data:`WAIT_SPIN_SECONDS` once its own chunks are done. A map posts its job
on the counter for spinning workers and on the queues of those asleep. Two chunks of 100 us
took 174 us on the calling thread alone, 177 us on the sleeping pool and 111 us spinning.
There is one set of workers per process, shared by every executable, created on first use; it
grows to the largest thread count asked for. The
workers are daemon threads and are told to stop at interpreter exit, so they never hold it up.
A chunk that raises makes the rest of its job skip; the caller re-raises the first error once
every chunk taken has finished, so a failing step neither deadlocks nor leaves work running.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Any, TypeVar

import numpy as np
from eqsat.lowering import cpu_affinity, cpu_spin
from eqsat.lowering.cpu_blas import FINISHED

T = TypeVar("T")

_LOCK = threading.Lock()
_QUEUES: list[SimpleQueue[Any]] = []
_THREADS: list[threading.Thread] = []
# The posted-job counter that spinning workers poll (element 0; its own cache line) and the job
# it names; _ASLEEP[w - 1][0]: worker w blocks on its queue, so a map must put the job there
# (a cell per worker, which a worker stopped by shutdown keeps).
_POSTED = np.zeros(8, np.int64)
_POSTED_JOB: list[Any] = [None]
_ASLEEP: list[list[bool]] = []
_SERIALS = itertools.count(1).__next__
# How long an idle worker polls for the next job before it blocks, and how long the caller polls
# for the workers' last chunks before it blocks (as long as the map has taken so far, within
# these bounds). A worker that saw a job posted from Python waits a little before it asks for
# the GIL, which the caller holds until it enters its first chunk's kernel; jobs posted from a
# caller's lane (caller_wait) and done flags, which workers store from their poll, are seen only
# once the other thread has let go of the GIL, and need no wait. EQSAT_SPIN=0 turns polling
# off: threads then sleep at once, which a machine shared with other busy processes may prefer.
_SPINS = os.environ.get("EQSAT_SPIN", "1").strip() not in ("0", "false", "no", "off")
SPIN_SECONDS = 2e-3 if _SPINS else 0.0
WAIT_SPIN_SECONDS = 20e-3 if _SPINS else 0.0
MIN_WAIT_SPIN_SECONDS = 100e-6 if _SPINS else 0.0
# A worker waits 15 us: between posting a job and entering its first chunk's kernel the caller
# runs ~5-15 us of Python (the map, the chunk's call, Numba's dispatch), and a worker that asks
# for the GIL meanwhile sleeps on it and pays a wake-up (60 us to milliseconds on the 2-core VM).
# Benchmark-style blocks on 2 threads, 4 us against 20 us: orientation_mnv3 median 10.1 against
# 8.9 ms (p90 17.7 against 10.6), openWakeWord's embedding 3.8 against 3.3, transformer_encoder
# 5.9 against 4.9, ppocr_cls even; 10 us about as 20, 50 us worse (10.1).
WORKER_SETTLE_SECONDS = 15e-6
# How long workers stop polling after one of them was off its core for most of a poll of at
# least QUIET_POLL_SECONDS (see _Quiet): 2 processes of 2 threads each on the 2-core VM had run
# magika 27% fewer times in 10 s polling than sleeping.
QUIET_SECONDS = 0.05
QUIET_POLL_SECONDS = 1e-3
# A map where the caller waits for the workers' chunks for more than half its wall time plus this
# is a stall (on an idle machine it computes all along but for the end of their last chunks).
# A worker descheduled by another process costs a time slice, milliseconds; a slow wake-up costs
# tens of microseconds (~60 on the 2-core VM), and at 0.1 ms those counted as stalls: in one
# benchmark process the back-off then grew over the models until maps ran serially most of the
# time, their chunks costing more than one thread's whole steps (resnet_block_proj on 2 threads
# 7.6 ms, 6.0 on one thread; with this and a 0.25 s cap, 4.3).
STALL_SECONDS = 1e-3
# What waking one more worker costs a map, and what a chunk (at least a grain of work) takes at
# the least: measured on a 16-core machine (see the module's docstring).
WAKE_SECONDS = 13e-6
CHUNK_SECONDS = 25e-6
MAX_THREADS = 8
MIN_BACKOFF, MAX_BACKOFF = 0.005, 0.25


class _Backoff:
    """When maps run serially after stalls (process-wide: it is the machine that is busy)."""

    serial_until = 0.0
    seconds = MIN_BACKOFF
    stalls = 0  # counted for tests and diagnostics


def _record(stalled: bool, now: float) -> None:
    if stalled:
        _Backoff.stalls += 1
        _Backoff.serial_until = now + _Backoff.seconds
        _Backoff.seconds = min(MAX_BACKOFF, _Backoff.seconds * 2)
    elif _Backoff.seconds > MIN_BACKOFF:
        _Backoff.seconds = max(MIN_BACKOFF, _Backoff.seconds * 0.9)


# A GEMM on BLAS's own threads slower than this rate (well below one core's 50-100 GFLOP/s) by
# more than STALL_SECONDS stalled: its threads wait for the slowest one, and the caller spins
# while it waits, so its CPU time cannot tell.
STALLED_GEMM_FLOPS = 10e9


def note_gemm(flops: float, seconds: float) -> None:
    """Count a GEMM run on BLAS's own threads like a map: a stall when it took far longer than
    one thread would have (see :data:`STALLED_GEMM_FLOPS`)."""
    _record(seconds > flops / STALLED_GEMM_FLOPS + STALL_SECONDS, time.perf_counter())


def backing_off() -> bool:
    """Whether maps run on the calling thread for now, after stalls: the machine is busy. BLAS's
    own threads (:func:`eqsat.lowering.cpu_gemm.threaded_matmul`) stay off then too, since a GEMM
    split over threads waits for its slowest one."""
    return time.perf_counter() < _Backoff.serial_until


# Each job's done flag: _DONE[_slot(serial)] == serial once its chunks have all finished. A
# ring of slots a cache line apart, not an array per job: making one (and an Event) cost a map
# more than its wake-up.
_DONE_SLOTS = 1024
_DONE = np.zeros(_DONE_SLOTS * 8, np.int64)


def _slot(serial: int) -> int:
    return (serial % _DONE_SLOTS) * 8


class _Job:
    """One ``map``: its chunks, the next index to hand out, how many have finished; workers
    1..``helpers`` may take part."""

    __slots__ = (
        "count", "done", "error", "finished", "fn", "helpers", "items", "serial", "take", "waiter",
    )  # fmt: skip

    def __init__(self, fn: Callable[[Any, int], None], items: Sequence[Any], helpers: int):
        self.fn = fn
        self.items = items
        self.count = len(items)
        self.helpers = helpers
        self.serial = _SERIALS()
        # next() of an itertools.count is atomic under the GIL: no lock per chunk.
        self.take = itertools.count().__next__
        self.finished = itertools.count(1).__next__
        self.error: BaseException | None = None
        # Every chunk has finished (its slot of _DONE says so too, for polling; the slot is a
        # hint only, which a 1024th later job could overwrite).
        self.done = False
        self.waiter: threading.Event | None = None  # made by a caller that stops polling

    def work(self, worker: int, defer: bool = False) -> int:
        """Runs chunks until none are left. Returns -1, or with ``defer`` where this thread
        finished the last chunk, the index in ``_DONE`` where ``self.serial`` is still to be
        stored: a worker stores it from native code, without the GIL
        (:func:`eqsat.lowering.cpu_spin.store_then_spin_while_timed`). Stored from Python, it
        woke the polling caller while the worker still held the GIL for its bookkeeping; the
        caller then slept on the GIL, and a map of two chunks ended 17 us after its last one
        on the 2-core VM."""
        if worker > self.helpers:
            return -1
        count, items, fn, take = self.count, self.items, self.fn, self.take
        while True:
            i = take()
            if i >= count:
                return -1
            if self.error is None:
                try:
                    fn(items[i], worker)
                except BaseException as error:  # re-raised by the caller of map
                    if self.error is None:
                        self.error = error
            if self.finished() == count:
                # done, then the waiter: a caller makes its waiter before it looks at done a
                # last time (both under the GIL), so one of them sees the other.
                self.done = True
                if self.waiter is not None:
                    _DONE[_slot(self.serial)] = self.serial
                    self.waiter.set()
                    return -1
                if defer:
                    return _slot(self.serial)
                _DONE[_slot(self.serial)] = self.serial
                return -1

    def wait(self, loads: int, settle: int) -> None:
        """Until every chunk has finished: polling ``loads`` times at most, then blocking."""
        if self.done:
            return
        cpu_spin.spin_until(_DONE, _slot(self.serial), self.serial, loads, settle)
        if self.done:
            return
        self.waiter = threading.Event()
        if not self.done:
            self.waiter.wait()


_WAKE = _Job(lambda item, worker: None, (), 0)  # no chunks, no worker takes part


class _Quiet:
    """Until when workers block at once instead of polling: a worker that was off its core for
    most of a long poll shares the core with other runnable threads (another process's, or more
    threads than cores), whose time polling would only take. (A single preemption is no sign: a
    kernel thread or a wake-up placed on the poller's core preempts it for microseconds.)"""

    until = 0.0


_STOP = -2  # what _take returns for a shutdown


def _take(job: _Job | None, queue: SimpleQueue[Any], worker: int) -> tuple[int, int]:
    """Works on the posted ``job`` (if any), then on the jobs put on this worker's queue while
    it polled: they are over or being finished by others, and taking them now keeps the queue
    short (and honours a shutdown). Returns where to store the last one's done flag (-1: stored
    already; :data:`_STOP`: shut down) and its serial."""
    done_at, done_serial = -1, 0
    if job is not None:
        done_at, done_serial = job.work(worker, True), job.serial
    while not queue.empty():
        if done_at >= 0:  # the one before first
            _DONE[done_at] = done_serial
            done_at = -1
        job = queue.get()
        if job is None:
            return _STOP, 0
        done_at, done_serial = job.work(worker, True), job.serial
    return done_at, done_serial


def _worker(queue: SimpleQueue[Any], worker: int, asleep: list[bool]) -> None:
    rate, cycle_rate = cpu_spin.loads_per_second(), cpu_spin.cycles_per_second()
    cycles = np.zeros(1, np.int64)
    seen = int(_POSTED[0])
    clock, thread_time = time.perf_counter, time.thread_time
    # (index into _DONE, serial) of a job this worker finished, stored on the way into its poll
    done_at, done_serial = -1, 0
    while True:
        posted = int(_POSTED[0])
        if posted != seen:
            # A job is posted: the poll below saw it, or this worker's lane returned for it (then
            # without a poll, whose clock reads, CPU note and native call put 10-30 us between a
            # map's post and this worker's first chunk on the 2-core VM). The last job's done
            # flag is stored here if the poll did not; its caller, having posted since, no
            # longer waits for it (another thread's caller may, and finds it).
            if done_at >= 0:
                _DONE[done_at] = done_serial
                done_at = -1
            seen = posted
            done_at, done_serial = _take(_POSTED_JOB[0], queue, worker)
            if done_at == _STOP:
                return
            continue
        began = clock()
        polling = SPIN_SECONDS if began >= _Quiet.until else 0.0
        spin, settle = int(polling * rate), int(WORKER_SETTLE_SECONDS * rate)
        if spin:
            cpu_affinity.note_worker(worker)
        cpu = thread_time() if spin else 0.0
        posted = cpu_spin.store_then_spin_while_timed(
            _DONE, done_at, done_serial, _POSTED, 0, seen, spin, settle, cycles
        )
        done_at = -1
        if spin:
            # The poll's own wall time: after it the worker may sleep until the caller lets go
            # of the GIL, which says nothing of other threads on its core. Timed from here,
            # 1-5 ms waits for the GIL after a 0.1-0.5 ms poll made workers go quiet in half
            # the benchmark's blocks on 2 threads (resnet_block: median 6.6 ms, 5.7 without).
            wall = cycles[0] / cycle_rate if cycle_rate > 0 else clock() - began
            if wall > QUIET_POLL_SECONDS and wall - (thread_time() - cpu) > 0.5 * wall:
                _Quiet.until = clock() + QUIET_SECONDS
        if posted != seen:  # taken at the top of the loop
            continue
        cpu_affinity.forget_worker(worker)
        asleep[0] = True
        posted = int(_POSTED[0])
        if posted != seen:
            # Posted after this worker's poll ended but before it said it sleeps: its caller
            # saw it awake and did not queue the job for it. Take it from the counter (at the top
            # of the loop).
            asleep[0] = False
            continue
        job = queue.get()
        asleep[0] = False
        if job is None:
            return
        cpu_affinity.leave_callers_cpu()
        seen = int(_POSTED[0])
        done_at, done_serial = job.work(worker, True), job.serial


def lane_wait() -> tuple[np.ndarray, np.ndarray]:
    """What a worker's lane (:mod:`eqsat.lowering.cpu_lanes`) out of chunks polls before it
    returns: the posted-job counter and [its value now, polls, settle polls], for
    :func:`eqsat.lowering.cpu_spin.spin_while`. The worker so stays in native code until the
    next job is posted (or :data:`SPIN_SECONDS` pass), rather than taking the GIL back at once
    while the calling thread runs on in Python: the two then queued for the GIL in turn, and
    each wait ended with a wake-up (20-50 us on the 2-core VM)."""
    rate = cpu_spin.loads_per_second()
    loads = int(SPIN_SECONDS * rate) if time.perf_counter() >= _Quiet.until else 0
    wait = np.array([_POSTED[0], loads, int(WORKER_SETTLE_SECONDS * rate), 0], np.int64)
    return _POSTED, wait


# The lane map this thread is the caller of, if any: [0, 0, 0, the serial its lane is to post].
_CALLER = threading.local()
_NOT_POSTING = np.zeros(4, np.int64)


def caller_wait() -> tuple[np.ndarray, np.ndarray]:
    """The ``posted, wait`` arguments of a calling thread's lane: it returns once out of
    chunks, and the first lane of a map (:meth:`Pool.map` with a ``counter``) posts the map's
    job on entering, from native code (:func:`eqsat.lowering.cpu_spin.post_from_native`).
    Posted from Python before the call, a polling worker saw the job while the caller still
    held the GIL for the call's few microseconds: it waited WORKER_SETTLE_SECONDS for it, and
    without that wait slept on the GIL. Posted from the lane, the GIL is free."""
    return _POSTED, getattr(_CALLER, "wait", _NOT_POSTING)


def _post_to_sleepers(job: _Job, count: int) -> None:
    """Put ``job`` on the queues of workers 1..``count`` that are blocked on theirs (polling
    ones take it from the posted-job counter)."""
    noted = False
    for queue, asleep in zip(_QUEUES[:count], _ASLEEP, strict=False):
        if asleep[0]:
            if not noted:  # where the woken workers should not stay (cpu_affinity)
                cpu_affinity.note_caller()
                noted = True
            queue.put(job)


def _ensure_workers(count: int) -> list[SimpleQueue[Any]]:
    """The queues of at least ``count`` running workers (worker ids 1..count)."""
    if len(_QUEUES) >= count:
        return _QUEUES
    cpu_spin.loads_per_second()  # measured before any worker spins
    with _LOCK:
        while len(_QUEUES) < count:
            queue: SimpleQueue[Any] = SimpleQueue()
            asleep = [False]
            thread = threading.Thread(
                target=_worker,
                args=(queue, len(_QUEUES) + 1, asleep),
                name=f"eqsat-cpu-{len(_QUEUES) + 1}",
                daemon=True,
            )
            thread.start()
            _QUEUES.append(queue)
            _THREADS.append(thread)
            _ASLEEP.append(asleep)
    return _QUEUES


def shutdown(timeout: float = 1.0) -> None:
    """Stop the workers (they finish the job in hand first); a later ``map`` starts new ones."""
    with _LOCK:
        queues, threads = list(_QUEUES), list(_THREADS)
        _QUEUES.clear()
        _THREADS.clear()
        _ASLEEP.clear()
    for queue in queues:
        queue.put(None)
    _POSTED_JOB[0] = None
    _POSTED[0] = _SERIALS()  # spinning workers look at their queues now
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(timeout)


def _forget_after_fork() -> None:
    # A forked child has none of the parent's threads; new ones start on its first map.
    global _LOCK
    _LOCK = threading.Lock()
    _QUEUES.clear()
    _THREADS.clear()
    _ASLEEP.clear()
    _POSTED_JOB[0] = None


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# Each call site of :meth:`Pool.map` (a step's list of chunks, made once when the step is bound)
# learns whether waking workers pays for it: its first PROBE_RUNS maps alternate between the
# workers and the calling thread alone, then it runs the way whose fastest probe was faster,
# probing again after EARLY_RETUNE_RUNS maps and then every RETUNE_RUNS maps. Whether a map of
# 100 us pays depends on the machine: wake-ups took ~13 us a worker on a 16-core Xeon and ~60 us
# on the 2-core VM, where 2 threads ran ppocr_rec's 33 elementwise steps in 2.4 ms against 1.1
# on one thread. The early second round is for first runs that share the machine with
# something else (a program's start-up, another engine's threads: benchmarked beside
# onnxruntime on 2 threads, openWakeWord's embedding kept 3-4 of its 10 split convs on one
# thread where alone they all paid on two; with the second round at 12 maps it ran 3.3 ms
# against 3.8-4.0, MobileNetV2's block 2.2 against 2.8-3.0, MobileNetV3 9.2 against 11.1).
PROBE_RUNS = 6
EARLY_RETUNE_RUNS = 12
RETUNE_RUNS = 1000
MAX_SITES = 4096


class _Site:
    """One call site's probes: its items (kept, so that their id is not reused), its maps so
    far, and the least wall time seen on the workers and on the calling thread alone."""

    __slots__ = ("best", "items", "runs")

    def __init__(self, items: Sequence[Any]):
        self.items = items
        self.runs = 0
        self.best = [math.inf, math.inf]

    def parallel(self) -> tuple[bool, bool]:
        """(run this map on the workers, record its time as a probe)."""
        phase = self.runs % RETUNE_RUNS
        if self.runs < RETUNE_RUNS and self.runs >= EARLY_RETUNE_RUNS:
            phase = self.runs - EARLY_RETUNE_RUNS
        self.runs += 1
        if phase == 0:
            self.best = [math.inf, math.inf]
        if phase < PROBE_RUNS:
            return phase % 2 == 0, True
        return self.best[0] <= self.best[1], False


class Pool:
    """``threads`` threads (the caller and ``threads - 1`` shared workers) for one executable,
    :data:`MAX_THREADS` at most."""

    def __init__(self, threads: int):
        self.threads = max(1, min(threads, MAX_THREADS))
        self._sites: dict[int, _Site] = {}
        # Whether a map has handed work to the workers since the last wake: a run whose maps
        # all stay on the calling thread (steps below the split thresholds, sites whose probes
        # chose it) does not wake them for the next run either.
        self._handed = True

    def _site(self, items: Sequence[Any]) -> _Site:
        site = self._sites.get(id(items))
        if site is None or site.items is not items:
            if len(self._sites) >= MAX_SITES:  # items made per call: forget, do not grow
                self._sites.clear()
            site = self._sites[id(items)] = _Site(items)
        return site

    def wake(self) -> None:
        """Gets this pool's sleeping workers up to poll for jobs (a run calls it first): its first
        maps then find them ready, rather than paying each one's wake-up. Not after a run that
        handed them nothing: openWakeWord's melspectrogram on 2 threads (no step splits) woke a
        worker every run, which then took the caller's CPU to move off it (cpu_affinity)."""
        if self._handed:
            self._handed = False
            _post_to_sleepers(_WAKE, self.threads - 1)

    def map(self, fn: Callable[[T, int], None], items: Sequence[T], chunks: int = 0,
            counter: np.ndarray | None = None,
            whole: Callable[[], None] | None = None) -> None:  # fmt: skip
        """``fn(item, worker)`` for every item, in any order, on up to ``threads`` threads.

        ``worker`` is 0 on the calling thread and 1..threads-1 on the workers: an index into
        per-thread scratch buffers (a worker runs one chunk at a time). Returns once every chunk
        has finished; raises the first exception a chunk raised.

        Lanes (:mod:`eqsat.lowering.cpu_lanes`): each item is one thread's native loop over
        ``chunks`` chunks that the items share, counting those it finished in
        ``counter[FINISHED]``. ``chunks`` then sizes how many workers to wake, and once its own
        items are done the calling thread returns as soon as that count says every chunk has
        finished, without waiting for the workers to get back to Python. The calling thread's
        lane posts the job for the workers, from native code (its ``posted, wait`` arguments
        are :func:`caller_wait`'s); where none of its items calls one, the job is posted
        once they are done.

        ``whole()``, where given, computes all the items in one call, to the bit (elementwise
        kernels, independent matrices of a batch): a map that runs on the calling thread alone
        calls it instead of the items one by one (a split elementwise kernel of 8 chunks of
        5 us took 45-80 us that way on the 2-core VM, each call paying its own Python and
        dispatch).
        """
        count = len(items)
        helpers = min(self.threads - 1, count - 1, worth_waking(chunks or count))
        clock = time.perf_counter
        start = clock() if helpers > 0 else 0.0
        if helpers <= 0 or start < _Backoff.serial_until:
            _alone(fn, items, whole)
            return
        site = self._site(items)
        parallel, probe = site.parallel()
        if not parallel:
            _alone(fn, items, whole)
            if probe:
                site.best[1] = min(site.best[1], clock() - start)
            return
        job = _Job(fn, items, helpers)
        self._handed = True
        cpu_affinity.leave_workers_cpus(helpers)
        _ensure_workers(helpers)
        _post_to_sleepers(job, helpers)
        _POSTED_JOB[0] = job
        if counter is None:
            _POSTED[0] = job.serial  # last: spinning workers take the job from here
            job.work(0)
        else:  # lanes: the caller's lane posts it (caller_wait)
            wait = _CALLER.wait = np.array([0, 0, 0, job.serial], np.int64)
            try:
                job.work(0)
            finally:
                _CALLER.wait = _NOT_POSTING
            if wait[3] != 0:  # no lane of the caller's ran (a worker woken from sleep took all)
                _POSTED[0] = job.serial
        waited = clock()
        # Poll for about as long as the map has taken so far (a worker's chunk should end by
        # then): longer, and a worker descheduled by a busy machine would wait for the core
        # this thread holds while it polls.
        rate = cpu_spin.loads_per_second()
        polling = min(WAIT_SPIN_SECONDS, max(MIN_WAIT_SPIN_SECONDS, waited - start))
        if waited < _Quiet.until:
            polling = 0.0
        loads = int(polling * rate)
        # A lane's worker stays in native code after its last chunk (lane_wait), and a worker
        # stores a job's done flag from its poll (_Job.work): either way this thread takes the
        # GIL at once, with no settling, rather than queueing behind the worker's bookkeeping.
        if counter is None or not cpu_spin.spin_until(counter, FINISHED, chunks, loads, 0):
            job.wait(loads, 0)
        now = clock()
        wall = now - start
        # A stall: the caller waited for the workers' chunks for much of the map (a worker
        # descheduled while it held one).
        _record(now - waited > 0.5 * wall + STALL_SECONDS, now)
        if probe:
            site.best[0] = min(site.best[0], wall)
        if job.error is not None:
            raise job.error


def _alone(fn: Callable[[T, int], None], items: Sequence[T], whole: Callable[[], None] | None
           ) -> None:  # fmt: skip
    """A map's items on the calling thread: in one call where it can."""
    if whole is not None:
        whole()
        return
    for item in items:
        fn(item, 0)


class Serial:
    """:class:`Pool`'s interface for a step compiled for one thread: the items in order, on the
    calling thread, with none of the pool's bookkeeping."""

    threads = 1

    def map(self, fn: Callable[[T, int], None], items: Sequence[T], chunks: int = 0,
            counter: np.ndarray | None = None,
            whole: Callable[[], None] | None = None) -> None:  # fmt: skip
        _alone(fn, items, whole)


def worth_waking(count: int) -> int:
    """How many workers a map of ``count`` chunks wakes at most (besides the calling thread):
    ``sqrt(W / h) - 1`` for the work ``W`` the chunks take at the least (see the module's
    docstring); at least one, so that two threads always share a map of several chunks."""
    return max(1, math.isqrt(int(count * CHUNK_SECONDS / WAKE_SECONDS)) - 1)


def chunks(total: int, count: int, align: int = 1) -> list[tuple[int, int]]:
    """``[0, total)`` cut into at most ``count`` near-equal ranges, inner cuts on multiples of
    ``align`` where the ranges stay at least that long."""
    count = max(1, min(count, total // max(1, align) or 1))
    size = -(-total // count)
    if align > 1:
        size = -(-size // align) * align
    return [(a, min(total, a + size)) for a in range(0, total, size)]


def even_spans(total: int, count: int, threads: int, most: int) -> list[tuple[int, int]]:
    """``[0, total)`` in a multiple of ``threads`` near ``count`` ranges (fewer where ranges of
    at most ``most`` allow, else more), as even as whole units go, so that every thread of a
    map gets the same share: chunks of tile rows or output rows made in a count that the
    threads do not divide left one thread with most of the work (YOLOv8's 64-channel 40x40
    Winograd convs: 4, 4 and 2 tile rows on 2 threads; ResNet's 64 -> 128 stride-2 conv on
    56x56: 10, 10 and 8 output rows)."""
    fewer = count // threads * threads
    if fewer >= threads and -(-total // fewer) <= most:
        count = fewer
    else:
        count = -(-count // threads) * threads
    count = max(1, min(count, total))
    bounds = [total * i // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def chunk_count(work: float, grain: float, threads: int, most: int = 8) -> int:
    """How many chunks ``work`` (FLOPs, or elements) splits into: pieces of at least ``grain``,
    at most ``most`` per thread (more pieces balance better, each costs ~2 us of Python)."""
    if threads <= 1:
        return 1
    return max(1, min(int(work // grain), most * threads))


__all__ = [
    "Pool",
    "Serial",
    "backing_off",
    "caller_wait",
    "chunk_count",
    "chunks",
    "even_spans",
    "lane_wait",
    "note_gemm",
    "shutdown",
    "worth_waking",
]

"""eqsat's intra-op thread pool (``lowering/cpu_threads``) and the steps that split over it:
threads=2 gives the numbers of threads=1 (and of the numpy reference) for every parallel step
kind, the same bits run to run; errors in a chunk reach the caller without deadlock; BLAS stays
on one thread; the workers never hold up interpreter exit."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu, cpu_affinity, cpu_conv_geometry, cpu_spin, cpu_threads

import eqsat
from tests.cpu_testing import record_pool_maps, take_winograd

F32 = np.float32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every step of a few KFLOP splits; no stall backoff. Yields a list of map sizes."""
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(cpu, "GRAIN_ELEMENTS", 1)
    monkeypatch.setattr(cpu_conv_geometry, "MIN_BLOCK_COLUMNS", 16)  # small convs still have blocks
    monkeypatch.setattr(cpu_conv_geometry, "MIN_POINTWISE_COLUMNS", 16)
    return record_pool_maps(monkeypatch)


# ----------------------------------------------------------------------------------- the pool
def test_map_runs_every_item_once_on_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    pool = cpu_threads.Pool(3)
    seen: list[tuple[int, int]] = []
    threads: set[int] = set()
    release = threading.Event()

    def fn(item: int, worker: int) -> None:
        threads.add(threading.get_ident())
        if item == 0:  # hold one thread until another has taken an item
            release.wait(5)
        else:
            release.set()
        seen.append((item, worker))

    pool.map(fn, list(range(50)))
    assert sorted(i for i, _ in seen) == list(range(50))
    assert {w for _, w in seen} <= {0, 1, 2} and len(threads) >= 2


class _WorkerJoins:
    """Makes a pooled map wait for a worker deterministically: the calling thread's first chunk
    of each map waits (up to ``seconds``) until a worker has started a chunk. On a loaded machine
    a worker can take longer to wake than the caller takes to run every chunk alone, and then a
    map the pool should share ran on one thread by chance. A map that runs serially pays the
    whole wait once, so the pool still wins its probes by a wide margin."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.caller_waited = False

    def next_map(self) -> None:
        self.started.clear()
        self.caller_waited = False

    def chunk_starts(self, worker: int) -> None:
        if worker:
            self.started.set()
        elif not self.caller_waited:
            self.caller_waited = True
            self.started.wait(self.seconds)


def test_each_call_site_learns_whether_the_workers_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site whose maps run slower on the workers (here: a worker's chunk sleeps) runs on the
    calling thread after its probes; one whose chunks the workers share stays on the pool."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    pool = cpu_threads.Pool(2)
    used: list[set[int]] = []
    joins = _WorkerJoins()

    def slow_on_workers(item: int, worker: int) -> None:
        used[-1].add(worker)
        job = cpu_threads._POSTED_JOB[0]
        if worker or (job is not None and not job.done):  # a map on the pool: let a worker in
            joins.chunk_starts(worker)  # (else it may miss the map, which then ties the serial)
        time.sleep(0.02 if worker else 0.002)

    def sleeps(item: int, worker: int) -> None:
        used[-1].add(worker)
        joins.chunk_starts(worker)
        time.sleep(0.004)

    for fn in (slow_on_workers, sleeps):
        items = [0, 1, 2, 3]
        used.clear()
        for _ in range(cpu_threads.PROBE_RUNS + 4):
            used.append(set())
            joins.next_map()
            pool.map(fn, items)
        probes, after = used[: cpu_threads.PROBE_RUNS], used[cpu_threads.PROBE_RUNS :]
        assert {1} <= set().union(*probes[::2]) and all(u == {0} for u in probes[1::2])
        if fn is slow_on_workers:
            assert all(u == {0} for u in after)  # the calling thread alone
        else:
            assert all(1 in u for u in after)  # still shared


def test_a_worker_going_to_sleep_does_not_miss_a_posted_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job posted while a worker stops polling (here: every time, workers in quiet mode do not
    poll) but before it says it sleeps is not queued for it; the worker must take it from the
    posted-job counter rather than sleep through it (2-5 maps in 200 lost their worker so)."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Quiet, "until", time.perf_counter() + 1e6)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    pool = cpu_threads.Pool(2)
    joins = _WorkerJoins(seconds=2.0)
    used: list[set[int]] = []

    def chunk(item: int, worker: int) -> None:
        used[-1].add(worker)
        joins.chunk_starts(worker)
        time.sleep(0.001)

    for _ in range(200):
        used.append(set())
        joins.next_map()
        pool.map(chunk, [0, 1, 2, 3])
    assert all(1 in u for u in used)


def test_a_site_probes_again_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers slow only during a site's first probes (a busy start-up) keep its maps on the
    calling thread until the early second round of probes, which puts them back on the pool."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads, "EARLY_RETUNE_RUNS", 10)
    pool = cpu_threads.Pool(2)
    used: list[set[int]] = []
    joins = _WorkerJoins()

    def chunk(item: int, worker: int) -> None:
        used[-1].add(worker)
        busy_start = len(used) <= cpu_threads.PROBE_RUNS
        if not busy_start:
            joins.chunk_starts(worker)
        time.sleep(0.02 if worker and busy_start else 0.004)

    items = [0, 1, 2, 3]
    for _ in range(10 + cpu_threads.PROBE_RUNS + 4):
        used.append(set())
        joins.next_map()
        pool.map(chunk, items)
    assert all(u == {0} for u in used[cpu_threads.PROBE_RUNS : 10])  # alone after the first
    assert all(1 in u for u in used[10 + cpu_threads.PROBE_RUNS :])  # shared after the second


def test_sites_of_fresh_lists_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_threads, "MAX_SITES", 8)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    pool = cpu_threads.Pool(2)
    for _ in range(40):
        pool.map(lambda item, worker: None, [0, 1])
    assert len(pool._sites) <= 8


def test_pool_caps_its_threads_and_wakes_only_what_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    assert cpu_threads.Pool(64).threads == cpu_threads.MAX_THREADS
    # sqrt(chunks * CHUNK_SECONDS / WAKE_SECONDS) threads in all: the caller and these workers
    assert [cpu_threads.worth_waking(n) for n in (2, 4, 8, 16, 64)] == [1, 1, 2, 4, 10]
    pool = cpu_threads.Pool(8)
    for count, most in ((4, 1), (16, 4)):
        workers: set[int] = set()

        def fn(item: int, worker: int, seen: set[int] = workers) -> None:
            seen.add(worker)

        pool.map(fn, list(range(count)))
        assert max(workers) <= most


def test_chunk_error_reaches_caller_without_deadlock() -> None:
    pool = cpu_threads.Pool(2)
    ran: list[int] = []

    def fn(item: int, worker: int) -> None:
        if item == 3:
            raise ValueError("chunk 3")
        ran.append(item)

    with pytest.raises(ValueError, match="chunk 3"):
        pool.map(fn, list(range(40)))
    assert 3 not in ran
    # The pool still works afterwards.
    out: list[int] = []
    pool.map(lambda item, worker: out.append(item), list(range(10)))
    assert sorted(out) == list(range(10))


def test_a_map_alone_makes_one_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the calling thread alone (one thread, or backing off) a map with ``whole`` calls it
    once instead of its items; on several threads it runs the items."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    calls: list[Any] = []
    items = list(range(6))

    def item(i: int, worker: int) -> None:
        calls.append(i)

    def whole() -> None:
        calls.append("whole")

    cpu_threads.Serial().map(item, items, whole=whole)
    assert calls == ["whole"]
    calls.clear()
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", float("inf"))
    cpu_threads.Pool(2).map(item, items, whole=whole)
    assert calls == ["whole"]
    calls.clear()
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    cpu_threads.Pool(2).map(item, list(items), whole=whole)  # a fresh site: its first map splits
    assert sorted(calls) == items


def test_chunks_cover_the_range() -> None:
    for total, count, align in [(10, 3, 1), (7, 16, 1), (256, 4, 16), (100, 5, 16), (1, 4, 1)]:
        parts = cpu_threads.chunks(total, count, align)
        assert parts[0][0] == 0 and parts[-1][1] == total and len(parts) <= max(1, count)
        assert all(a < b for a, b in parts)
        assert all(p[1] == q[0] for p, q in itertools.pairwise(parts))


def test_backoff_after_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled map sends the next maps to the calling thread alone for a while."""
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Backoff, "seconds", cpu_threads.MIN_BACKOFF)
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", -1.0)  # every parallel map stalls
    pool = cpu_threads.Pool(2)
    pool.map(lambda item, worker: None, [0, 1])
    assert cpu_threads._Backoff.serial_until > 0.0
    workers: list[int] = []
    pool.map(lambda item, worker: workers.append(worker), list(range(20)))
    assert workers == [0] * 20


def test_workers_do_not_hold_up_exit() -> None:
    code = (
        "import numpy as np, eqsat\n"
        "from eqsat.lowering import cpu\n"
        "g = eqsat.Graph('g')\n"
        "x = g.input('x', (64, 64))\n"
        "g.output(g.op('MatMul', x, g.constant(np.ones((64, 64), np.float32))), 'y')\n"
        "cpu.PARALLEL_FLOPS = 1.0\n"
        "exe = cpu.compile(g, threads=3)\n"
        "exe.run({'x': np.ones((64, 64), np.float32)})\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_spin_polls_see_another_threads_store() -> None:
    """The native polls see a store made by another thread (the load is atomic, not hoisted out
    of the loop), and give up after their count of polls."""
    flags = np.zeros(8, np.int64)
    threading.Timer(0.02, lambda: flags.__setitem__(0, 7)).start()
    # 10 s of polls at the most: returns as soon as the store lands
    started = time.perf_counter()
    assert cpu_spin.spin_while(flags, 0, 0, int(10 * cpu_spin.loads_per_second()), 5) == 7
    assert time.perf_counter() - started < 5
    assert cpu_spin.spin_while(flags, 0, 7, 100, 5) == 7  # unchanged: times out, returns seen
    threading.Timer(0.02, lambda: flags.__setitem__(3, 42)).start()
    assert cpu_spin.spin_until(flags, 3, 42, int(10 * cpu_spin.loads_per_second()), 5)
    assert not cpu_spin.spin_until(flags, 3, 43, 100, 5)


def _never_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers keep polling however crowded the machine running the tests is (other processes'
    threads taking their cores would otherwise send them to sleep, see ``_Quiet``)."""
    monkeypatch.setattr(cpu_threads._Quiet, "until", 0.0)
    monkeypatch.setattr(cpu_threads, "QUIET_POLL_SECONDS", float("inf"))


def test_polling_workers_take_jobs_without_their_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a map the workers poll (not asleep on their queues) and take the next map's
    chunks; with polling off (EQSAT_SPIN=0) they sleep and are woken through their queues."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 5.0)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    _never_quiet(monkeypatch)
    cpu_threads.shutdown()
    pool = cpu_threads.Pool(2)

    def shared(item: int, worker: int, seen: set[int], release: threading.Event) -> None:
        seen.add(worker)
        if worker == 0:
            release.wait(5)  # the caller holds its chunk until a worker has taken one
        else:
            release.set()

    for spin in (5.0, 0.0):
        monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", spin)
        pool.map(lambda item, worker: None, [0, 1])  # the workers start (and then poll)
        # A loaded machine may take a while to run the worker to its queue: wait for it there.
        deadline = time.perf_counter() + (5 if spin == 0.0 else 0.05)
        while not cpu_threads._ASLEEP[0][0] and time.perf_counter() < deadline:
            time.sleep(0.001)
        assert cpu_threads._ASLEEP[0][0] is (spin == 0.0)
        seen: set[int] = set()
        release = threading.Event()
        pool.map(lambda i, w, s=seen, r=release: shared(i, w, s, r), [0, 1])
        assert seen == {0, 1}
    cpu_threads.shutdown()


def test_a_run_wakes_sleeping_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Pool.wake`` (the first thing a run does) gets sleeping workers polling again, unless
    no map handed them work since the last wake."""
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 0.0)
    _never_quiet(monkeypatch)
    cpu_threads.shutdown()
    pool = cpu_threads.Pool(2)
    pool.map(lambda item, worker: None, [0, 1])
    deadline = time.perf_counter() + 5
    while not cpu_threads._ASLEEP[0][0] and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert cpu_threads._ASLEEP[0][0]
    assert cpu_affinity.WORKER_CPUS[1] == -1  # asleep: no CPU for a caller to keep off
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 5.0)
    pool.wake()
    while cpu_threads._ASLEEP[0][0] and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert not cpu_threads._ASLEEP[0][0]
    # A run that handed the workers nothing does not wake them for the next one.
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 0.0)
    cpu_threads._POSTED[0] = cpu_threads._SERIALS()  # ends the worker's 5 s poll
    while not cpu_threads._ASLEEP[0][0] and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert cpu_threads._ASLEEP[0][0]
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 5.0)
    pool.wake()
    time.sleep(0.05)
    assert cpu_threads._ASLEEP[0][0]
    cpu_threads.shutdown()


def test_workers_stop_polling_on_a_crowded_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker off its core for most of a long poll (its thread CPU time standing still, as
    when other processes' threads take the core) makes every worker block at once for
    QUIET_SECONDS, and the caller not poll; maps still run every item."""
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Quiet, "until", 0.0)
    # A 20 ms poll: the 2 ms default lasts ~1 ms (QUIET_POLL_SECONDS) where the poll rate was
    # measured while another thread shared the core, and then proves nothing.
    monkeypatch.setattr(cpu_threads, "SPIN_SECONDS", 20e-3)
    cpu_threads.shutdown()
    monkeypatch.setattr(cpu_threads.time, "thread_time", lambda: 0.0)
    pool = cpu_threads.Pool(2)
    pool.map(lambda item, worker: None, [0, 1])  # starts the worker, which then polls 2 ms
    deadline = time.perf_counter() + 5
    while cpu_threads._Quiet.until == 0.0 and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert cpu_threads._Quiet.until > 0.0
    hits = [0] * 10
    pool.map(lambda item, worker: hits.__setitem__(item, hits[item] + 1), list(range(10)))
    assert hits == [1] * 10
    cpu_threads.shutdown()  # later workers read the real clock


def test_waiting_for_the_gil_after_a_poll_is_no_crowding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that sees a job and then waits for the GIL (the caller holding it in Python)
    stays polling: only time off its core while it polls counts (the poll is timed in native
    code, where the clock read after it in Python would include the wait)."""
    if cpu_spin.cycles_per_second() <= 0:
        pytest.skip("no native clock on this CPU: the poll is timed from Python")
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.02)  # the worker then waits up to 20 ms for the caller's GIL
    cpu_threads.shutdown()
    try:
        pool = cpu_threads.Pool(2)
        clean = 0
        for _ in range(3):  # a machine busy elsewhere may really take the worker's core once
            monkeypatch.setattr(cpu_threads._Quiet, "until", 0.0)
            pool.map(lambda item, worker: None, [0, 1])  # the worker polls after this

            def hold(item: int, worker: int) -> None:
                if worker == 0:  # the caller spins in Python, holding the GIL, for 10 ms
                    end = time.perf_counter() + 0.01
                    while time.perf_counter() < end:
                        pass

            time.sleep(0.0015)  # polls of more than QUIET_POLL_SECONDS
            pool.map(hold, [0, 1])
            time.sleep(0.01)
            clean += cpu_threads._Quiet.until == 0.0
        assert clean > 0
    finally:
        sys.setswitchinterval(switch)
        cpu_threads.shutdown()


def test_a_woken_worker_leaves_the_callers_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that wakes on the CPU its caller posted from moves to another allowed CPU and is
    left pinned to nothing; a worker on another CPU stays where it is. A caller on a polling
    worker's CPU moves off it likewise."""
    if cpu_affinity.current_cpu() < 0 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs sched_getcpu and two CPUs")
    allowed = os.sched_getaffinity(0)
    monkeypatch.setattr(cpu_affinity, "WORKER_CPUS", [-1] * 65)  # no worker polls anywhere
    monkeypatch.setattr(cpu_affinity, "CALLER_CPU", [-1])
    seen: dict[str, Any] = {}

    def woken() -> None:
        cpu = cpu_affinity.current_cpu()
        cpu_affinity.CALLER_CPU[0] = cpu  # as if the caller had been right here
        seen["moved"] = cpu_affinity.leave_callers_cpu()
        seen["before"], seen["after"] = cpu, cpu_affinity.current_cpu()
        seen["affinity"] = os.sched_getaffinity(0)
        cpu_affinity.CALLER_CPU[0] = next(c for c in allowed if c != seen["after"])
        seen["stayed"] = not cpu_affinity.leave_callers_cpu()
        # A caller on the CPU of a polling worker moves off it the same way before it posts.
        here = seen["here"] = cpu_affinity.current_cpu()
        cpu_affinity.WORKER_CPUS[1] = here
        seen["caller moved"] = cpu_affinity.leave_workers_cpus(1)
        seen["caller now"] = cpu_affinity.current_cpu()
        seen["caller stayed"] = not cpu_affinity.leave_workers_cpus(1)
        # Polling workers on every other CPU (more threads than CPUs): moving would not help.
        cpu_affinity.WORKER_CPUS[: len(allowed) + 1] = [-1, *sorted(allowed)]
        seen["crowded stayed"] = not cpu_affinity.leave_workers_cpus(len(allowed))

    thread = threading.Thread(target=woken)
    thread.start()
    thread.join()
    assert seen["moved"] and seen["after"] != seen["before"] and seen["after"] in allowed
    assert seen["affinity"] == allowed and seen["stayed"]
    assert seen["caller moved"] and seen["caller now"] != seen["here"] and seen["caller stayed"]
    assert seen["crowded stayed"]


def test_caller_stops_polling_for_a_slow_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's chunk that outlasts the caller's polls (a worker descheduled on a busy machine)
    makes the caller block on the job's event, and the map still returns every chunk done."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads, "WAIT_SPIN_SECONDS", 1e-4)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    jobs: list[Any] = []
    wait = cpu_threads._Job.wait

    def recorded(job: Any, loads: int, settle: int) -> None:
        jobs.append(job)
        wait(job, loads, settle)

    monkeypatch.setattr(cpu_threads._Job, "wait", recorded)
    pool = cpu_threads.Pool(2)
    done: list[int] = []
    taken = threading.Event()

    def fn(item: int, worker: int) -> None:
        if worker:
            taken.set()
            time.sleep(0.1)
        else:
            taken.wait(5)
        done.append(item)

    pool.map(fn, [0, 1])
    assert sorted(done) == [0, 1]
    assert jobs[-1].waiter is not None and jobs[-1].done


def test_a_done_job_whose_slot_was_reused_still_returns() -> None:
    """A job's slot in the ring of done flags is a hint for polling: a later job reusing it
    (1024 maps later, from other threads) must not leave the finished job's caller waiting."""
    job = cpu_threads._Job(lambda item, worker: None, [0, 1], 1)
    job.work(0)
    cpu_threads._DONE[cpu_threads._slot(job.serial)] = job.serial + cpu_threads._DONE_SLOTS
    started = time.perf_counter()
    job.wait(100, 1)  # returns at once: no poll to time out, no event to wait on
    assert job.done and time.perf_counter() - started < 1.0


def test_a_worker_leaves_the_done_flag_to_its_native_poll() -> None:
    """A worker that finishes a job's last chunk does not store the job's done flag from Python
    (its caller, polling the flag, would wake while the worker still held the GIL): it returns
    the flag's index, and its next poll stores it; a caller blocked on its event is told at once."""
    job = cpu_threads._Job(lambda item, worker: None, [0], 1)
    slot = cpu_threads._slot(job.serial)
    cpu_threads._DONE[slot] = 0
    assert job.work(1, True) == slot and job.done
    assert cpu_threads._DONE[slot] == 0
    cycles = np.zeros(1, np.int64)
    cpu_spin.store_then_spin_while_timed(
        cpu_threads._DONE, slot, job.serial, np.zeros(1, np.int64), 0, 0, 1, 0, cycles
    )
    assert cpu_threads._DONE[slot] == job.serial

    waited = cpu_threads._Job(lambda item, worker: None, [0], 1)
    waited.waiter = threading.Event()
    assert waited.work(1, True) == -1 and waited.waiter.is_set()
    assert cpu_threads._DONE[cpu_threads._slot(waited.serial)] == waited.serial
    caller = cpu_threads._Job(lambda item, worker: None, [0], 1)
    assert caller.work(0) == -1
    assert cpu_threads._DONE[cpu_threads._slot(caller.serial)] == caller.serial


def test_maps_from_several_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers on several Python threads share the workers (one posted job at a time, the rest
    through the queues or on the callers alone): every map runs each of its items once."""
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Site, "parallel", lambda self: (True, False))
    pools = [cpu_threads.Pool(3) for _ in range(3)]
    errors: list[BaseException] = []

    def caller(pool: cpu_threads.Pool, seed: int) -> None:
        try:
            for n in range(200):
                count = 2 + (seed + n) % 7
                hits = [0] * count

                def fn(item: int, worker: int, hits: list[int] = hits) -> None:
                    hits[item] += 1

                pool.map(fn, list(range(count)))
                assert hits == [1] * count
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    callers = [threading.Thread(target=caller, args=(p, i)) for i, p in enumerate(pools)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in callers)


# ------------------------------------------------------------------------ steps on the pool
def _same(graph: eqsat.Graph, rng: np.random.Generator, sizes: list[int]) -> None:
    """threads=2 matches threads=1 and the numpy reference (chunks change BLAS blocking and
    Winograd tiling, so not bit for bit), and itself bit for bit from run to run."""
    feeds = {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
    one = cpu.compile(graph, threads=1).run(feeds)
    assert not sizes  # one thread: no maps
    exe = cpu.compile(graph, threads=2)
    two = exe.run(feeds)
    assert sizes and max(sizes) > 1  # the pool took the work
    again = exe.run(feeds)
    # The pool backing off: each map on the calling thread alone (a whole call where a step
    # has one) computes the same bits.
    cpu_threads._Backoff.serial_until = float("inf")
    try:
        alone = exe.run(feeds)
    finally:
        cpu_threads._Backoff.serial_until = 0.0
    want = eqsat.compile(graph, target="numpy").run(feeds)
    for name, expected in want.items():
        np.testing.assert_allclose(one[name], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(again[name], two[name])
        np.testing.assert_array_equal(alone[name], two[name])
    assert exe.report["reference_ops"] == {}


@pytest.mark.parametrize(
    ("a", "b"),
    [((96, 40), (40, 24)), ((8, 40), (40, 200)), ((3, 5, 16, 8), (3, 5, 8, 6)),
     ((1, 4, 20, 8), (8, 12)), ((2, 1, 16, 8), (4, 8, 5)), ((6, 48, 16), (16, 16)),
     ((7, 1100), (1100, 201)), ((3, 2, 300), (300, 37))],
    ids=["rows", "columns", "batched", "flat-stack", "broadcast-batch", "flat-rows",
         "few-rows-tiles", "few-rows-flat"],
)  # fmt: skip
def test_matmul(rng: np.random.Generator, eager: list[int], a: tuple, b: tuple) -> None:
    g = eqsat.Graph("mm")
    x = g.input("x", a)
    w = g.constant(rng.standard_normal(b).astype(F32), "w") if len(b) == 2 else g.input("y", b)
    g.output(g.op("Relu", g.op("MatMul", x, w)), "out")
    _same(g, rng, eager)


@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(rng: np.random.Generator, eager: list[int], trans: tuple[int, int]) -> None:
    g = eqsat.Graph("gemm")
    x = g.input("x", (24, 64) if trans[0] else (64, 24))
    w = g.constant(rng.standard_normal((80, 24) if trans[1] else (24, 80)).astype(F32), "w")
    c = g.input("c", (80,))
    g.output(g.op("Gemm", x, w, c, alpha=0.5, beta=2.0, transA=trans[0], transB=trans[1]), "out")
    _same(g, rng, eager)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "attrs"),
    [
        ((1, 24, 40, 40), 16, (3, 3), {"pads": [1, 1, 1, 1]}),  # Winograd
        ((2, 8, 34, 36), 8, (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),  # wide, strided
        ((1, 3, 30, 30), 8, (3, 3), {"strides": [1, 5]}),  # row-by-row im2col, gather
        ((1, 8, 24, 24), 8, (3, 2), {"strides": [2, 2], "dilations": [1, 2]}),  # phase split
        ((1, 16, 24, 24), 12, (1, 1), {}),  # pointwise
        ((1, 8, 16, 16), 8, (3, 3), {"group": 2, "pads": [1, 1, 1, 1], "dilations": [2, 2]}),
        ((2, 8, 16, 16), 8, (3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),  # depthwise
        # 40 channels: more than one block of channel lanes (16 a block on AVX-512) to split.
        ((1, 40, 16, 16), 40, (5, 5), {"group": 40, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ],
    ids=["winograd", "wide-s2", "gather", "split", "1x1", "grouped", "depthwise", "dw-5x5-s2"],
)
def test_conv(
    rng: np.random.Generator, eager: list[int], x_shape: tuple, m: int, kernel: tuple,
    attrs: dict,
) -> None:  # fmt: skip
    g = eqsat.Graph("conv")
    x = g.input("x", x_shape)
    group = int(attrs.get("group", 1))
    # Weights at the usual 1/sqrt(fan-in) scale: outputs of order 1 (Winograd's rounding, which
    # differs with the chunking, grows with them).
    fan_in = x_shape[1] // group * int(np.prod(kernel))
    w = rng.standard_normal((m, x_shape[1] // group, *kernel)) / np.sqrt(fan_in)
    w = g.constant(w.astype(F32), "w")
    b = g.constant(rng.standard_normal((m,)).astype(F32), "b")
    y = g.op("FusedConv", x, w, b, num_base_inputs=3, epilogue="max({0}, 0)", **attrs)
    g.output(y, "y")
    _same(g, rng, eager)


@pytest.mark.parametrize(
    ("x_shape", "m", "kernel", "group"),
    [((1, 64, 56, 56), 64, (3, 3), 64), ((1, 256, 14, 14), 256, (1, 1), 1)],
    ids=["depthwise-3x3", "pointwise-one-block"],
)
def test_mobilenet_sized_convs_split_at_default_sizes(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, x_shape: tuple, m: int,
    kernel: tuple, group: int,
) -> None:  # fmt: skip
    """MobileNet's 3x3 depthwise convs (one output per ns, few FLOPs) and its 1x1 convs on 14x14
    (a single block of positions) ran on one thread with two; at the default sizes both now
    split: the depthwise by channel blocks, the 1x1 by spans of output channels."""
    sizes = record_pool_maps(monkeypatch)
    g = eqsat.Graph("conv")
    x = g.input("x", x_shape)
    w = rng.standard_normal((m, x_shape[1] // group, *kernel)) / np.sqrt(x_shape[1] // group * 9)
    y = g.op(
        "Conv", x, g.constant(w.astype(F32), "w"), group=group, pads=[k // 2 for k in kernel] * 2
    )
    g.output(y, "y")
    feeds = {"x": rng.standard_normal(x_shape).astype(F32)}
    exe = cpu.compile(g, threads=2)
    assert exe.report["steps"] == {"depthwise" if group > 1 else "conv": 1, "view": 1}
    got = exe.run(feeds)["y"]
    assert sizes and min(sizes) > 1
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_upsampling_conv_transpose_splits_by_channels(
    rng: np.random.Generator, eager: list[int]
) -> None:
    """A stride = kernel ConvTranspose with a fused epilogue (PP-OCR's detector head) takes spans
    of output channels on the pool: its GEMM rows and its part of the scatter."""
    g = eqsat.Graph("deconv")
    x = g.input("x", (2, 12, 9, 7))
    w = g.constant((rng.standard_normal((12, 16, 2, 2)) / np.sqrt(12)).astype(F32))
    b = g.constant(rng.standard_normal(16).astype(F32))
    y = g.op(
        "FusedConvTranspose", x, w, b, strides=[2, 2], num_base_inputs=3,
        epilogue="(1 / (1 + exp(-{0})))",
    )  # fmt: skip
    g.output(y, "y")
    _same(g, rng, eager)


def test_winograd_small_plane_splits_by_filters(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Winograd conv whose plane is one chunk of tile rows (YOLOv8's 64-channel 20x20 convs)
    ran on one thread with two; at the default sizes it now splits by spans of filters, each
    thread with its rows of the fused epilogue's operands (a residual and a per-channel scale)."""
    from eqsat.lowering import cpu_winograd

    take_winograd(monkeypatch)
    sizes = record_pool_maps(monkeypatch)
    spans: list[list[tuple[int, int]]] = []
    real = cpu_winograd.Winograd._bind_filters

    def bind_filters(self: cpu_winograd.Winograd, scratch: np.ndarray, pool: object) -> object:
        spans.append(self.filter_spans)
        return real(self, scratch, pool)

    monkeypatch.setattr(cpu_winograd.Winograd, "_bind_filters", bind_filters)
    g = eqsat.Graph("wino")
    x = g.input("x", (1, 64, 20, 20))
    res = g.input("res", (1, 64, 20, 20))
    w = rng.standard_normal((64, 64, 3, 3)) / np.sqrt(64 * 9)
    scale = g.constant(rng.standard_normal((1, 64, 1, 1)).astype(F32))
    y = g.op(
        "FusedConv", x, g.constant(w.astype(F32)), g.constant(rng.standard_normal(64).astype(F32)),
        res, scale, pads=[1, 1, 1, 1], num_base_inputs=3, epilogue="max((({0} * {2}) + {1}), 0)",
    )  # fmt: skip
    g.output(y, "y")
    feeds = {n: rng.standard_normal((1, 64, 20, 20)).astype(F32) for n in ("x", "res")}
    one = cpu.compile(g, threads=1).run(feeds)["y"]
    assert not sizes and not spans
    exe = cpu.compile(g, threads=2)
    got = exe.run(feeds)["y"]
    assert spans and len(spans[-1]) > 1 and spans[-1][-1][1] == 64
    assert sizes and min(sizes) > 1
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(exe.run(feeds)["y"], got)  # the same spans every run


def test_attention_and_elementwise(rng: np.random.Generator, eager: list[int]) -> None:
    g = eqsat.Graph("attention")
    q, k, v = (g.input(n, (2, 3, 10, 8)) for n in "qkv")
    mask = g.input("mask", (2, 1, 1, 10))
    att = g.op("Attention", q, k, v, mask, scale=0.35)
    g.output(g.op("Tanh", g.op("Add", att, g.input("r", (3, 10, 8)))), "out")
    _same(g, rng, eager)


def test_blas_stays_on_one_thread(rng: np.random.Generator) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen: list[set[int]] = []
    g = eqsat.Graph("probe")
    x = g.input("x", (64, 64))
    g.output(g.op("MatMul", x, g.constant(rng.standard_normal((64, 64)).astype(F32))), "y")
    exe = cpu.compile(g, threads=2)
    step = exe._run_steps[0]

    def probe(env: Any) -> None:
        seen.append({i["num_threads"] for i in threadpoolctl.threadpool_info()
                     if i["user_api"] == "blas"})  # fmt: skip
        step(env)

    exe._run_steps = (probe,)
    env = exe._env({"x": np.ones((64, 64), F32)})
    exe._blas.enter()
    try:
        exe._run_steps[0](env)
    finally:
        exe._blas.exit()
    assert seen and seen[0] <= {1}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["nudenet_yolov8n", "ppocr_cls", "resnet_block", "mlp", "transformer_encoder", "silero_vad"],
)
def test_zoo_two_threads_match_one(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    sys.path.insert(0, str(ROOT))
    from bench import models as zoo

    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 1e9)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    entry = zoo.ZOO[name]
    graph = eqsat.optimize(
        entry.model(), ["algebraic", "fusion"], target="cpu", **entry.load_args()
    ).graph
    feeds = entry.input_feeds()
    one = cpu.compile(graph, threads=1).run(feeds)
    exe = cpu.compile(graph, threads=2)
    two, again = exe.run(feeds), exe.run(feeds)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-3, atol=1e-4, err_msg=key)
        np.testing.assert_array_equal(again[key], two[key], err_msg=key)


def test_big_gemms_run_on_blas_threads(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    """From BLAS_GEMM_THREADS threads on, a big GEMM step runs on BLAS's own threads (set for the
    product only: the run keeps BLAS on one thread around it), with the numbers of one thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from eqsat.lowering import cpu_gemm

    monkeypatch.setattr(cpu, "BLAS_GEMM_THREADS", 2)
    monkeypatch.setattr(cpu, "BLAS_GEMM_FLOPS", 1.0)
    # One thread's numbers through BLAS too (by default the packed tiles take these weights).
    monkeypatch.setattr(cpu_gemm, "PACKED_WEIGHTS", False)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 2)
    sizes = record_pool_maps(monkeypatch)
    during: list[set[int]] = []
    real = cpu_gemm.threaded_matmul

    def spy(threads: int) -> Any:
        mm = real(threads)

        def probe(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
            mm(x, y, out)
            during.append({threads})

        return probe

    monkeypatch.setattr(cpu_gemm, "threaded_matmul", spy)
    g = eqsat.Graph("blas")
    x = g.input("x", (96, 64))
    w = g.constant(rng.standard_normal((64, 80)).astype(F32), "w")
    c = g.input("c", (80,))
    h = g.op("Relu", g.op("MatMul", x, w))
    g.output(
        g.op("Gemm", h, g.constant(rng.standard_normal((80, 80)).astype(F32)), c, beta=2.0), "y"
    )
    feeds = {
        "x": rng.standard_normal((96, 64)).astype(F32),
        "c": rng.standard_normal(80).astype(F32),
    }
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    one = cpu.compile(g, threads=1).run(feeds)
    two = cpu.compile(g, threads=2).run(feeds)
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert during == [{2}, {2}] and not sizes  # both GEMMs on BLAS's threads, none on the pool
    assert after == before
    np.testing.assert_allclose(two["y"], one["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, docker --cpus=2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # no quota
        ({"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cpu_quota_of_a_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], want: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu.cpu_quota(str(tmp_path)) == want
    monkeypatch.setattr(cpu, "CGROUP", str(tmp_path))
    assert cpu.usable_cpus() == min(len(os.sched_getaffinity(0)), want or 10**6)


def _spied_blas_product(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], Any]:
    """``threaded_matmul(2)``, and the BLAS thread count seen during each of its products."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from eqsat.lowering import cpu_gemm

    seen: list[int] = []
    real = np.matmul

    def probe(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        infos = threadpoolctl.threadpool_info()
        seen.append(max(i["num_threads"] for i in infos if i["user_api"] == "blas"))
        return real(x, y, out=out)

    monkeypatch.setattr(np, "matmul", probe)
    return seen, cpu_gemm.threaded_matmul(2)


def test_blas_threads_stay_off_while_the_pool_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """After stalls (a busy machine) a big GEMM runs on the calling thread alone, like the maps."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen, mm = _spied_blas_product(monkeypatch)
    a, out = np.ones((8, 8), F32), np.empty((8, 8), F32)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
        mm(a, a, out)
        monkeypatch.setattr(cpu_threads._Backoff, "serial_until", float("inf"))
        mm(a, a, out)
    assert seen == [2, 1]
    np.testing.assert_array_equal(out, np.full((8, 8), 8, F32))


def test_a_stalled_blas_product_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A product on BLAS's threads far slower than one thread would be counts as a stall: the
    next ones run on the calling thread alone, as the pool's maps do."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(cpu_threads, "STALLED_GEMM_FLOPS", 1e30)  # every product is too slow
    monkeypatch.setattr(cpu_threads, "STALL_SECONDS", 0.0)
    monkeypatch.setattr(cpu_threads._Backoff, "serial_until", 0.0)
    monkeypatch.setattr(cpu_threads._Backoff, "seconds", 1e3)
    monkeypatch.setattr(cpu_threads._Backoff, "stalls", 0)
    seen, mm = _spied_blas_product(monkeypatch)
    a, out = np.ones((8, 8), F32), np.empty((8, 8), F32)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        mm(a, a, out)
        assert cpu_threads._Backoff.stalls == 1 and cpu_threads.backing_off()
        mm(a, a, out)
    assert seen == [2, 1]


def test_winograd_tile_rows_even_over_threads(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, eager: list[int]
) -> None:
    """YOLOv8's 64-channel 40x40 conv (10 tile rows) on two threads: its chunks of tile rows
    cover the plane once, come in a multiple of the threads and differ by a row at most, so both
    threads get the same share (it was 4, 4 and 2 rows: one thread computed 60% of the tiles);
    the conv matches one thread and numpy's reference."""
    from eqsat.lowering import cpu_winograd

    take_winograd(monkeypatch)
    w = (rng.standard_normal((64, 64, 3, 3)) / np.sqrt(64 * 9)).astype(F32)
    bias = np.zeros(64, F32)
    for threads, parts in ((2, 8), (2, 3), (3, 8), (1, 1)):
        plan = cpu_winograd.Winograd(w, bias, (40, 40), (40, 40), (1, 1), np.dtype(F32),
                                     parts=parts, threads=threads)  # fmt: skip
        spans = plan.row_spans
        assert spans[0][0] == 0 and spans[-1][1] == plan.th
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert plan.chunk_rows == max(b - a for a, b in spans)
        if threads > 1:
            sizes = [b - a for a, b in spans]
            assert len(spans) % threads == 0 and max(sizes) - min(sizes) <= 1
    g = eqsat.Graph("wino")
    x = g.input("x", (1, 64, 40, 40))
    b = g.constant(rng.standard_normal((64,)).astype(F32), "b")
    y = g.op("FusedConv", x, g.constant(w, "w"), b, num_base_inputs=3, pads=[1, 1, 1, 1],
             epilogue="max({0}, 0)")  # fmt: skip
    g.output(y, "y")
    _same(g, rng, eager)


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 24), (2, 3, 20, 24)])
def test_attention_heads_in_lanes(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, mask_shape: tuple | None
) -> None:
    """Heads wide enough for the tiles (keys and values from MIN_COLUMNS on): on two threads
    ranges of heads run in one native lane each (K transposed, Q K^T, the masked softmax, P V);
    the same bits as one thread, numpy's within rounding."""
    from eqsat.lowering import cpu_microkernel

    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    monkeypatch.setattr(cpu, "GRAIN_FLOPS", 1.0)
    g = eqsat.Graph("attention")
    q, k, v = (
        g.input("q", (2, 3, 20, 16)),
        g.input("k", (2, 3, 24, 16)),
        g.input("v", (2, 3, 24, 16)),
    )
    inputs = [q, k, v] + ([g.input("mask", mask_shape)] if mask_shape else [])
    g.output(g.op("Attention", *inputs, scale=0.25), "out")
    feeds = {x.name: rng.standard_normal(x.shape).astype(F32) for x in g.inputs}
    want = eqsat.compile(g, target="numpy").run(feeds)["out"]
    one = cpu.compile(g, threads=1).run(feeds)["out"]
    in_lanes: list[bool] = []
    record_pool_maps(monkeypatch, in_lanes)
    two = cpu.compile(g, threads=2).run(feeds)["out"]
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(two, one)
    if cpu_microkernel.ENABLED and cpu_microkernel.MIN_COLUMNS <= 16:
        assert in_lanes == [True]


@pytest.mark.tuning
def test_compile_runs_the_pools_first_probes_on_zeros(eager: list[int]) -> None:
    """A multi-threaded compile runs the graph on zero inputs until every call site of its pool
    has done both probe rounds (cpu_tune): the user's first runs are tuned ones."""
    from eqsat.lowering import cpu_tune

    g = eqsat.Graph("tuned")
    x = g.input("x", (1, 8, 12, 12))
    w = g.constant(np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype(F32))
    g.output(g.op("Relu", g.op("Conv", x, w, pads=[1, 1, 1, 1])), "y")
    exe = cpu.compile(g, threads=2)
    rounds = cpu_threads.EARLY_RETUNE_RUNS + cpu_threads.PROBE_RUNS
    assert exe.report["tune_runs"] == rounds and eager  # its steps split: the pool ran them
    sites = exe._pool._sites.values()
    assert sites and all(site.runs == rounds for site in sites)
    assert cpu_tune.tune(exe, seconds=0.0) == 0
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 8, 12, 12)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    np.testing.assert_allclose(exe.run(feeds)["y"], want, rtol=1e-5, atol=1e-5)
    # One thread: no pool, nothing to tune.
    assert "tune_runs" not in cpu.compile(g, threads=1).report

"""Keeping a woken pool worker off the CPU of the thread that woke it (Linux).

When a thread wakes another, Linux tends to queue the wakee on the waker's CPU (it expects them
to share data), and only its periodic load balancing later moves one of them to an idle CPU. On
the 2-vCPU VM that took milliseconds: a run's first maps after the workers had slept (any idle
gap over :data:`~eqsat.lowering.cpu_threads.SPIN_SECONDS`) found the calling thread and its
worker on one CPU, each waiting for the other to be descheduled. In benchmark-style blocks
(another engine's runs, then a pause), MobileNetV2's block took 5.5-8 ms on the first run of a
block where both threads were on one CPU (3-4 ms of each spent runnable but not running),
3.2-4.3 ms where they were on two, and ~2.3 ms on later runs.

So a worker that wakes from sleep on the CPU the caller was on when it posted the work moves
itself: its affinity is set once to every allowed CPU but that one (the kernel migrates it at
once) and then back to all of them, so it is pinned to nothing and the OS stays free to place it
later. The other way round, a caller woken onto the CPU of a worker that is polling for jobs
(after it waited for the GIL, say) moves itself the same way before it posts a map: in the
benchmark's blocks that was so for 0.6% of orientation_mnv3's maps and 5.5% of
transformer_encoder's, each costing the caller a time slice while the worker polled.

Nothing happens where the C library has no ``sched_getcpu`` (macOS, Windows) or where the
process may use one CPU only.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

# The CPU the calling thread was on when it last posted work to a sleeping worker (-1: unknown),
# and the CPU each pool worker (by its number, 1...) was on when it last started to poll.
CALLER_CPU = [-1]
WORKER_CPUS = [-1] * 65


def _getcpu() -> Callable[[], int] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


_GETCPU = _getcpu()


def current_cpu() -> int:
    """The CPU the calling thread runs on (-1 where that cannot be asked)."""
    return _GETCPU() if _GETCPU is not None else -1


def note_caller() -> None:
    """Records the calling thread's CPU before it wakes a worker."""
    if _GETCPU is not None:
        CALLER_CPU[0] = _GETCPU()


def leave_callers_cpu() -> bool:
    """Called by a worker that has just woken: moves it off :data:`CALLER_CPU` when it is on
    it (and another CPU is allowed). Returns whether it moved."""
    caller = CALLER_CPU[0]
    if _GETCPU is None or caller < 0 or _GETCPU() != caller:
        return False
    return _move_off(caller)


def note_worker(worker: int) -> None:
    """Records the CPU of pool worker ``worker`` (1, 2, ...) as it starts to poll for jobs."""
    if _GETCPU is not None and worker < len(WORKER_CPUS):
        WORKER_CPUS[worker] = _GETCPU()


def forget_worker(worker: int) -> None:
    """Pool worker ``worker`` stops polling (it blocks on its queue): no CPU to keep off."""
    if worker < len(WORKER_CPUS):
        WORKER_CPUS[worker] = -1


def leave_workers_cpus(workers: int) -> bool:
    """Called by a map's caller before it posts: moves it off the CPU it shares with one of
    workers 1..``workers`` (polling, as :func:`note_worker` recorded), if it does. Returns
    whether it moved."""
    if _GETCPU is None:
        return False
    cpu = _GETCPU()
    if cpu < 0 or cpu not in WORKER_CPUS[1 : workers + 1]:
        return False
    return _move_off(cpu)


def _move_off(cpu: int) -> bool:
    """Moves the calling thread off ``cpu`` to an allowed CPU where no worker polls, and leaves
    it free to run on every allowed CPU; stays where there is none (more threads than CPUs:
    moving would only trade one shared CPU for another, at every map)."""
    try:
        allowed = os.sched_getaffinity(0)
        others = allowed - {cpu} - set(WORKER_CPUS)
        if not others:
            return False
        os.sched_setaffinity(0, others)  # the calling thread (pid 0): migrated at once
        os.sched_setaffinity(0, allowed)
    except OSError:
        return False
    return True


__all__ = [
    "CALLER_CPU", "WORKER_CPUS", "current_cpu", "forget_worker", "leave_callers_cpu",
    "leave_workers_cpus", "note_caller", "note_worker",
]  # fmt: skip

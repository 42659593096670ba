"""Spin-waits in native code, without the GIL, for :mod:`eqsat.lowering.cpu_threads`.

A thread that blocks on a lock or a queue sleeps in the kernel, and waking it costs the OS a
scheduling round: ~60 us on the 2-core VM, more than many chunks of work take. A worker that
instead polls a flag in a ``nogil`` Numba loop sees a new job within a fraction of a
microsecond, and since it holds no GIL while it polls, the calling thread runs on unhindered.
Polling in Python would not do: a thread must hold the GIL to read a Python object, and
handing the GIL back and forth puts both threads to sleep in turn.

Once the flag changes, the poller keeps polling for a short settle time before it returns
(and takes the GIL): the thread that changed the flag still holds the GIL for the few
microseconds until it enters its own kernel, and a thread that asks for the GIL while another
holds it sleeps on a condition variable, which costs the same wake-up that spinning avoids.
"""

from __future__ import annotations

import platform
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, array, index):  # type: ignore[no-untyped-def]
    """``array[index]`` as an atomic load: the compiler may neither hoist it out of a loop nor
    cache it in a register, so another thread's store becomes visible."""
    signature = types.int64(array, index)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        array_type = sig.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, view, [args[1]], wraparound=False
        )
        return builder.load_atomic(pointer, "acquire", 8)

    return signature, codegen


@intrinsic
def _store_release(typingctx, array, index, value):  # type: ignore[no-untyped-def]
    """``array[index] = value`` as an atomic store: stores before it become visible first."""
    signature = types.void(array, index, value)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        array_type = sig.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, view, [args[1]], wraparound=False
        )
        builder.store_atomic(args[2], pointer, "release", 8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _pause(typingctx):  # type: ignore[no-untyped-def]
    """The CPU's spin-wait hint (x86 ``pause``): a polling loop then leaves the core's pipeline
    (and an SMT sibling) mostly idle and exits without a memory-order mis-speculation."""
    signature = types.void()

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if _X86:
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(hint, [])
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _cycles(typingctx):  # type: ignore[no-untyped-def]
    """The x86 time-stamp counter (0 elsewhere: other CPUs' cycle counters may trap in user
    mode): a clock that native code can read without the GIL."""
    signature = types.int64()

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if not _X86:
            return context.get_constant(types.int64, 0)
        counter = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter"
        )
        return builder.call(counter, [])

    return signature, codegen


@njit(cache=True, nogil=True)
def _settle(flags, index, settle):  # type: ignore[no-untyped-def]
    # No settling for a value posted from native code (see post_from_native): its poster let
    # go of the GIL before it posted.
    if index + 1 < flags.shape[0] and _load_acquire(flags, index + 1) == flags[index]:
        return
    for _ in range(settle):
        _load_acquire(flags, index)
        _pause()


@njit(cache=True, nogil=True, inline="always")
def post_from_native(flags, value):  # type: ignore[no-untyped-def]
    """``flags[0] = value``, marked (``flags[1] = value``, stored first) as posted by a thread
    that holds no GIL: a poller that sees it takes the GIL at once rather than settling."""
    _store_release(flags, 1, value)
    _store_release(flags, 0, value)


@njit(cache=True, nogil=True, inline="always")
def _poll(flags, index, seen, loads):  # type: ignore[no-untyped-def]
    value = seen
    for _ in range(loads):
        value = _load_acquire(flags, index)
        if value != seen:
            break
        _pause()
    return value


@njit(cache=True, nogil=True)
def spin_while(flags, index, seen, loads, settle):  # type: ignore[no-untyped-def]
    """Poll ``flags[index]`` (int64) while it equals ``seen``, ``loads`` times at most; once it
    differs, poll ``settle`` more times. Returns the last value read (``seen`` on time-out)."""
    value = _poll(flags, index, seen, loads)
    if value != seen:
        _settle(flags, index, settle)
    return value


@njit(cache=True, nogil=True)
def spin_while_timed(flags, index, seen, loads, settle, cycles):  # type: ignore[no-untyped-def]
    """:func:`spin_while`, also storing in ``cycles[0]`` the time-stamp counter cycles its polls
    took (0 where there is no counter): the poll's own wall time, which a clock read in Python
    after it would overstate by however long the thread then waits for the GIL."""
    start = _cycles()
    value = _poll(flags, index, seen, loads)
    cycles[0] = _cycles() - start
    if value != seen:
        _settle(flags, index, settle)
    return value


@njit(cache=True, nogil=True)
def store_then_spin_while_timed(store, at, value, flags, index, seen, loads, settle, cycles):  # type: ignore[no-untyped-def]
    """``store[at] = value`` (where ``at`` >= 0), then :func:`spin_while_timed`. The store is
    made here, once the calling thread has let go of the GIL: a thread polling ``store`` for
    it then takes the GIL at once, where a store made from Python woke it while the GIL was
    still held, and it slept on the GIL until the storing thread entered native code."""
    if at >= 0:
        store[at] = value
    return spin_while_timed(flags, index, seen, loads, settle, cycles)


@njit(cache=True, nogil=True)
def spin_until(flags, index, target, loads, settle):  # type: ignore[no-untyped-def]
    """Poll ``flags[index]`` until it equals ``target``, ``loads`` times at most; once it does,
    poll ``settle`` more times. Returns whether it did."""
    for _ in range(loads):
        if _load_acquire(flags, index) == target:
            _settle(flags, index, settle)
            return True
        _pause()
    return False


_RATE: list[float] = []  # [polls per second, time-stamp counter cycles per second (0: none)]


def _measure() -> list[float]:
    if not _RATE:
        flags, cycles = np.zeros(1, np.int64), np.zeros(1, np.int64)
        spin_while_timed(flags, 0, 0, 1, 0, cycles)  # compile (or load from the cache) first
        loads = 100_000
        best, per_second = float("inf"), 0.0
        for _ in range(3):
            start = time.perf_counter()
            spin_while_timed(flags, 0, 0, loads, 0, cycles)
            seconds = max(time.perf_counter() - start, 1e-6)
            if seconds < best:
                best, per_second = seconds, cycles[0] / seconds
        _RATE.extend([loads / best, per_second])
    return _RATE


def loads_per_second() -> float:
    """How many polls :func:`spin_while` makes in a second on this machine (measured once)."""
    return _measure()[0]


def cycles_per_second() -> float:
    """The rate of :func:`spin_while_timed`'s cycles (measured once); 0 where it has none."""
    return _measure()[1]


__all__ = [
    "cycles_per_second", "loads_per_second", "post_from_native", "spin_until", "spin_while",
    "spin_while_timed", "store_then_spin_while_timed",
]  # fmt: skip

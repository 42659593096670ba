"""Compiling a graph's new kernels in several processes at once, before the graph is bound.

Numba compiles one function at a time per process (a global compiler lock), and a kernel module
takes 0.5-6 s (a depthwise conv's unrolled plane kernel 4-6 s on the 2-core VM): MobileNetV3's
14 new modules took 40 s to compile in one process on an empty kernel cache. So
:func:`eqsat.lowering.cpu.compile` first builds its steps with the cache collecting
(:func:`collecting`): every module not yet compiled on this machine is recorded, and a stand-in
takes its place. :func:`compile_in_parallel` then compiles the recorded modules in up to ``processes``
processes: this one and children (``python -m eqsat.lowering.kernel_cache --claim BATCH
FILE...``), each taking the next module that none has taken and writing Numba's cache; the real
build then loads them from there in milliseconds.

It is best effort throughout. A stand-in that the build calls compiles its module there and
then (the collection goes on); a build that fails ends the collection, leaving the error to the
real build; a child that fails or runs past its time leaves its modules to the real build, which
compiles them itself and reports any error as it would have. The lanes' native chunk loops, which
Numba compiles on their first call, are compiled ahead by :mod:`eqsat.lowering.lane_prefetch`.
``$EQSAT_COMPILE_PROCESSES`` sets the number of processes (default: the compile's threads, within
the CPUs this process may use, at most :data:`MAX_PROCESSES`); 1 turns this off.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from eqsat.lowering import kernel_cache

MAX_PROCESSES = 8
# New modules of fewer source characters than this in all compile in this process: a child's
# start (importing Numba and eqsat) takes ~1.7 s on the 2-core VM, and a module about 1 ms per
# character of its source (an elementwise kernel's 700: 0.3-0.6 s; a depthwise conv's 5200:
# 4-6 s), so a child pays only past several seconds of compiling.
MIN_SOURCE_CHARS = 8000
# Children still running this long after they started (plus this much per module) are
# killed; the real build compiles what they left.
TIMEOUT_SECONDS = 120.0
TIMEOUT_PER_MODULE_SECONDS = 20.0


def processes(cpus: int) -> int:
    """How many compiling processes to use: ``$EQSAT_COMPILE_PROCESSES``, else ``cpus`` (at most
    :data:`MAX_PROCESSES`)."""
    explicit = os.environ.get("EQSAT_COMPILE_PROCESSES", "").strip()
    if explicit:
        try:
            return max(1, int(explicit))
        except ValueError:
            return 1
    return max(1, min(cpus, MAX_PROCESSES))


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    """Within it, :func:`eqsat.lowering.kernel_cache.load` called on this thread records the
    sources of modules not compiled on this machine yet in the list it yields, and returns
    stand-ins for them."""
    sources: list[str] = []
    thread = threading.get_ident()
    outer = kernel_cache.COLLECTING.get(thread)
    kernel_cache.COLLECTING[thread] = sources
    try:
        yield sources
    finally:
        if outer is None:
            del kernel_cache.COLLECTING[thread]
        else:
            kernel_cache.COLLECTING[thread] = outer


def python_interpreter() -> bool:
    """Whether ``sys.executable`` is a Python interpreter that children can be started with (an
    embedding program's own binary is not)."""
    name = os.path.basename(sys.executable or "").lower()
    return name.startswith(("python", "pypy"))


def claim(path: str, batch: str) -> bool:
    """Whether this process takes module file ``path`` of compile batch ``batch``: the first to
    create its claim file does."""
    try:
        os.close(os.open(f"{path}.{batch}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        return True  # a read-only cache: compile it (the others may too; the result is the same)
    return True


def release(names: list[str], batch: str) -> None:
    """Removes the claim files of ``names`` in compile batch ``batch`` (see :func:`claim`)."""
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(f"{name}.{batch}.claim")


def compile_claimed(paths: list[str], batch: str) -> None:
    """Compiles (loads) each module file of ``paths`` that this process claims first, in order:
    the processes of a batch share the list, and each takes the next module no other took."""
    for path in paths:
        if claim(path, batch):
            with contextlib.suppress(Exception):  # the build loads it again and reports it
                kernel_cache.load(Path(path).read_text())


def compile_in_parallel(sources: list[str], count: int) -> int:
    """Compiles the modules of ``sources`` in ``count`` processes at most: this one and child
    processes, each taking the next module none has taken, largest first (source length stands
    in for compile time), and waits for them. Returns how many children ran (0: too little to
    compile, or one process asked for: the build then compiles them as it goes)."""
    unique = [s for s in dict.fromkeys(sources) if not kernel_cache.compiled_here(s)]
    count = min(count, len(unique))
    if count < 2 or sum(map(len, unique)) < MIN_SOURCE_CHARS or not python_interpreter():
        return 0
    paths = [str(kernel_cache.publish(s)) for s in sorted(unique, key=len, reverse=True)]
    batch = new_batch()
    seconds = TIMEOUT_SECONDS + TIMEOUT_PER_MODULE_SECONDS * len(paths)
    children = beside_children(
        ["--claim", batch, *paths], count - 1, lambda: compile_claimed(paths, batch), seconds
    )
    release(paths, batch)
    return children


def new_batch() -> str:
    """A name for one compile's claims, unique across processes."""
    return f"{os.getpid()}-{time.monotonic_ns()}"


def beside_children(arguments: list[str], children: int, work: Callable[[], None],
                    seconds: float) -> int:  # fmt: skip
    """Runs ``work()`` here while ``children`` processes run ``python -m
    eqsat.lowering.kernel_cache <arguments>``, then waits for them, killing those still running
    ``seconds`` after they started. Returns how many started."""
    command = [sys.executable, "-m", "eqsat.lowering.kernel_cache", *arguments]
    started = []
    for _ in range(children):
        with contextlib.suppress(OSError):
            started.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    deadline = time.monotonic() + seconds
    work()
    for child in started:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return len(started)


__all__ = [
    "MAX_PROCESSES",
    "beside_children",
    "claim",
    "collecting",
    "compile_claimed",
    "compile_in_parallel",
    "new_batch",
    "processes",
    "python_interpreter",
    "release",
]

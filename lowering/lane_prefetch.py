"""Compiling the lanes a graph's first run would compile, in several processes, at compile time.

A lane (:mod:`eqsat.lowering.cpu_lanes`) is typed by its call, so Numba compiles it on the first
run, one lane after the other: on an empty kernel cache and 2 threads, PP-OCRv4's detector took
40 s to compile and then 26 s for its first run (20 lanes). So when a compile had new kernel
modules to build, :func:`compile_lanes_ahead` runs the executable once on zero inputs with its
lanes recording instead of computing (their argument types; the rest of the graph computes on
whatever the skipped lanes left), and the lane signatures not compiled on this machine yet are
compiled in up to ``processes`` processes: this one and children (``python -m
eqsat.lowering.kernel_cache --lanes BATCH FILE``), each taking the next signature that none has
taken. Numba's cache keeps them, and the first run loads them.

Best effort, like :mod:`eqsat.lowering.kernel_prefetch`: a dry run that fails, a signature that
fails to compile or a child that fails or runs past its time leaves those lanes to the first run,
which compiles them as before. A marker file per compiled signature (``<module>.<lane>.<hash>
.lane``) tells later compiles that it is in Numba's cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from eqsat.lowering import cpu_lanes, kernel_cache, kernel_prefetch

# A lane takes ~1 s to compile on the 2-core VM; past this, the children are killed and the
# first run compiles what they left.
TIMEOUT_SECONDS = 60.0
TIMEOUT_PER_LANE_SECONDS = 10.0
Lane = tuple[str, str, tuple[Any, ...]]  # (module file, lane name, Numba signature)


def record(run: Callable[[], object]) -> list[tuple[Any, tuple[Any, ...]]]:
    """The (lane, arguments) of the lane calls ``run()`` makes on this thread, the lanes not
    running; an error ends the run there.

    The steps after a skipped lane read whatever its output buffer held, NaN and infinities
    among it, so numpy's floating-point warnings are silenced for the run, on every thread (the
    pool's workers run chunks too: YOLOv8n's dry run on two threads warned "invalid value
    encountered in matmul" from them)."""
    thread = threading.get_ident()
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    cpu_lanes.RECORDING[thread] = calls
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            with contextlib.suppress(Exception):
                run()
    finally:
        del cpu_lanes.RECORDING[thread]
    return calls


def _marker(lane: Lane) -> Path:
    path, name, signature = lane
    digest = hashlib.sha256(repr(signature).encode()).hexdigest()[:16]
    return Path(f"{path}.{name}.{digest}.lane")


def wanted(calls: list[tuple[Any, tuple[Any, ...]]]) -> list[Lane]:
    """The lane signatures of ``calls`` that are neither compiled in this process nor marked
    compiled in the kernel cache, once each."""
    lanes: dict[Lane, None] = {}
    for lane, args in calls:
        py_func = getattr(lane, "py_func", None)
        module = sys.modules.get(getattr(py_func, "__module__", ""))
        path = getattr(module, "__file__", None)
        if py_func is None or path is None:
            continue
        signature = tuple(numba.typeof(a) for a in args)
        if signature in lane.overloads:
            continue
        item = (str(path), py_func.__name__, signature)
        if not _marker(item).is_file():
            lanes[item] = None
    return list(lanes)


def compile_one(lane: Lane) -> None:
    """Compiles (or loads from Numba's cache) one lane signature, then marks it compiled."""
    path, name, signature = lane
    module = kernel_cache.load(Path(path).read_text(), collect=False)
    getattr(module, name).compile(signature)
    with contextlib.suppress(OSError):
        _marker(lane).touch()


def compile_claimed(listing: str, batch: str) -> None:
    """Compiles each lane of the pickled list ``listing`` that this process claims first."""
    with open(listing, "rb") as f:
        lanes: list[Lane] = pickle.load(f)
    for i, lane in enumerate(lanes):
        if kernel_prefetch.claim(f"{listing}.{i}", batch):
            with contextlib.suppress(Exception):  # the first run compiles it and reports errors
                compile_one(lane)


def compile_lanes_ahead(run: Callable[[], object], count: int) -> int:
    """Records the lanes ``run()`` calls and compiles the new signatures in ``count`` processes at
    most, this one among them. Returns how many children ran (0: fewer than two signatures or
    processes, and the first run compiles them)."""
    lanes = wanted(record(run))
    count = min(count, len(lanes))
    if count < 2 or not kernel_prefetch.python_interpreter():
        return 0
    fd, listing = tempfile.mkstemp(prefix=".lanes.", suffix=".pickle", dir=kernel_cache.cache_dir())
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(lanes, f)
        batch = kernel_prefetch.new_batch()
        seconds = TIMEOUT_SECONDS + TIMEOUT_PER_LANE_SECONDS * len(lanes)
        children = kernel_prefetch.beside_children(
            ["--lanes", batch, listing], count - 1, lambda: compile_claimed(listing, batch), seconds
        )
        kernel_prefetch.release([f"{listing}.{i}" for i in range(len(lanes))], batch)
        return children
    finally:
        with contextlib.suppress(OSError):
            os.unlink(listing)


__all__ = ["compile_claimed", "compile_lanes_ahead", "compile_one", "record", "wanted"]

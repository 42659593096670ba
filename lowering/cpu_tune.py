"""Thread-pool tuning at compile time: a multi-threaded executable's first runs, on zeros.

Each call site of eqsat's pool learns on its first maps whether waking the workers pays for it
(:mod:`eqsat.lowering.cpu_threads`: :data:`~eqsat.lowering.cpu_threads.PROBE_RUNS` maps
alternating between the workers and the calling thread, then a second round from
:data:`~eqsat.lowering.cpu_threads.EARLY_RETUNE_RUNS`), and the first parallel maps also pay
for the workers' first touch of their scratch buffers. Left to the user's runs, that learning
was their first ~18 runs, half of them serial: a benchmark of 20 runs after 3 warm-ups saw
ResNet's projection block on two threads at its one-thread time (1.15 ms against 0.70 when
timed over 60 runs; onnxruntime 0.71-0.82). So :func:`tune` runs a new executable on zero
inputs until both rounds are done, or for :data:`TUNE_SECONDS` at most, before compile returns.
Only the static graph runs here (a run-time tail is not part of it), and a failure only ends
the warm-up: the user's own runs report their errors.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from eqsat.lowering import cpu_threads

# Wall time the warm-up runs may take at most (a model of 1 s a run gets one).
TUNE_SECONDS = 1.0


def tune(exe: Any, seconds: float | None = None) -> int:
    """Run ``exe`` (a multi-threaded CpuExecutable) on zero inputs until its pool's call sites
    have done both probe rounds, or for ``seconds`` (default :data:`TUNE_SECONDS`); returns the
    runs made."""
    budget = TUNE_SECONDS if seconds is None else seconds
    runs = cpu_threads.EARLY_RETUNE_RUNS + cpu_threads.PROBE_RUNS
    feeds = {v.name: np.zeros(v.shape, v.dtype) for v in exe.input_specs}
    started = time.perf_counter()
    done = 0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while done < runs and time.perf_counter() - started < budget:
            try:
                exe.run(feeds)
            except Exception:  # zeros a model cannot take: the user's runs will say
                break
            done += 1
    return done


__all__ = ["TUNE_SECONDS", "tune"]

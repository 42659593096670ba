"""Compiling a graph's new kernel modules in several processes (``lowering/kernel_prefetch``):
the collecting build records them and hands back stand-ins that still compute; a child process
compiles claimed modules into the shared cache, which this process then loads without
compiling; a compile with the children on gives the same numbers as the numpy target."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from eqsat.lowering import cpu, kernel_cache, kernel_prefetch
from numba.core.dispatcher import Dispatcher

import eqsat

F32 = np.float32


def _module_source(value: float) -> str:
    return (
        "import numpy as np\nfrom numba import njit, types\n\n\n"
        "@njit(types.float64(types.float64), cache=True)\n"
        f"def scale(x):\n    return x * {value!r}\n"
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EQSAT_KERNEL_CACHE", str(tmp_path))
    return tmp_path


def test_a_collecting_load_records_the_source_and_its_stand_in_computes(cache: Path) -> None:
    source = _module_source(float(np.random.default_rng().random()) + 2.0)
    assert not kernel_cache.compiled_here(source)
    with kernel_prefetch.collecting() as sources:
        stand_in = kernel_cache.load(source)
        elsewhere: list[object] = []
        other = threading.Thread(target=lambda: elsewhere.append(kernel_cache.load(source)))
        other.start()
        other.join()
    assert sources == [source]
    assert type(elsewhere[0]) is not type(stand_in)  # another thread is not collecting
    assert stand_in.scale(2.0) == pytest.approx(2.0 * float(source.split("* ")[1]))
    assert kernel_cache.compiled_here(source)  # the stand-in's call compiled it here
    assert (cache / f"k_{kernel_cache.source_key(source)}.ok").is_file()


def test_a_child_compiles_claimed_modules_into_the_shared_cache(cache: Path) -> None:
    values = np.random.default_rng().random(2) + 3.0
    sources = [_module_source(float(v)) for v in values]
    paths = [str(kernel_cache.publish(s)) for s in sources]
    assert kernel_prefetch.claim(paths[1], "b1")  # this process has taken the second module
    assert not kernel_prefetch.claim(paths[1], "b1") and kernel_prefetch.claim(paths[1], "b2")
    subprocess.run(
        [sys.executable, "-m", "eqsat.lowering.kernel_cache", "--claim", "b1", *paths],
        check=True,
        timeout=300,
    )
    assert kernel_cache.compiled_here(sources[0]) and not kernel_cache.compiled_here(sources[1])
    module = kernel_cache.load(sources[0])
    dispatcher = module.scale
    assert isinstance(dispatcher, Dispatcher)
    assert sum(dispatcher.stats.cache_misses.values()) == 0  # loaded, not compiled, here
    assert sum(dispatcher.stats.cache_hits.values()) >= 1
    assert dispatcher(2.0) == pytest.approx(2.0 * values[0])


def test_the_number_of_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EQSAT_COMPILE_PROCESSES", raising=False)
    assert kernel_prefetch.processes(2) == 2 and kernel_prefetch.processes(1) == 1
    assert kernel_prefetch.processes(64) == kernel_prefetch.MAX_PROCESSES
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "1")
    assert kernel_prefetch.processes(16) == 1
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "many")
    assert kernel_prefetch.processes(16) == 1
    assert kernel_prefetch.compile_in_parallel(["X = 1\n", "X = 2\n"], 4) == 0  # too little


def test_a_compile_with_child_processes_matches_numpy(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four elementwise chains (four new modules in a fresh cache) compiled with a child
    process beside this one: every module is compiled by one of them before the build, and
    the executable computes what the numpy target does."""
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "2")
    monkeypatch.setattr(kernel_prefetch, "MIN_SOURCE_CHARS", 0)
    ran: list[int] = []
    original = kernel_prefetch.compile_in_parallel

    def spy(sources: list[str], count: int) -> int:
        ran.append(original(sources, count))
        assert all(kernel_cache.compiled_here(s) for s in sources)
        return ran[-1]

    monkeypatch.setattr(kernel_prefetch, "compile_in_parallel", spy)
    rng = np.random.default_rng()
    g = eqsat.Graph("chains")
    x = g.input("x", (4, 33))
    for i, op in enumerate(("Tanh", "Sigmoid", "Exp", "Softsign")):
        scale = g.constant(np.array(rng.random() + 0.5, F32))
        g.output(g.op(op, g.op("Mul", x, scale)), f"y{i}")
    exe = cpu.compile(eqsat.optimize(g, target="cpu").graph, threads=1)
    assert ran == [1]
    feed = {"x": rng.standard_normal((4, 33)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feed)
    got = exe.run(feed)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_a_failing_compile_ahead_leaves_the_build_to_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiling ahead is an optimization: an error in it (here: children that cannot start)
    does not fail the compile."""
    monkeypatch.setenv("EQSAT_COMPILE_PROCESSES", "2")

    def broken(sources: list[str], count: int) -> int:
        raise OSError("no processes here")

    monkeypatch.setattr(kernel_prefetch, "compile_in_parallel", broken)
    g = eqsat.Graph("one")
    x = g.input("x", (3, 5))
    g.output(g.op("Tanh", x), "y")
    feed = {"x": np.linspace(-2, 2, 15, dtype=F32).reshape(3, 5)}
    got = cpu.compile(eqsat.optimize(g, target="cpu").graph, threads=2).run(feed)["y"]
    np.testing.assert_allclose(got, np.tanh(feed["x"]), rtol=1e-5, atol=1e-6)

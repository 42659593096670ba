"""On-disk cache of generated Numba kernels, keyed by source hash and Numba version.

Numba's ``cache=True`` cannot cache functions made with ``exec``: it needs a source file. So each
generated module is written to ``<cache>/k_<hash>.py``, where the hash covers the source, the Numba
and Python versions, and imported from there; Numba then keeps its compiled objects next to it
(``__pycache__``) and a later process loads them in milliseconds instead of compiling.

Safe across processes: a module file is created under a unique temporary name and published with
``os.link``, which fails when the file exists, so a published file is never rewritten (a rewrite
would change its mtime and invalidate Numba's index). Numba itself writes its cache files
atomically. The cache lives in ``$EQSAT_KERNEL_CACHE``, else ``$EQSAT_CACHE/kernels``, else
``~/.cache/eqsat/kernels``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numba

_LOADED: dict[str, ModuleType] = {}
_LOCK = threading.Lock()
# While a thread collects (kernel_prefetch.collecting), the sources of modules not compiled on
# this machine yet that it loads go here (by thread id), and load() hands back a stand-in.
COLLECTING: dict[int, list[str]] = {}


class _StandIn(ModuleType):
    """Stands for a kernel module that is being compiled elsewhere while a build collects
    sources: each attribute is a function that, called, loads the real module (compiling it here
    if need be) and calls the real one. A stand-in that a cache kept past the collection so
    still computes the right thing."""

    def __init__(self, source: str):
        super().__init__(f"eqsat_kernel_{source_key(source)}")
        self.__source = source

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        source = self.__source

        def resolved(*args: object, **kwargs: object) -> object:
            return getattr(load(source, collect=False), name)(*args, **kwargs)

        return resolved


def _file(key: str, suffix: str) -> Path:
    """The cache's file of module ``key``: ``.py`` its source, ``.ok`` the marker that a process
    imported it (so compiled it, or loaded it from Numba's cache)."""
    return cache_dir() / f"k_{key}{suffix}"


def compiled_here(source: str) -> bool:
    """Whether a process has compiled ``source``'s module into this cache (or this one loaded
    it): its marker file ``k_<hash>.ok`` is written once an import of it succeeded."""
    key = source_key(source)
    return key in _LOADED or _file(key, ".ok").is_file()


def publish(source: str) -> Path:
    """Writes ``source``'s module file into the cache (if it is not there yet); its path."""
    path = _file(source_key(source), ".py")
    _publish(path, source)
    return path


def cache_dir() -> Path:
    explicit = os.environ.get("EQSAT_KERNEL_CACHE")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        root = os.environ.get("EQSAT_CACHE")
        path = (Path(root).expanduser() if root else Path.home() / ".cache" / "eqsat") / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_key(source: str) -> str:
    salt = f"numba {numba.__version__}; python {sys.version_info[:3]}\n"
    return hashlib.sha256((salt + source).encode()).hexdigest()[:32]


def _publish(path: Path, source: str) -> None:
    if path.is_file():
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.chmod(tmp, 0o644)
        # FileExistsError: another process published the same source first.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load(source: str, collect: bool = True) -> ModuleType:
    """Import the module with ``source`` from the cache, writing it first if needed.

    Importing compiles the module's eagerly-typed kernels or loads them from Numba's cache.
    """
    key = source_key(source)
    with _LOCK:
        module = _LOADED.get(key)
        if module is not None:
            return module
        sources = COLLECTING.get(threading.get_ident()) if collect and COLLECTING else None
        if sources is not None and not _file(key, ".ok").is_file():
            sources.append(source)
            return _StandIn(source)
        path = _file(key, ".py")
        _publish(path, source)
        # A top-level name in sys.modules before executing: Numba's cached objects refer to
        # their module by name and import it when loaded.
        name = f"eqsat_kernel_{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _LOADED[key] = module
        with contextlib.suppress(OSError):
            _file(key, ".ok").touch()
        return module


def loaded_count() -> int:
    """How many distinct kernel modules this process has loaded (for reports and tests)."""
    return len(_LOADED)


def compile_stats() -> dict[str, int]:
    """Over the kernels this process loaded: signatures Numba compiled and ones it loaded from disk.

    A second process that compiles the same graphs with a warm cache reports ``compiled == 0``.
    """
    from numba.core.dispatcher import Dispatcher

    compiled = hits = 0
    with _LOCK:
        modules = list(_LOADED.values())
    for module in modules:
        for item in vars(module).values():
            if isinstance(item, Dispatcher) and item.__module__ == module.__name__:
                compiled += sum(item.stats.cache_misses.values())
                hits += sum(item.stats.cache_hits.values())
    return {"modules": len(modules), "compiled": compiled, "cache_hits": hits}


if __name__ == "__main__":
    # kernel_prefetch's children: python -m ... --claim BATCH FILE...
    # lane_prefetch's: python -m ... --lanes BATCH LISTING
    if sys.argv[1:2] == ["--claim"] and len(sys.argv) > 3:
        from eqsat.lowering.kernel_prefetch import compile_claimed

        compile_claimed(sys.argv[3:], sys.argv[2])
    elif sys.argv[1:2] == ["--lanes"] and len(sys.argv) == 4:
        from eqsat.lowering import lane_prefetch

        lane_prefetch.compile_claimed(sys.argv[3], sys.argv[2])

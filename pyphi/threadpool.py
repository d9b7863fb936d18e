"""ThreadPool: the native persistent thread pool (pyphi_pool), shared by every compute call.

One pool is created per process or per model and passed to `pyphi.quants.convert_rows`,
`pyphi.kernels.matmul` and the model code. It knows nothing about models; results never depend on
its size. Not here: what runs on it (the C functions that take a pool).
"""

from __future__ import annotations

import os

from ._native import ffi, lib

_CPUINFO = "/proc/cpuinfo"
MAX_THREADS = 1024  # csrc/threadpool.c refuses more (MAX_THREADS there)


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def physical_core_count() -> int:
    """Physical cores this process may run on: one thread per core is the best setting for
    memory-bound kernels (SMT siblings share the core's load units and caches).

    Reads the (physical id, core id) pair of each usable logical CPU from /proc/cpuinfo; without
    it, falls back to the number of usable logical CPUs.
    """
    usable = _usable_cpus()
    cores: set[tuple[str, str]] = set()
    try:
        with open(_CPUINFO, encoding="utf-8") as f:
            blocks = f.read().strip().split("\n\n")
    except OSError:
        blocks = []
    for block in blocks:
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        if "processor" not in fields or "core id" not in fields:
            continue
        if usable is not None and int(fields["processor"]) not in usable:
            continue
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    if cores:
        return len(cores)
    if usable:
        return len(usable)
    return os.cpu_count() or 1


class ThreadPool:
    """A native pool of `n_threads` threads, the calling thread included (n_threads - 1 workers).

    Use as a context manager, or call close(); a pool that is garbage collected is closed too.
    `handle` is the `pyphi_pool *` to pass to libpyphi functions.
    """

    def __init__(self, n_threads: int | None = None):
        if n_threads is None:
            n_threads = physical_core_count()
        if not isinstance(n_threads, int) or isinstance(n_threads, bool) or not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(f"n_threads must be an int in 1..{MAX_THREADS}, got {n_threads!r}")
        handle = lib.pyphi_pool_create(n_threads)
        if handle == ffi.NULL:
            raise RuntimeError(f"pyphi_pool_create({n_threads}) failed")
        self._handle = ffi.gc(handle, lib.pyphi_pool_destroy)
        self.n_threads = n_threads

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("ThreadPool is closed")
        return self._handle

    def close(self) -> None:
        """Stops and joins the workers now (idempotent)."""
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def __enter__(self) -> "ThreadPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else f"{self.n_threads} threads"
        return f"ThreadPool({state})"


def pool_handle(pool: ThreadPool | None):
    """The pyphi_pool * for `pool`; None means NULL, which runs on the calling thread alone."""
    return ffi.NULL if pool is None else pool.handle

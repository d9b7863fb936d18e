"""CPU features and the kernel instruction set: what libpyphi saw, chose, and uses now.

`system_info()` is what `pyphi.system_info()` returns; `set_isa` / `forced_isa` let tests and
benchmarks run the same call on every supported ISA in turn. Names come from the C enums of the
public header (pyphi.h), read through cffi, never retyped here.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ._native import check, ffi, lib

_FEATURE_PREFIX = "PYPHI_CPU_"


def _isa_ids() -> range:
    return range(lib.PYPHI_ISA_COUNT)


def isa_names() -> list[str]:
    """Every ISA name this library knows, scalar first, whether or not this CPU runs it."""
    return [ffi.string(lib.pyphi_isa_name(isa)).decode() for isa in _isa_ids()]


def supported_isas() -> list[str]:
    """The ISA names this CPU and build can run, scalar first."""
    return [isa_names()[isa] for isa in _isa_ids() if lib.pyphi_isa_supported(isa)]


def _isa_id(name: str) -> int:
    names = isa_names()
    if name not in names:
        raise ValueError(f"unknown ISA {name!r}; known: {', '.join(names)}")
    return names.index(name)


def cpu_features() -> list[str]:
    """Names of the CPU features libpyphi detected (and the OS enables), e.g. 'avx2'."""
    bits = lib.pyphi_cpu_features()
    elements = ffi.typeof("enum pyphi_cpu_feature").elements  # {value: "PYPHI_CPU_..."}
    return [
        elements[value][len(_FEATURE_PREFIX) :].lower()
        for value in sorted(elements)
        if bits & value
    ]


def current_isa() -> str:
    return isa_names()[lib.pyphi_isa_current()]


def best_isa() -> str:
    return isa_names()[lib.pyphi_isa_best()]


def set_isa(name: str) -> None:
    """Make every kernel call use ISA `name` from now on; NativeError if this CPU lacks it."""
    check(lib.pyphi_isa_set(_isa_id(name)), f"set_isa({name!r})")


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[str]:
    """Run the block with ISA `name`, then restore the one in use before (process-wide)."""
    previous = current_isa()
    set_isa(name)
    try:
        yield name
    finally:
        set_isa(previous)


def system_info() -> dict:
    """The library version, CPU features seen, and the ISA chosen at load time and in use now."""
    return {
        "version": ffi.string(lib.pyphi_version()).decode(),
        "cpu_features": cpu_features(),
        "isa_best": best_isa(),
        "isa_current": current_isa(),
        "isa_supported": supported_isas(),
    }

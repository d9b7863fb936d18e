"""pyphi: a CPU inference engine for Phi-4-mini-instruct, with an HF -> GGUF converter.

This module stays light: importing `pyphi` (or `pyphi.convert`) loads nothing native until a
function that needs the C core is called. `pyphi.Llama` (the high-level API, pyphi.llama) is
imported on first use.
"""

__version__ = "0.1.0"


def system_info() -> dict:
    """CPU features seen, the kernel ISA chosen at load time and the one in use now."""
    from .cpu import system_info as _system_info

    return _system_info()


def __getattr__(name: str):
    if name == "Llama":
        from .llama import Llama

        return Llama
    raise AttributeError(f"module 'pyphi' has no attribute {name!r}")

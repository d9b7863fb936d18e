"""The kernel tests and a set of forward-pass tests again, against the C core built with
AddressSanitizer and UndefinedBehaviorSanitizer (CMake option PYPHI_SANITIZE): any out-of-bounds
access, use after free or undefined behaviour (signed overflow, misaligned load, bad shift...)
aborts the run.

The sanitized library is built from this source tree into a temporary directory and loaded
through PYPHI_LIBRARY (pyphi/_native.py) by a child pytest, with the sanitizer runtimes preloaded
into the (uninstrumented) Python. Leak checking is off: the interpreter itself never frees
everything at exit.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every kernel test, and forward tests chosen so that each path of the forward pass runs once
# under the sanitizers: every ISA with f32 and f16 caches, packed Q8_0 weights, decode after
# prefill, the thread pool, a transformers comparison, K-quant weights packed by default, and
# numerics="ggml" on every ISA with its refusals. All
# of tests/test_model.py took 8 minutes here; the rest of it checks numbers, which the native run
# does. The row codecs (test_quants.py) are left out: the native fuzz harness (tests/fuzz) runs
# them under ASan+UBSan.
TESTS = [
    "tests/test_kernels.py",
    "tests/test_kernels_k.py",
    "tests/test_model.py::test_every_isa_matches_the_scalar_reference",
    "tests/test_model.py::test_packed_weights_give_the_scalar_forward_bit_for_bit[q8_0]",
    "tests/test_model.py::test_logits_while_packing_equal_those_after",
    "tests/test_model.py::test_decode_equals_prefill[f16]",
    "tests/test_model.py::test_thread_count_does_not_change_logits[q4_0]",
    "tests/test_model.py::test_float_weights_match_transformers[f32-tiny]",
    "tests/test_model_kquants.py::test_k_quant_models_top1_and_kl",
    "tests/test_model_kquants.py::test_ggml_numerics_k_quants_same_bits_on_any_thread_count",
    "tests/test_smollm2.py::test_ggml_numerics_same_bits_on_every_isa",
    "tests/test_smollm2.py::test_ggml_numerics_refuses_what_it_does_not_reproduce",
]


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(path), f"gcc has no {name}"
    return path


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:  # the PyPI package scikit-build-core's build used
        import cmake as cmake_package

        cmake = os.path.join(cmake_package.CMAKE_BIN_DIR, "cmake")
    return cmake


# A read of 64 floats from a 4-float numpy buffer: what the sanitized library must catch.
OVERREAD = """
import numpy as np
from pyphi._native import ffi, lib
x, y = np.zeros(4, np.float32), np.zeros(64, np.float32)
lib.pyphi_dequantize_row(0, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y), 64)
"""


@pytest.fixture(scope="module")
def sanitized_env(tmp_path_factory):
    build = tmp_path_factory.mktemp("sanitized")
    cmake = _cmake()
    subprocess.run([cmake, "-S", ROOT, "-B", build, "-DPYPHI_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                    "-DCMAKE_C_COMPILER=gcc"], check=True, capture_output=True)
    subprocess.run([cmake, "--build", build, "-j", str(os.cpu_count() or 1)], check=True, capture_output=True)
    return {
        **os.environ,
        "PYPHI_LIBRARY": str(build / "libpyphi.so"),
        "LD_PRELOAD": f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
        # Python's own allocator hides its buffers from ASan; plain malloc shows them
        "PYTHONMALLOC": "malloc",
        # abort on the first report; leaks off (the interpreter's own); torch's C++ pairs
        # allocations in ways ASan would report as mismatched (not our C code, which uses malloc)
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0:detect_odr_violation=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


def test_the_sanitized_build_catches_an_overread(sanitized_env):
    proc = subprocess.run([sys.executable, "-P", "-c", OVERREAD], env=sanitized_env, capture_output=True, text=True)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]


def test_kernel_and_forward_tests_are_sanitizer_clean(sanitized_env):
    env = sanitized_env
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-m", "not peer",
         "-o", "addopts=", *TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, tail
    # the child really ran the sanitized build, and every test in it
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail

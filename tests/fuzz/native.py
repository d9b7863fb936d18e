"""Builds the libFuzzer harness over the C core (fuzz_native.c + csrc/*.c) with clang, ASan and
UBSan, and runs it. Used by tests/test_fuzz.py (a bounded run) and by hand for a long run:

    python tests/fuzz/native.py --runs 1000000 [--corpus DIR]

The library's compile flags are CMakeLists.txt's (per-ISA flags on the kernel files, no FMA
contraction), read from CMake's compile_commands.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import fresh_process  # beside this file

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"
SANITIZE = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
# The library's files get the sanitizers and coverage, not libFuzzer's main.
LIBRARY_SANITIZE = [flag.replace("fuzzer,", "fuzzer-no-link,") for flag in SANITIZE]


def clang() -> str | None:
    return shutil.which("clang") or shutil.which("clang-14")


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:  # the PyPI package scikit-build-core's build used
        import cmake as cmake_package

        cmake = os.path.join(cmake_package.CMAKE_BIN_DIR, "cmake")
    return cmake


def library_commands(cc: str, out_dir: pathlib.Path) -> list[tuple[pathlib.Path, list[str]]]:
    """(source, compile arguments) of every file of the library, as CMakeLists.txt builds it for
    this machine (per-ISA flags, defines), read from CMake's compile_commands.json, minus the
    optimization level and the input/output arguments."""
    build = out_dir / "cmake"
    subprocess.run([_cmake(), "-S", ROOT, "-B", build, f"-DCMAKE_C_COMPILER={cc}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
                    "-DCMAKE_BUILD_TYPE=Debug"], check=True, capture_output=True)
    commands = []
    for entry in json.loads((build / "compile_commands.json").read_text()):
        args, keep, skip = shlex.split(entry["command"])[1:], [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in ("-o", "-c"):
                skip = True
            elif not arg.startswith("-O") and arg != "-g":
                keep.append(arg)
        commands.append((pathlib.Path(entry["file"]), keep))
    return commands


def build(out_dir: pathlib.Path) -> pathlib.Path:
    """Compiles the library's files and the harness to out_dir and links the fuzzer; returns it."""
    cc = clang()
    if cc is None:
        raise RuntimeError("clang not found (Debian: apt-get install clang libclang-rt-14-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    harness = (HERE / "fuzz_native.c", ["-std=c11", f"-I{CSRC}"])
    objects = []
    for src, args in [*library_commands(cc, out_dir), harness]:
        obj = out_dir / (src.stem + ".o")
        objects.append(str(obj))
        newest_input = max(p.stat().st_mtime for p in [src, *CSRC.glob("*.h")])
        if obj.exists() and obj.stat().st_mtime > newest_input:
            continue  # built before, by a long run
        # clang takes minutes on the intrinsics-heavy kernel files with sanitizers at -O1 (3.5 min
        # for kernels_avx512.c on our loaded 2-core box), seconds at -O0: they get -O0
        opt = "-O0" if src.name.startswith("kernels_") else "-O1"
        flags = SANITIZE if src == harness[0] else LIBRARY_SANITIZE
        subprocess.run([cc, *args, opt, "-g", *flags, "-c", str(src), "-o", str(obj)], check=True)
    binary = out_dir / "fuzz_native"
    subprocess.run([cc, *SANITIZE, *objects, "-lm", "-lpthread", "-o", str(binary)], check=True)
    return binary


def run(binary: pathlib.Path, corpus: pathlib.Path, runs: int, max_total_time: int = 0) -> subprocess.CompletedProcess:
    """Runs the fuzzer; libFuzzer exits non-zero on a crash, leak, timeout or out-of-memory."""
    corpus.mkdir(parents=True, exist_ok=True)
    args = [str(binary), str(corpus), f"-runs={runs}", "-max_len=4096", "-timeout=10",
            "-rss_limit_mb=1024", "-malloc_limit_mb=256", "-print_final_stats=1", "-seed=1"]
    if max_total_time:
        args.append(f"-max_total_time={max_total_time}")
    # a 64 MB quarantine (ASan's default is 256 MB) still catches a use after free within a run,
    # and keeps freed buffers from dominating the RSS that the 1 GB limit is meant to watch
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:allocator_may_return_null=1:quarantine_size_mb=64"}
    return fresh_process.run(args, env=env, cwd=corpus.parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/pyphi-fuzz-native"))
    parser.add_argument("--corpus", type=pathlib.Path, default=None)
    args = parser.parse_args()
    binary = build(args.work / "build")
    result = run(binary, args.corpus or args.work / "corpus", args.runs)
    sys.stderr.write(result.stderr[-4000:])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

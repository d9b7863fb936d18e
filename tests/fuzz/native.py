"""Builds the libFuzzer harness over the C core (fuzz_native.c + csrc/*.c) with clang, ASan and
UBSan, and runs it. Used by tests/test_fuzz.py (a bounded run) and by hand for a long run:

    python tests/fuzz/native.py --runs 1000000 [--corpus DIR]

The compile flags mirror CMakeLists.txt (per-ISA flags on the kernel files, no FMA contraction).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"
SANITIZE = ["-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
COMMON = ["-std=c11", "-g", "-ffp-contract=off", "-DPYPHI_BUILD", "-D_GNU_SOURCE",
          '-DPYPHI_VERSION="fuzz"', f"-I{CSRC}"]
# clang takes minutes to compile the intrinsics-heavy kernel files with sanitizers at -O1 (3.5 min
# for kernels_avx512.c on our loaded 2-core box), seconds at -O0: they get -O0, the rest -O1.
SLOW_TO_COMPILE = ("kernels_avx2.c", "kernels_avx512.c")
ISA_FLAGS = {
    "kernels_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
                         "-mfma", "-mf16c"],
}


def clang() -> str | None:
    return shutil.which("clang") or shutil.which("clang-14")


def sources() -> list[pathlib.Path]:
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    skip = {"cpu_generic.c"} if x86 else {"cpu_x86.c", *ISA_FLAGS}
    return [p for p in sorted(CSRC.glob("*.c")) if p.name not in skip]


def build(out_dir: pathlib.Path) -> pathlib.Path:
    """Compiles every C file to out_dir and links the fuzzer binary; returns its path."""
    cc = clang()
    if cc is None:
        raise RuntimeError("clang not found (Debian: apt-get install clang libclang-rt-14-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for src in [*sources(), HERE / "fuzz_native.c"]:
        obj = out_dir / (src.stem + ".o")
        objects.append(str(obj))
        newest_input = max(p.stat().st_mtime for p in [src, *CSRC.glob("*.h")])
        if obj.exists() and obj.stat().st_mtime > newest_input:
            continue  # built before, by a long run
        # the harness gets the fuzzer's instrumentation; the library the sanitizers' and coverage
        flags = SANITIZE if src.name == "fuzz_native.c" else [s.replace("fuzzer,", "fuzzer-no-link,") for s in SANITIZE]
        opt = "-O0" if src.name in SLOW_TO_COMPILE else "-O1"
        subprocess.run([cc, *COMMON, opt, *flags, *ISA_FLAGS.get(src.name, []), "-c", str(src), "-o", str(obj)],
                       check=True)
    binary = out_dir / "fuzz_native"
    subprocess.run([cc, *SANITIZE, *objects, "-lm", "-lpthread", "-o", str(binary)], check=True)
    return binary


def run(binary: pathlib.Path, corpus: pathlib.Path, runs: int, max_total_time: int = 0) -> subprocess.CompletedProcess:
    """Runs the fuzzer; libFuzzer exits non-zero on a crash, leak, timeout or out-of-memory."""
    corpus.mkdir(parents=True, exist_ok=True)
    args = [str(binary), str(corpus), f"-runs={runs}", "-max_len=4096", "-timeout=10",
            "-rss_limit_mb=1024", "-malloc_limit_mb=256", "-print_final_stats=1"]
    if max_total_time:
        args.append(f"-max_total_time={max_total_time}")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:allocator_may_return_null=1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=corpus.parent)


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

"""Conversion benchmark: pyphi-convert vs llama.cpp's convert + quantize, on the full-size model.

Makes the full-size random-weight Phi-4-mini checkpoint (3.84B parameters, 7.7 GB bf16, the
generator the tests use) once, then, alternating the two engines and repeating:
- pyphi:     `pyphi-convert HF_DIR -o OUT --type T` (one step);
- llama.cpp: `convert_hf_to_gguf.py --outtype bf16` then `llama_model_quantize` to T (its two
             steps; the llama.cpp tree comes from the llama-cpp-python sdist on PyPI, the same
             llama.cpp the installed `llama_cpp` was built from); for q8_0 also its one-step
             `--outtype q8_0`.
Each step runs as its own process; wall time and that process's peak RSS (wait4) are recorded.
Prints medians with min-max spread, and the ratio llama.cpp / pyphi (above 1: pyphi is faster).

    python bench/bench_convert.py --work /tmp/pyphi-bench --reps 3 --threads 2

Needs about 30 GB of free disk under --work. The page cache is warm after the first pass; every
engine reads the same warm checkpoint, which is why the order alternates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DEFAULT_TYPES = ("q4_0", "q8_0")
# llama_ftype values of llama.h for the types compared here.
LLAMA_FTYPES = {"q4_0": 2, "q8_0": 7}
LLAMA_CPP_PYTHON = "llama-cpp-python"


def run_measured(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None) -> tuple[float, float]:
    """Run cmd to completion; return (wall seconds, peak RSS in MB (10^6 bytes) of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e6


def ensure_checkpoint(work: Path) -> Path:
    hf_dir = work / "hf-full"
    if not (hf_dir / "model.safetensors.index.json").exists():
        print("making the full-size random checkpoint (once) ...", flush=True)
        wall, rss = run_measured([sys.executable, "-m", "pyphi.testing.checkpoint", str(hf_dir), "--size", "full"],
                                 cwd=work)
        print(f"  {wall:.0f} s, peak RSS {rss:.0f} MB", flush=True)
    return hf_dir


def ensure_llama_cpp_tree(work: Path) -> Path:
    """The llama.cpp source tree of the installed llama-cpp-python, from its sdist on PyPI."""
    import llama_cpp

    version = llama_cpp.__version__
    tree = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", f"{LLAMA_CPP_PYTHON}=={version}", "-d", str(work)],
                       check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(work / f"llama_cpp_python-{version}.tar.gz") as sdist:
            sdist.extractall(work, filter="data")
    return tree


QUANTIZE_SNIPPET = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3]); params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def pyphi_convert(hf_dir: Path, out: Path, out_type: str, threads: int) -> tuple[float, float]:
    return run_measured(["pyphi-convert", str(hf_dir), "-o", str(out), "--type", out_type, "--force",
                         "--threads", str(threads), "--no-progress"], cwd=out.parent)


def llama_convert(tree: Path, hf_dir: Path, out: Path, outtype: str) -> tuple[float, float]:
    out.unlink(missing_ok=True)
    return run_measured([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(out),
                         "--outtype", outtype], cwd=out.parent)


def llama_quantize(src: Path, out: Path, out_type: str, threads: int) -> tuple[float, float]:
    out.unlink(missing_ok=True)
    return run_measured([sys.executable, "-c", QUANTIZE_SNIPPET, str(src), str(out), str(LLAMA_FTYPES[out_type]),
                         str(threads)], cwd=out.parent)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pyphi-bench"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), choices=list(LLAMA_FTYPES))
    parser.add_argument("--keep", action="store_true", help="keep the GGUF files written")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hf_dir = ensure_checkpoint(args.work)
    tree = ensure_llama_cpp_tree(args.work)
    out = args.work / "out"
    out.mkdir(exist_ok=True)

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(args.reps):
        bf16 = out / "llama-bf16.gguf"
        print(f"rep {rep + 1}/{args.reps}: llama.cpp convert -> bf16", flush=True)
        convert_step = llama_convert(tree, hf_dir, bf16, "bf16")
        for out_type in args.types:
            engines = ["pyphi", "llama"] if rep % 2 == 0 else ["llama", "pyphi"]
            for engine in engines:
                print(f"rep {rep + 1}/{args.reps}: {engine} {out_type}", flush=True)
                if engine == "pyphi":
                    results.setdefault(("pyphi", out_type), []).append(
                        pyphi_convert(hf_dir, out / f"pyphi-{out_type}.gguf", out_type, args.threads))
                else:
                    wall, rss = llama_quantize(bf16, out / f"llama-{out_type}.gguf", out_type, args.threads)
                    results.setdefault(("llama quantize", out_type), []).append((wall, rss))
                    results.setdefault(("llama convert+quantize", out_type), []).append(
                        (convert_step[0] + wall, max(convert_step[1], rss)))
        results.setdefault(("llama convert bf16", "bf16"), []).append(convert_step)
        if "q8_0" in args.types:
            print(f"rep {rep + 1}/{args.reps}: llama.cpp convert -> q8_0 (one step)", flush=True)
            results.setdefault(("llama convert (one step)", "q8_0"), []).append(
                llama_convert(tree, hf_dir, out / "llama-direct-q8_0.gguf", "q8_0"))

    print(f"\nfull-size Phi-4-mini (random weights, bf16 checkpoint 7.67 GB), {args.threads} threads, "
          f"{args.reps} reps; median (min-max)")
    print(f"{'engine':28s} {'type':6s} {'wall s':>22s} {'peak RSS MB':>22s}")
    for (engine, out_type), runs in results.items():
        print(f"{engine:28s} {out_type:6s} {summary([w for w, _ in runs]):>22s} {summary([r for _, r in runs]):>22s}")
    for out_type in args.types:
        ours = statistics.median(w for w, _ in results[("pyphi", out_type)])
        theirs = statistics.median(w for w, _ in results[("llama convert+quantize", out_type)])
        print(f"{out_type}: llama.cpp two steps / pyphi = {theirs / ours:.2f}x wall time")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

"""Inference benchmark: pyphi vs llama.cpp (llama-cpp-python) on the full-size Phi-4-mini.

Builds what it needs under --work once: the full-size random-weight checkpoint
(`python -m pyphi.testing.checkpoint DIR --size full`) and pyphi's GGUFs of it
(`pyphi-convert DIR -o X --type T`). Both engines run pyphi's files, whose tensor-type mixes are
llama-quantize's (q4_0 and q4_k_m included: token_embd in Q6_K, the layer rules of llama-quant.cpp).

Each measurement runs in its own process (wait4 gives that process's peak RSS), engines
alternating, repeated --reps times. One process per (engine, type, threads, rep):
- load: constructor and first token: load + the logits of a one-token prompt (pyphi packs its
  Q4_0/Q8_0/K-quant weights on a background thread from load on, computing from the file
  meanwhile with the same results). pyphi then waits until the packed copies are complete
  ("packed s", from the start of the load) before the timed prefill and decode below, which are
  steady-state figures, as llama-bench's are (it discards a warm-up run);
- prefill: --prefill tokens from an empty cache in one call (n_batch 512), tok/s;
- decode: --decode single-token calls from an empty cache, tok/s (llama-bench's tg128);
- with --depth D (a separate process, fewer reps): a D-token prefill, then --depth-decode single
  tokens timed at depth D. The default D = 4064 ends the decode at position 4096, Phi-4-mini's
  original context: one token more and pyphi, like transformers, switches the whole sequence to
  the long LongRoPE factors and re-prefills it (pyphi.h), a one-off cost llama.cpp does not pay
  (it picks the factor set once from n_ctx). Reading 4064 or 4096 cached positions differs <1%.
Before each run the file is read once, so both engines find it in the page cache. Each run line
also gives how much of that process's memory 2 MiB page-table entries map (file_pmd_gb: the GGUF's
page cache; anon_huge_gb: pyphi's packed weights or either engine's buffers): whichever folios the
page cache holds decide it for both engines' file mappings, and 4 KiB entries read slower.
Tokens are uniformly random ids (seeded, the same for both engines); llama.cpp gets
n_threads_batch = n_threads so both use the same cores.

The table gives medians with min-max spread, the ratio pyphi / llama.cpp (above 1: pyphi is
faster), and for decode the roofline: file bytes x tok/s against a stream read of a 1 GiB buffer
(numpy, one process per thread) measured in the same run.

    python bench/bench_inference.py --work /tmp/pyphi-bench --types q4_0 q4_k_m q8_0 bf16 --threads 1 2

The machine may be shared: the 1-minute load average is printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TYPES = ("q4_0", "q4_k_m", "q8_0", "bf16")
DEFAULT_THREADS = (1, 2)
N_BATCH = 512
SEED = 1234
VOCAB_LIMIT = 100_000  # token ids drawn below this (all ordinary BPE tokens in Phi-4-mini)
STREAM_BYTES = 1 << 30


# ---- worker: one engine, one process ---------------------------------------------------------


def tokens(n: int, offset: int = 0) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(SEED + offset).integers(0, VOCAB_LIMIT, n)]


class PyphiEngine:
    def __init__(self, path: str, n_ctx: int, threads: int):
        from pyphi.model import Model

        self.model = Model(path, n_ctx=n_ctx, n_threads=threads, n_batch=N_BATCH)

    def eval(self, toks: list[int]) -> None:
        self.model.eval(toks)

    def reset(self) -> None:
        self.model.reset()

    def wait_packed(self) -> None:
        while not self.model.packed:
            time.sleep(0.01)


class LlamaEngine:
    def __init__(self, path: str, n_ctx: int, threads: int):
        from llama_cpp import Llama

        self.llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           n_batch=N_BATCH, verbose=False)

    def eval(self, toks: list[int]) -> None:
        self.llama.eval(toks)

    def reset(self) -> None:
        self.llama.reset()


ENGINES = {"pyphi": PyphiEngine, "llama.cpp": LlamaEngine}


def worker(engine: str, path: str, threads: int, mode: str, n_prefill: int, n_decode: int, depth: int) -> dict:
    n_ctx = max(n_prefill, n_decode, depth + n_decode) + 16
    t0 = time.perf_counter()
    e = ENGINES[engine](path, n_ctx, threads)
    load = time.perf_counter() - t0
    e.eval(tokens(1))
    first = time.perf_counter() - t0
    e.reset()
    out = {"load_s": load, "first_token_s": first}
    if hasattr(e, "wait_packed"):
        e.wait_packed()
        out["packed_s"] = time.perf_counter() - t0
    if mode == "short":
        t = time.perf_counter()
        e.eval(tokens(n_prefill))
        out["prefill_tps"] = n_prefill / (time.perf_counter() - t)
        e.reset()
        decode_toks = tokens(n_decode, 1)
        t = time.perf_counter()
        for tok in decode_toks:
            e.eval([tok])
        out["decode_tps"] = n_decode / (time.perf_counter() - t)
    else:
        t = time.perf_counter()
        e.eval(tokens(depth, 2))
        out["depth_prefill_tps"] = depth / (time.perf_counter() - t)
        decode_toks = tokens(n_decode, 3)
        t = time.perf_counter()
        for tok in decode_toks:
            e.eval([tok])
        out["depth_decode_tps"] = n_decode / (time.perf_counter() - t)
    return out | huge_mappings()


def huge_mappings() -> dict:
    """GB of this process's memory mapped by 2 MiB page-table entries: of files (the GGUF's page
    cache, FilePmdMapped) and anonymous (AnonHugePages: pyphi's packed weights, either engine's
    buffers). Reading the same bytes through 4 KiB entries is slower here (both engines' file
    mappings get whichever the kernel's page cache holds, so the run lines print it)."""
    sizes = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("FilePmdMapped", "AnonHugePages"):
                sizes[key] = int(rest.split()[0]) * 1024 / 1e9
    return {"file_pmd_gb": sizes.get("FilePmdMapped", 0.0), "anon_huge_gb": sizes.get("AnonHugePages", 0.0)}


# ---- parent: build files, run workers, summarise ----------------------------------------------


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run cmd to completion; return (wall seconds, peak RSS in MB (10^6 bytes) of that process, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e6, stdout


def ensure_files(work: Path, types: list[str], threads: int) -> dict[str, Path]:
    hf_dir = work / "hf-full"
    if not (hf_dir / "model.safetensors.index.json").exists():
        print("making the full-size random checkpoint (once) ...", flush=True)
        run_measured([sys.executable, "-m", "pyphi.testing.checkpoint", str(hf_dir), "--size", "full"], cwd=work)
    paths = {}
    for t in types:
        path = work / f"pyphi-full-{t}.gguf"
        if not path.exists():
            print(f"converting to {t} (once) ...", flush=True)
            run_measured(["pyphi-convert", str(hf_dir), "-o", str(path), "--type", t, "--threads", str(threads),
                          "--no-progress"], cwd=work)
        paths[t] = path
    return paths


STREAM_SNIPPET = """
import sys, time, numpy as np
a = np.ones(int(sys.argv[1]), dtype=np.uint8); a.view(np.int64).sum()
start = float(sys.argv[2])
while time.time() < start: pass
best = 1e9
for _ in range(8):
    t = time.perf_counter(); a.view(np.int64).sum(); best = min(best, time.perf_counter() - t)
print(a.nbytes / best / 1e9)
"""


def stream_bandwidth(n_procs: int) -> float:
    """GB/s of n_procs processes each summing its own 1 GiB buffer at the same time."""
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", STREAM_SNIPPET, str(STREAM_BYTES), str(start)],
                              stdout=subprocess.PIPE) for _ in range(n_procs)]
    return sum(float(p.communicate()[0]) for p in procs)


def read_into_page_cache(path: Path) -> None:
    """Reads the whole file once, so the run after it finds every page cached: the GGUFs together
    are larger than some machines' free memory, and a first-token time should measure loading, not
    the disk (both engines map the file and fault its pages in from the page cache)."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def load_average() -> float:
    return os.getloadavg()[0]


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pyphi-bench"))
    parser.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), choices=list(DEFAULT_TYPES))
    parser.add_argument("--threads", nargs="+", type=int, default=list(DEFAULT_THREADS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4064, help="0: skip the depth runs")
    parser.add_argument("--depth-decode", type=int, default=32)
    parser.add_argument("--depth-reps", type=int, default=1)
    parser.add_argument("--depth-types", nargs="+", default=["q4_0"], choices=list(DEFAULT_TYPES))
    parser.add_argument("--depth-threads", nargs="+", type=int, default=list(DEFAULT_THREADS))
    parser.add_argument("--worker", nargs=7, metavar=("ENGINE", "PATH", "THREADS", "MODE", "PREFILL", "DECODE", "DEPTH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, path, threads, mode, n_prefill, n_decode, depth = args.worker
        print(json.dumps(worker(engine, path, int(threads), mode, int(n_prefill), int(n_decode), int(depth))))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    paths = ensure_files(args.work, sorted(set(args.types) | set(args.depth_types if args.depth else [])),
                         max(args.threads))
    bandwidth = {n: stream_bandwidth(n) for n in sorted(set(args.threads) | set(args.depth_threads))}
    print("stream read GB/s: " + ", ".join(f"{n} thread(s) {bw:.1f}" for n, bw in bandwidth.items()), flush=True)

    results: dict[tuple, list[dict]] = {}
    loads: list[float] = []

    def run(engine: str, t: str, threads: int, mode: str, n_decode: int) -> None:
        cmd = [sys.executable, __file__, "--worker", engine, str(paths[t]), str(threads), mode,
               str(args.prefill), str(n_decode), str(args.depth)]
        read_into_page_cache(paths[t])
        load = load_average()
        wall, rss, stdout = run_measured(cmd)
        r = json.loads(stdout.strip().splitlines()[-1])
        r["rss_mb"], r["load"] = rss, load
        loads.append(load)
        results.setdefault((engine, t, threads, mode), []).append(r)
        print(f"  {engine:9s} {t:5s} {threads}t {mode:5s} load {load:.1f}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("load",)), flush=True)

    plan = [(t, n, "short", args.decode, args.reps) for t in args.types for n in args.threads]
    if args.depth:
        plan += [(t, n, "depth", args.depth_decode, args.depth_reps) for t in args.depth_types
                 for n in args.depth_threads]
    for rep in range(max(args.reps, args.depth_reps)):
        for t, threads, mode, n_decode, reps in plan:
            if rep >= reps:
                continue
            engines = list(ENGINES) if rep % 2 == 0 else list(reversed(ENGINES))
            for engine in engines:
                run(engine, t, threads, mode, n_decode)

    file_gb = {t: paths[t].stat().st_size / 1e9 for t in paths}
    at_depth = f", decode {args.depth_decode} tokens at depth {args.depth}" if args.depth else ""
    print(f"\nfull-size Phi-4-mini, random weights, pyphi's GGUFs; prefill {args.prefill} tokens, decode "
          f"{args.decode} tokens from an empty cache{at_depth}; "
          f"n_batch {N_BATCH}; medians (min-max) of {args.reps} reps ({args.depth_reps} at depth); tok/s; "
          f"load average during runs {min(loads):.1f}-{max(loads):.1f}")
    header = f"{'type':5s} {'thr':>3s} {'metric':17s} {'pyphi':>22s} {'llama.cpp':>22s} {'ratio':>6s} {'roofline':>30s}"
    print(header)
    print("-" * len(header))
    metrics = [("short", "prefill_tps", f"prefill {args.prefill}"), ("short", "decode_tps", f"decode {args.decode}"),
               ("depth", "depth_decode_tps", f"decode @{args.depth}"), ("short", "first_token_s", "first token s"),
               ("short", "packed_s", "packed s"), ("short", "rss_mb", "peak RSS MB")]
    for t in paths:
        for threads in sorted(set(args.threads) | set(args.depth_threads)):
            for mode, key, label in metrics:
                ours = [r[key] for r in results.get(("pyphi", t, threads, mode), []) if key in r]
                theirs = [r[key] for r in results.get(("llama.cpp", t, threads, mode), []) if key in r]
                if key == "packed_s" and ours:  # pyphi's alone: when its packed copies were complete
                    print(f"{t:5s} {threads:3d} {label:17s} {summary(ours):>22s} {'-':>22s}")
                    continue
                if not ours or not theirs:
                    continue
                ratio = statistics.median(ours) / statistics.median(theirs)
                if key in ("first_token_s", "rss_mb"):
                    ratio = 1 / ratio  # above 1: pyphi is faster / smaller
                roof = ""
                if key == "decode_tps":
                    gbs = [file_gb[t] * statistics.median(v) for v in (ours, theirs)]
                    roof = f"{gbs[0]:.1f}/{gbs[1]:.1f} of {bandwidth[threads]:.1f} GB/s ({gbs[0] / bandwidth[threads]:.0%})"
                print(f"{t:5s} {threads:3d} {label:17s} {summary(ours):>22s} {summary(theirs):>22s} {ratio:6.2f} {roof:>30s}")
    print("ratio: pyphi / llama.cpp for tok/s, llama.cpp / pyphi for first-token time and RSS (above 1: pyphi better)")
    print("roofline: file bytes x decode tok/s for pyphi/llama.cpp, against the stream read of that many processes")


if __name__ == "__main__":
    main()

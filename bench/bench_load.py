"""Load-time benchmark of the pieces before the first token: opening a GGUF with the real 200k
Phi-4-mini vocabulary (pyphi's reader vs gguf-py's GGUFReader) and building the tokenizer from it.

    python bench/bench_load.py --reps 5

Makes the tiny random checkpoint and its F32 GGUF under --work once (the vocabulary is the real
one; the weights do not matter here). Each figure is the median and min-max of --reps runs in
this process, the page cache warm.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def model_file(work: Path) -> Path:
    hf, path = work / "hf-tiny", work / "tiny-f32.gguf"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pyphi.testing.checkpoint", str(hf), "--size", "tiny"], check=True)
        subprocess.run(["pyphi-convert", str(hf), "-o", str(path), "--type", "f32", "--force"], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pyphi-bench"))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = model_file(args.work)

    import gguf

    from pyphi.gguf_reader import GGUFFile
    from pyphi.tokenizer import Tokenizer

    def open_ours():
        with GGUFFile(path) as f:
            f.metadata["tokenizer.ggml.merges"]

    def build_tokenizer():
        Tokenizer.from_path(path)

    rows = [("pyphi GGUFFile open", timed(open_ours, args.reps)),
            ("gguf-py GGUFReader open", timed(lambda: gguf.GGUFReader(str(path)), max(1, args.reps // 2))),
            ("pyphi Tokenizer.from_path", timed(build_tokenizer, args.reps))]
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB, 200,064-token vocabulary, 199,742 merges)")
    for name, times in rows:
        print(f"{name:28s} {statistics.median(times):7.3f} s ({min(times):.3f}-{max(times):.3f}, {len(times)} runs)")


if __name__ == "__main__":
    main()

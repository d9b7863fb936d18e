"""Runs a fuzzer so that its peak-RSS reading starts from its own memory, not its parent's.

libFuzzer's -rss_limit_mb compares getrusage's ru_maxrss with the limit, and on Linux a process
made by fork and exec inherits that reading from its parent: the copied address space counts as
resident at the fork, and exec keeps its high-water mark. Started straight from a pytest process
holding torch and models (2.9 GB in CI), every fuzzer "ran out of memory" before its first input.
Started from a shell that itself forks, the fuzzer is a grandchild of a small process and its
reading is its own.
"""

from __future__ import annotations

import os
import signal
import subprocess


def run(args: list[str], timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, text=True, **kwargs) through `sh` forking the
    command in the background, in a process group of its own that a timeout kills whole."""
    proc = subprocess.Popen(["sh", "-c", '"$@" & wait $!', "sh", *map(str, args)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

"""pyphi-convert under faults: interrupted (SIGINT), killed (SIGKILL), a full disk, a read-only
output directory. Under the output's final name there is, at every moment, either nothing or a
complete file the GGUF reader validates; a process that survives says what happened in one line
and removes its temporary file.

Full disk is a file size limit (RLIMIT_FSIZE: writes fail with EFBIG, as CPython ignores
SIGXFSZ) and, where this process may mount (root in a container that allows it), a 2 MB tmpfs
(ENOSPC). Read-only is a tmpfs mounted read-only, which stops root too (chmod does not); without
mount permission that one case is skipped and says why.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager

import pytest

from pyphi.gguf_reader import GGUFFile

# The conversion (tiny, f32: ~52 MB written) takes long enough for a signal to land mid-write.
OUT_TYPE = "f32"


@pytest.fixture(scope="module")
def hf_dir(model_zoo):
    return model_zoo.hf_dir("tiny")


@pytest.fixture(scope="module")
def expected_tensors(model_zoo):
    with GGUFFile(model_zoo.gguf("tiny", "q8_0")) as f:
        return set(f.tensors)


def _start(hf_dir, out, preexec_fn=None):
    exe = shutil.which("pyphi-convert")
    assert exe, "pyphi-convert is not on PATH: install the package"
    return subprocess.Popen([exe, str(hf_dir), "-o", str(out), "--type", OUT_TYPE, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def _wait_for_temp_file(proc, directory, timeout=120):
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if any(name.endswith(".tmp") for name in os.listdir(directory)):
            time.sleep(0.05)  # some data written
            return True
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return False


def _assert_complete_or_absent(out, expected_tensors):
    if out.exists():
        with GGUFFile(out) as f:  # validates every tensor's bytes lie inside the file
            assert set(f.tensors) == expected_tensors


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_mid_conversion_leaves_nothing(hf_dir, tmp_path, expected_tensors):
    out = tmp_path / "out.gguf"
    proc = _start(hf_dir, out, preexec_fn=_default_sigint)
    running = _wait_for_temp_file(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if not running or proc.returncode == 0:
        pytest.fail(f"the conversion ended before the signal (status {proc.returncode}): make it longer")
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "pyphi-convert: interrupted", stderr
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_sigkill_mid_conversion_never_shows_a_partial_file(hf_dir, tmp_path, expected_tensors):
    """SIGKILL cannot be handled: the temporary file stays (hidden, named .out.gguf.*.tmp), the
    final name never appears; a rerun then writes the complete file beside the leftover."""
    out = tmp_path / "out.gguf"
    proc = _start(hf_dir, out)
    assert _wait_for_temp_file(proc, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = os.listdir(tmp_path)
    assert not out.exists(), left
    assert len(left) == 1 and left[0].startswith(".out.gguf.") and left[0].endswith(".tmp"), left
    rerun = _start(hf_dir, out)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    _assert_complete_or_absent(out, expected_tensors)
    assert out.exists()


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def _assert_clean_failure(proc, stderr, directory, *needles):
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyphi-convert: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert os.listdir(directory) == [], os.listdir(directory)


def test_file_size_limit_fails_cleanly(hf_dir, tmp_path):
    out = tmp_path / "out.gguf"
    proc = _start(hf_dir, out, preexec_fn=_limit_file_size)
    _, stderr = proc.communicate(timeout=600)
    _assert_clean_failure(proc, stderr, tmp_path, str(out), "cannot write", "File too large")


@contextmanager
def _tmpfs(options: str):
    """A tmpfs mounted with `options`, or a skip naming why it cannot be."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a tmpfs")
    directory = tempfile.mkdtemp(prefix="pyphi-tmpfs-")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", directory], capture_output=True, text=True)
    if proc.returncode != 0:
        os.rmdir(directory)
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", directory], check=True)
        os.rmdir(directory)


def test_full_disk_fails_cleanly(hf_dir):
    with _tmpfs("size=2m") as directory:
        out = os.path.join(directory, "out.gguf")
        proc = _start(hf_dir, out)
        _, stderr = proc.communicate(timeout=600)
        _assert_clean_failure(proc, stderr, directory, out, "cannot write", "No space left on device")


def test_read_only_directory_fails_cleanly(hf_dir):
    with _tmpfs("ro,size=1m") as directory:
        out = os.path.join(directory, "out.gguf")
        proc = _start(hf_dir, out)
        _, stderr = proc.communicate(timeout=600)
        _assert_clean_failure(proc, stderr, directory, directory, "cannot create a file here", "Read-only file system")

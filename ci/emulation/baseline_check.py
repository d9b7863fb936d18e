"""Static half of the portability proof: no instruction beyond the target's baseline in shared code.

QEMU (run.py) only proves the paths a test happens to execute. This builds libpyphi's objects
with CMake (for x86-64, and for aarch64 with the cross compiler when present) and disassembles
every object file except the per-ISA kernel files, which are reached only through dispatch.c after
the CPU check. It fails on:
- x86-64: any VEX/EVEX-encoded instruction (AVX and later: a `v` mnemonic or a ymm/zmm/k register)
  or any SSE3/SSSE3/SSE4.x/POPCNT/BMI/MOVBE instruction: the shared code must be SSE2, the x86-64
  baseline, so that it runs on any x86-64 CPU before and after the CPUID check;
- aarch64: SDOT/UDOT (ARMv8.2) outside kernels_neon_dotprod.c;
- a shared object that calls a function of a per-ISA object directly (rather than through the
  dispatch table), or any object with a static constructor (.init_array / .ctors: code that
  would run at load time, before any check).

    python ci/emulation/baseline_check.py     # prints what it checked; exit status 1 on a finding
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# Per-ISA kernel files, by name (kernels_avx2*.c, kernels_avx512*.c, kernels_neon_dotprod*.c):
# everything else is shared code.
ISA_OBJECT = {"x86_64": re.compile(r"^kernels_avx(2|512)\w*\.c\.o$"),
              "aarch64": re.compile(r"^kernels_neon_dotprod\w*\.c\.o$")}
# Mnemonics of x86 extensions past SSE2 that need no VEX (Intel SDM vol. 2, per extension).
X86_BEYOND_SSE2 = re.compile(
    r"^(addsubp[sd]|h(add|sub)p[sd]|lddqu|mov(ddup|shdup|sldup)|fisttp|monitor|mwait"  # SSE3
    r"|pabs[bwd]|palignr|ph(add|sub)(w|d|sw)|pmaddubsw|pmulhrsw|pshufb|psign[bwd]"  # SSSE3
    r"|blendv?p[sd]|dpp[sd]|extractps|insertps|movntdqa|mpsadbw|packusdw|pblend(vb|w)"  # SSE4.1
    r"|pcmpeqq|pextr[bdq]|phminposuw|pinsr[bdq]|pm(ax|in)(sb|sd|ud|uw)|pmov[sz]x\w+"
    r"|pmuldq|pmulld|ptest|round[ps][sd]"
    r"|pcmp[ei]str[im]|pcmpgtq|crc32\w*"  # SSE4.2
    r"|popcnt|lzcnt|tzcnt|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx"
    r"|movbe)$")
VEX_OPERAND = re.compile(r"%[yz]mm\d|%k[0-7]\b")
ARM_DOTPROD = re.compile(r"^[su]dot$")


def build_objects(build: Path, toolchain: Path | None) -> list[Path]:
    cmd = ["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    if toolchain:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain}")
    for step in (cmd, ["cmake", "--build", str(build)]):
        out = subprocess.run(step, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(step)} failed:\n{out.stdout[-3000:]}")
    return sorted(build.rglob("*.c.o"))


def instructions(objdump: str, obj: Path):
    """(function, mnemonic, operands) of every instruction in obj's code."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(obj)], check=True, text=True,
                          stdout=subprocess.PIPE).stdout
    function = "?"
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            function = head.group(1)
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$", line)
        if insn:
            yield function, insn.group(1), insn.group(2)


def symbols(nm: str, obj: Path, kinds: str) -> set[str]:
    """Names of obj's global symbols whose nm type letter is in `kinds`."""
    lines = subprocess.run([nm, "-g", str(obj)], check=True, text=True, stdout=subprocess.PIPE).stdout
    fields = [line.split() for line in lines.splitlines()]
    return {f[-1] for f in fields if len(f) >= 2 and f[-2] in kinds}


def findings(arch: str, objects: list[Path], objdump: str, readelf: str, nm: str) -> list[str]:
    found = []
    isa_objects = [o for o in objects if ISA_OBJECT[arch].match(o.name)]
    isa_functions = set().union(*(symbols(nm, o, "TWi") for o in isa_objects))
    for obj in objects:
        sections = subprocess.run([readelf, "-SW", str(obj)], check=True, text=True,
                                  stdout=subprocess.PIPE).stdout
        if re.search(r"\.(init_array|ctors)\b", sections):
            found.append(f"{obj.name}: has a static constructor section")
        if obj in isa_objects:
            continue
        called = symbols(nm, obj, "U") & isa_functions
        if called:
            found.append(f"{obj.name}: calls {sorted(called)} directly (only the table may)")
        for function, mnemonic, operands in instructions(objdump, obj):
            if arch == "x86_64":
                bad = mnemonic.startswith("v") or VEX_OPERAND.search(operands) or X86_BEYOND_SSE2.match(mnemonic)
            else:
                bad = ARM_DOTPROD.match(mnemonic)
            if bad:
                found.append(f"{obj.name} <{function}>: {mnemonic} {operands}")
    return found


def check(arch: str) -> int:
    """Build for arch, report, and return the number of findings."""
    prefix = "" if arch == "x86_64" else "aarch64-linux-gnu-"
    tools = [f"{prefix}objdump", f"{prefix}readelf", f"{prefix}nm"]
    toolchain = HERE / "aarch64-toolchain.cmake" if arch == "aarch64" else None
    with tempfile.TemporaryDirectory(prefix=f"pyphi-baseline-{arch}-") as tmp:
        objects = build_objects(Path(tmp), toolchain)
        n_isa = sum(1 for o in objects if ISA_OBJECT[arch].match(o.name))
        if n_isa == 0:
            print(f"{arch}: the build has no per-ISA kernel objects: wrong architecture?")
            return 1
        found = findings(arch, objects, *tools)
    print(f"{arch}: {len(objects) - n_isa} shared objects checked, {n_isa} per-ISA kernel objects "
          f"reached only through tables: {len(found)} findings")
    for f in found[:50]:
        print(f"  {f}")
    return len(found)


def main() -> int:
    if shutil.which("cmake") is None or shutil.which("objdump") is None:
        raise SystemExit("needs cmake and binutils")
    if platform.machine() != "x86_64":
        raise SystemExit("run on an x86-64 host (it builds natively for x86-64, and cross for aarch64)")
    total = check("x86_64")
    if shutil.which("aarch64-linux-gnu-gcc"):
        total += check("aarch64")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())

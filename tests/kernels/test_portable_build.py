"""The kernel table compiled apart from the package build, by the compilers and for the
targets this machine has: gcc and clang natively (every level the CPU runs), and the
portable kernels for aarch64 with a cross compiler, run under qemu-aarch64 when it is
installed. Each build runs tests/kernels/c/kernel_selftest.c (the GEMM against a plain loop, the
vector cells against the scalar rows), and tests/kernels/c/pool_selftest.c the thread pool
with each way of sleeping. The headers are the installed package's."""
import shutil
import subprocess
from pathlib import Path

import pytest

import fastrnn

HEADERS = Path(fastrnn.__file__).parent / "kernels"
SELFTEST = Path(__file__).parent / "c" / "kernel_selftest.c"
FLAGS = ["-D_GNU_SOURCE", "-O2", "-Wall", "-Werror", "-Wno-unused-function",
         "-fno-trapping-math", f"-I{HEADERS}"]
LIBS = ["-lm", "-lpthread", "-ldl"]


def _need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _build(cc, out, *extra):
    res = subprocess.run([cc, *FLAGS, *extra, str(SELFTEST), "-o", str(out), *LIBS],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.split("\n")


def test_headers_are_installed():
    for name in ("_ktable.h", "_kern_body.h", "simd/_simd_default.h", "_cellmath_rows.h"):
        assert (HEADERS / name).is_file(), name


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_native_build_passes_on_every_level(cc, tmp_path):
    _build(_need(cc), tmp_path / "selftest")
    lines = _run([str(tmp_path / "selftest")])
    from fastrnn import _kernels

    want = [f"{cap}: ok" for cap in _kernels.supported_cpu_capabilities()]
    assert [line for line in lines if line] == want


def test_aarch64_build_of_the_portable_kernels(tmp_path):
    cc = _need("aarch64-linux-gnu-gcc")
    _build(cc, tmp_path / "selftest", "-static")
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("built; qemu-aarch64 is not installed to run it")
    assert [line for line in _run([qemu, str(tmp_path / "selftest")]) if line] == ["default: ok"]


POOL_SELFTEST = Path(__file__).parent / "c" / "pool_selftest.c"


@pytest.mark.parametrize("sleep", ["futex", "portable"])
def test_the_thread_pool_with_each_way_of_sleeping(sleep, tmp_path):
    """tests/kernels/c/pool_selftest.c: 4 threads meeting at barriers and handing counts on,
    sleeping on their words, with Linux's futex and with the mutex and condition variable
    that other systems (macOS, the BSDs) use (FR_NO_FUTEX); both give the one-thread sums,
    and some waits did sleep."""
    out = tmp_path / "pool"
    extra = ["-DFR_NO_FUTEX"] if sleep == "portable" else []
    res = subprocess.run([_need("gcc"), *FLAGS, *extra, str(POOL_SELFTEST), "-o", str(out),
                          *LIBS], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [line for line in _run([str(out)]) if line]
    assert len(lines) == 1 and lines[0].startswith("pool: ok"), lines


def test_the_thread_pool_on_aarch64(tmp_path):
    cc = _need("aarch64-linux-gnu-gcc")
    out = tmp_path / "pool"
    res = subprocess.run([cc, *FLAGS, str(POOL_SELFTEST), "-o", str(out), "-static", *LIBS],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("built; qemu-aarch64 is not installed to run it")
    lines = [line for line in _run([qemu, str(out)]) if line]
    assert len(lines) == 1 and lines[0].startswith("pool: ok"), lines


@pytest.mark.parametrize("program", [SELFTEST, POOL_SELFTEST], ids=["kernels", "pool"])
def test_windows_cross_build(program, tmp_path):
    """The kernel table and the thread pool compile for Windows x86-64 (mingw-w64 with its
    POSIX threads; the pool finds OpenBLAS through the module of an address there, and
    sleeps on a mutex and condition variable). Compiled only: nothing here runs Windows
    programs."""
    cc = shutil.which("x86_64-w64-mingw32-gcc-posix") or _need("x86_64-w64-mingw32-gcc")
    flags = [f for f in FLAGS if f != "-D_GNU_SOURCE"]
    res = subprocess.run([cc, *flags, str(program), "-o", str(tmp_path / "selftest.exe"),
                          "-lpthread"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "selftest.exe").read_bytes()[:2] == b"MZ"

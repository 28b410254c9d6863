"""The kernel table compiled apart from the package build, by the compilers and for the
targets this machine has: gcc and clang natively (every level the CPU runs), the
portable kernels for aarch64 with a cross compiler, run under qemu-aarch64 when it is
installed, musl libc (musl-gcc), and Windows x86-64 with mingw-w64, run under Wine when
it is installed. Each build runs tests/kernels/c/kernel_selftest.c (the GEMM against a plain loop, the
vector cells against the scalar rows), and tests/kernels/c/pool_selftest.c the thread pool
with each way of sleeping. The headers are the installed package's."""
import os
import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("program", ["kernels", "pool"])
def test_musl_build(program, tmp_path):
    """The kernels and the pool on musl libc (the C library of musllinux wheels), linked
    statically by Debian's musl-gcc, whose include path has no Linux kernel headers: the
    futex's constants then come from _os.h."""
    cc = _need("musl-gcc")
    src = SELFTEST if program == "kernels" else POOL_SELFTEST
    out = tmp_path / program
    res = subprocess.run([cc, *FLAGS, "-static", str(src), "-o", str(out), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [line for line in _run([str(out)]) if line]
    if program == "kernels":
        from fastrnn import _kernels

        assert lines == [f"{cap}: ok" for cap in _kernels.supported_cpu_capabilities()]
    else:
        assert len(lines) == 1 and lines[0].startswith("pool: ok (futex;"), lines


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


def _wine():
    """The command that runs a Windows program here (Wine), or None."""
    wine = shutil.which("wine") or shutil.which("wine64")
    return [wine] if wine else None


WINDOWS_CASES = [(SELFTEST, []), (POOL_SELFTEST, []), (POOL_SELFTEST, ["-DFR_NO_FUTEX"])]


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
@pytest.mark.parametrize("program, extra", WINDOWS_CASES,
                         ids=["kernels", "pool-WaitOnAddress", "pool-condition-variable"])
def test_windows_cross_build(compiler, program, extra, tmp_path):
    """The kernel table and the thread pool built for Windows x86-64, on Windows' own
    threads, locks and WaitOnAddress (no POSIX layer: the program needs only system
    DLLs), and run under Wine where it is installed: the kernels on every level the CPU
    runs (long has 32 bits there), the pool with each way of sleeping. Compiled by
    mingw-w64's gcc, and by clang for the same target (the compiler of the Windows
    wheels, there as clang-cl), linked by mingw-w64."""
    gcc = _need("x86_64-w64-mingw32-gcc")
    flags = [f for f in FLAGS if f != "-D_GNU_SOURCE"] + extra
    exe, obj = tmp_path / "selftest.exe", tmp_path / "selftest.o"
    cc = [gcc] if compiler == "gcc" else [_need("clang"), "--target=x86_64-w64-mingw32"]
    res = subprocess.run([*cc, *flags, "-c", str(program), "-o", str(obj)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([gcc, str(obj), "-o", str(exe), "-lsynchronization"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert exe.read_bytes()[:2] == b"MZ"
    dlls = _windows_imports(exe)
    assert dlls <= {"kernel32.dll", "msvcrt.dll", "api-ms-win-core-synch-l1-2-0.dll"}, dlls
    wine = _wine()
    if wine is None:
        pytest.skip("built; Wine is not installed to run it")
    env = {**os.environ, "WINEDEBUG": "-all", "WINEPREFIX": str(_wine_prefix())}
    res = subprocess.run([*wine, str(exe)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line.strip() for line in res.stdout.split("\n") if line.strip()]
    if program == SELFTEST:
        from fastrnn import _kernels

        assert lines == [f"{cap}: ok" for cap in _kernels.supported_cpu_capabilities()]
    else:
        kind = "condition variable" if extra else "WaitOnAddress"
        assert len(lines) == 1 and lines[0].startswith(f"pool: ok ({kind};"), lines


def _windows_imports(exe):
    """The DLLs a Windows program or module imports, lower case."""
    objdump = shutil.which("x86_64-w64-mingw32-objdump")
    if objdump is None:
        pytest.skip("x86_64-w64-mingw32-objdump is not installed")
    res = subprocess.run([objdump, "-p", str(exe)], capture_output=True, text=True, check=True)
    return {line.split(":", 1)[1].strip().lower() for line in res.stdout.splitlines()
            if "DLL Name:" in line}


def _wine_prefix():
    """One Wine prefix for the session's runs (its first creation takes seconds)."""
    path = Path(os.environ.get("FASTRNN_WINEPREFIX", Path.home() / ".cache" / "fastrnn-wine"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# The compiler directives of setup.py's release build.
RELEASE_DIRECTIVES = ["boundscheck=False", "wraparound=False", "initializedcheck=False",
                      "cdivision=True", "embedsignature=True"]


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_windows_cross_build_of_the_module(compiler, tmp_path):
    """The extension itself for Windows x86-64: Cython's C of the installed kernels'
    sources, compiled against CPython's and NumPy's Windows headers (.ci/windows-headers
    fetches them; FASTRNN_WINDOWS_HEADERS names their folder) with warnings as errors,
    and linked by mingw-w64 into a .pyd that imports only python311.dll and system DLLs
    and exports PyInit__kernels. Nothing here loads it: there is no Windows Python."""
    headers = os.environ.get("FASTRNN_WINDOWS_HEADERS")
    if not headers:
        pytest.skip("FASTRNN_WINDOWS_HEADERS is not set (.ci/windows-headers fetches them)")
    headers = Path(headers)
    gcc = _need("x86_64-w64-mingw32-gcc")
    dlltool, nm = _need("x86_64-w64-mingw32-dlltool"), _need("x86_64-w64-mingw32-nm")
    pytest.importorskip("Cython")
    c_file = tmp_path / "_kernels.c"
    args = ["-3", "-I", str(HEADERS), str(HEADERS / "_kernels.pyx"), "-o", str(c_file)]
    for d in RELEASE_DIRECTIVES:
        args[:0] = ["-X", d]
    res = subprocess.run([sys.executable, "-m", "cython", *args], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    cc = [gcc] if compiler == "gcc" else [_need("clang"), "--target=x86_64-w64-mingw32"]
    obj = tmp_path / "_kernels.o"
    res = subprocess.run(
        [*cc, "-O2", "-Werror", "-fno-trapping-math", "-fno-math-errno", "-DMS_WIN64",
         "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION", f"-I{HEADERS}",
         f"-I{headers / 'python' / 'Include'}",
         f"-I{headers / 'numpy' / 'current' / '_core' / 'include'}", "-c", str(c_file),
         "-o", str(obj)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    # python311.dll's import library, from the Python symbols the module refers to
    undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    names = sorted({n.removeprefix("__imp_") for n in undefined
                    if n.removeprefix("__imp_").startswith(("Py", "_Py"))})
    (tmp_path / "python311.def").write_text("LIBRARY python311.dll\nEXPORTS\n"
                                           + "\n".join(names) + "\n")
    subprocess.run([dlltool, "-d", str(tmp_path / "python311.def"), "-D", "python311.dll",
                    "-l", str(tmp_path / "libpython311.a")], check=True)
    pyd = tmp_path / "_kernels.cp311-win_amd64.pyd"
    res = subprocess.run([gcc, "-shared", "-s", "-static-libgcc", str(obj), "-o", str(pyd),
                          f"-L{tmp_path}", "-lpython311", "-lsynchronization"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    assert _windows_imports(pyd) <= {"python311.dll", "kernel32.dll", "msvcrt.dll",
                                     "api-ms-win-core-synch-l1-2-0.dll"}
    objdump = _need("x86_64-w64-mingw32-objdump")
    exports = subprocess.run([objdump, "-p", str(pyd)], capture_output=True, text=True,
                             check=True).stdout
    assert "PyInit__kernels" in exports

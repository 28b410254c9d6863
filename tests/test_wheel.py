"""The wheel as a user gets it: built from this tree (isolated, as cibuildwheel builds it),
its compiled module needs no library beyond the C runtime, carries no search path of the
build machine and no debug information; ``auditwheel show`` (Linux) names its platform."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

build = pytest.importorskip("build", reason="building the wheel needs the 'build' package")
if getattr(build, "__file__", None) is None:
    # a namespace package: setuptools' build/ folder in the working directory, not pypa's build
    pytest.skip("building the wheel needs the 'build' package", allow_module_level=True)
if not sys.platform.startswith("linux") or shutil.which("readelf") is None:
    pytest.skip("the ELF checks need Linux and readelf", allow_module_level=True)

# what any Linux has: the C library, its maths, threads and loader
SYSTEM_LIBRARIES = {"libc.so.6", "libm.so.6", "libpthread.so.0", "ld-linux-x86-64.so.2",
                    "ld-linux-aarch64.so.1"}


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "-o", str(out), str(ROOT)],
                   check=True, capture_output=True)
    wheel, = out.glob("fastrnn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith("fastrnn/_kernels") and
                 n.endswith(".so")]
        assert len(names) == 1, zf.namelist()
        assert "fastrnn-0.1.0.dist-info/licenses/LICENSE" in zf.namelist() or any(
            n.endswith("/LICENSE") for n in zf.namelist()), "the wheel carries no LICENSE"
        zf.extract(names[0], out)
    return wheel, out / names[0]


def _readelf(flag, path):
    return subprocess.run(["readelf", flag, str(path)], check=True, capture_output=True,
                          text=True).stdout


def test_the_extension_needs_only_the_c_runtime(extension):
    _, so = extension
    needed = {line.split("[")[1].rstrip("]") for line in _readelf("-d", so).splitlines()
              if "(NEEDED)" in line}
    assert needed <= SYSTEM_LIBRARIES, f"needs {sorted(needed - SYSTEM_LIBRARIES)}"


def test_the_extension_has_no_build_machine_path_nor_debug_info(extension):
    _, so = extension
    dynamic = _readelf("-d", so)
    assert "(RPATH)" not in dynamic and "(RUNPATH)" not in dynamic, dynamic
    sections = _readelf("-S", so)
    assert ".debug_info" not in sections, "the release build keeps debug information"


def test_auditwheel_names_a_manylinux_platform(extension):
    pytest.importorskip("auditwheel", reason="auditwheel is not installed")
    wheel, _ = extension
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                          capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    text = " ".join(show.stdout.split())
    assert "manylinux_" in text, text
    assert "external shared libraries" not in text or "no external" in text.lower(), text

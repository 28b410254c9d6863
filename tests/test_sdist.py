"""The sdist is complete: built from this tree, it holds the licence and every test, and
pytest collects the tests in the unpacked archive without errors."""
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

build = pytest.importorskip("build", reason="building the sdist needs the 'build' package")
if getattr(build, "__file__", None) is None:
    # a namespace package: setuptools' build/ folder in the working directory, not pypa's build
    pytest.skip("building the sdist needs the 'build' package", allow_module_level=True)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    out = tmp_path_factory.mktemp("sdist")
    # isolated, as a distributor builds it (its own setuptools, Cython, NumPy)
    subprocess.run([sys.executable, "-m", "build", "--sdist", "-o",
                    str(out), str(ROOT)], check=True, capture_output=True)
    archive, = out.glob("fastrnn-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    top, = (p for p in out.iterdir() if p.is_dir())
    return top


def test_the_sdist_holds_the_licence_and_every_test(sdist):
    assert (sdist / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    here = {p.relative_to(ROOT) for p in (ROOT / "tests").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    there = {p.relative_to(sdist) for p in (sdist / "tests").rglob("*") if p.is_file()}
    assert here <= there, f"missing from the sdist: {sorted(map(str, here - there))}"
    info = (sdist / "PKG-INFO").read_text()
    assert "License-Expression: BSD-3-Clause" in info and "License-File: LICENSE" in info


def test_pytest_collects_the_sdists_tests(sdist):
    """Collection only (the installed fastrnn is the one under test): no import errors."""
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", str(sdist / "tests")],
                         capture_output=True, text=True, cwd=sdist)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " error" not in run.stdout.splitlines()[-1], run.stdout[-3000:]

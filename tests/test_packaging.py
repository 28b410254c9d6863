"""What a user's tools see of the installed package: its version on the command line, its
type hints (py.typed) checked by mypy --strict on a user's script."""
import subprocess
import sys
from pathlib import Path

import pytest

import fastrnn
from fastrnn.__main__ import main

USER_SCRIPT = '''
import numpy as np
import fastrnn
from fastrnn.optim import Adam, clip_grad_norm

lstm = fastrnn.LSTM(8, 32, num_layers=2, seed=0)
x = np.zeros((10, 4, 8), dtype=np.float32)
out, state = lstm(x)
out2, state2, cache = lstm.forward(x)
dx, dh, grads = lstm.backward(cache, np.ones_like(out2))
opt = Adam(lstm.params, lr=1e-3)
norm: float = clip_grad_norm(grads, 1.0)
opt.step(grads)
cell = fastrnn.GRUCell(8, 16)
h1 = cell(x[0])
fastrnn.set_num_threads(2)
n: int = fastrnn.get_num_threads()
'''


def test_version_on_the_command_line(capsys):
    assert main(["--version"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"fastrnn {fastrnn.__version__} (kernels: "
                           f"{fastrnn.get_cpu_capability()}")


def test_the_package_is_typed():
    assert (Path(fastrnn.__file__).parent / "py.typed").exists()


def test_mypy_strict_accepts_a_users_script(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--cache-dir", str(tmp_path / "cache"), str(script)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "missing library stubs or py.typed marker" not in run.stdout

"""The benchmark command (``python -m fastrnn bench``) and its pieces: flop counting, shape
parsing, result checking, interleaved timing, the table, JSON output, ``--check``, the
``--cpu-capability`` child process and its header, the FMA peak column, and the peers'
agreement with fastrnn at tiny sizes (onnxruntime's ONNX nodes included). Fast: tiny shapes,
one round each; no test depends on how fast anything runs."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import platform

import numpy as np
import pytest

from fastrnn.tools import bench, caps, peers
from fastrnn.tools.peers import Point, compare, flops, make_problem, make_runner

TINY = ["--shapes", "5x2x3,4x3x2x5", "--min-time", "0", "--repeats", "1"]
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(autouse=True)
def no_forced_kernels(monkeypatch):
    """The bench re-runs itself in a child when the environment forces OpenBLAS's kernels
    (some machines set OPENBLAS_CORETYPE); these tests run it in-process unless they ask."""
    for var in (*caps.OPENBLAS_VARS, caps.PARENT_VAR):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def restore_threads(monkeypatch):
    """Undo what ``set_threads`` does to this process (limits, torch threads, affinity)."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    affinity = peers.available_cpus()
    torch = None
    if peers.peer_available("torch"):
        import torch
        torch_threads = torch.get_num_threads()
    ort_threads = peers._ONNXRUNTIME_THREADS
    yield
    peers._ONNXRUNTIME_THREADS = ort_threads
    if peers._THREADPOOL_LIMITS is not None:
        peers._THREADPOOL_LIMITS.restore_original_limits()
        peers._THREADPOOL_LIMITS = None
    if torch is not None:
        torch.set_num_threads(torch_threads)
    peers._pin_process(affinity)


def run_main(args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = bench.main(args, out=out, progress_file=err, **kwargs)
    return code, out.getvalue()


# ----------------------------------------------------------------------------- flops


def test_flops_single_layer():
    p = Point("rnn", T=10, B=2, I=3, H=4)
    assert flops(p, "inference") == 2 * 10 * 2 * 1 * 4 * (3 + 4)
    assert flops(p, "training") == 3 * flops(p, "inference")
    lstm = Point("lstm", 10, 2, 3, 4)
    gru = Point("gru", 10, 2, 3, 4)
    assert flops(lstm, "inference") == 4 * flops(p, "inference")
    assert flops(gru, "inference") == 3 * flops(p, "inference")


def test_flops_stacked_bidirectional():
    p = Point("lstm", T=7, B=3, I=5, H=4, layers=3, bidirectional=True)
    per_dir = lambda i: 2 * 7 * 3 * 4 * 4 * (i + 4)
    assert p.layer_inputs() == [5, 8, 8]
    assert flops(p, "inference") == 2 * (per_dir(5) + 2 * per_dir(8))
    assert flops(p, "training") == 3 * flops(p, "inference")


def test_flops_ragged_counts_the_rows_computed():
    p = Point("gru", T=20, B=6, I=3, H=4, ragged=True)
    lens = p.lengths()
    assert lens.max() == 20 and lens.min() >= 5 and len(set(lens)) > 1
    assert list(lens) != sorted(lens, reverse=True)  # not sorted: enforce_sorted=False path
    assert flops(p, "inference") == 2 * int(lens.sum()) * 3 * 4 * (3 + 4)
    assert Point("gru", 20, 6, 3, 4).lengths() is None


def test_point_validation_and_labels():
    with pytest.raises(ValueError, match="cell"):
        Point("transformer", 1, 1, 1, 1)
    with pytest.raises(ValueError, match="H"):
        Point("rnn", 1, 1, 1, 0)
    with pytest.raises(ValueError, match="pass"):
        flops(Point("rnn", 1, 1, 1, 1), "backward")
    p = Point("lstm", 100, 16, 256, 256, layers=2, bidirectional=True, ragged=True)
    assert p.label == "lstm 100x16x256 bi,L2,ragged"
    assert Point("rnn", 5, 2, 3, 4).shape == "5x2x3x4"


def test_parse_shapes():
    assert bench.parse_shapes("100x1x32, 5x2x3x4") == [(100, 1, 32, 32), (5, 2, 3, 4)]
    for bad in ("100x1", "1x2x3x4x5", "ax1x2", "0x1x2", ""):
        with pytest.raises(ValueError):
            bench.parse_shapes(bad)


# ----------------------------------------------------------------------------- checking


def _result(seed=0):
    rng = np.random.default_rng(seed)
    return {"out": rng.standard_normal((4, 2, 3)).astype(np.float32),
            "grad:weight_hh_l0": 100 * rng.standard_normal((3, 3)).astype(np.float32)}


def test_compare_accepts_rounding_and_rejects_a_wrong_result():
    want = _result()
    assert compare(want, {k: v.copy() for k, v in want.items()}, "float32").ok
    noisy = {k: v * (1 + 1e-5) for k, v in want.items()}
    assert compare(want, noisy, "float32").ok

    wrong = {k: v.copy() for k, v in want.items()}
    wrong["grad:weight_hh_l0"][1, 2] += 1.0  # 1 in a gradient of scale ~100: 1e-2 > 1e-3
    c = compare(want, wrong, "float32")
    assert not c.ok and c.worst == "grad:weight_hh_l0" and "tolerance" in c.message

    assert not compare(want, {**want, "out": want["out"][:, :1]}, "float32").ok  # shape
    assert not compare(want, {"out": want["out"]}, "float32").ok  # missing key
    nan = {**want, "out": np.full_like(want["out"], np.nan)}
    assert not compare(want, nan, "float32").ok
    # float64 is held to a much tighter bound
    assert not compare(want, noisy, "float64").ok


# ----------------------------------------------------------------------------- timing


def test_measure_interleaves_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abc"}
    settings = bench.TimingSettings(min_rounds=3, min_time=0.0, block_time=0.0)
    timings = bench.measure(calls, settings)
    # each block is one untimed call and one timed: calibration, then 3 rotating rounds
    assert order == [n for n in "abcabcbcacab" for _ in range(2)]
    assert all(t.k == 3 and t.inner == 1 and t.best <= t.median for t in timings.values())


def test_other_load_is_a_cpu_count():
    load = bench.OtherLoad().start()
    sum(i * i for i in range(200_000))  # our own work is not counted as others'
    others = load.stop()
    if others is None:
        pytest.skip("/proc/stat is not readable here")
    assert 0.0 <= others <= (os.cpu_count() or 1) + 0.5


def test_measure_blocks_fast_calls_and_keeps_going_for_min_time():
    count = {"n": 0}

    def fast():
        count["n"] += 1

    timings = bench.measure({"fast": fast}, bench.TimingSettings(
        min_rounds=2, min_time=0.02, block_time=0.001))
    t = timings["fast"]
    assert t.inner > 1 and t.k >= 2 and count["n"] >= t.inner * t.k


# ----------------------------------------------------------------------------- the table


def _record(**peer_statuses):
    return {"cell": "lstm", "T": 100, "B": 16, "I": 256, "H": 256, "layers": 1,
            "bidirectional": False, "ragged": False, "dtype": "float32", "pass": "training",
            "flops": 1e9,
            "fastrnn": {"status": "ok", "best_s": 0.004, "median_s": 0.005, "k": 7,
                        "inner": 1, "gflops": 250.0},
            "gemm": {"gflops": 312.5, "share": 0.8}, "fma": {"gflops": 500.0, "share": 0.5},
            "other_cpus": 0.04, "peers": peer_statuses}


def test_format_table():
    records = [
        _record(torch={"status": "ok", "ratio": 2.5}, jax={"status": "ok", "ratio": 10.0}),
        _record(torch={"status": "ok", "ratio": 0.9},
                jax={"status": "mismatch", "message": "dx: too far"}),
    ]
    text = bench.format_table(records, ["torch", "jax", "reference"])
    lines = text.splitlines()
    assert lines[0].split() == ["cell", "shape", "options", "pass", "fastrnn", "ms", "k",
                                "GF/s", "gemm", "GF/s", "gemm%", "fma%", "torch", "jax",
                                "reference", "vs", "best", "others"]
    row = lines[2].split()
    assert row == ["lstm", "100x16x256", "-", "training", "4.000", "7", "250.0", "312.5",
                   "80%", "50%", "2.50x", "10.00x", "-", "2.50x", "0.0"]
    assert lines[3].split()[-5:] == ["0.90x", "MISMATCH[1]", "-", "0.90x", "0.0"]
    gmean = math.sqrt(2.5 * 0.9)
    assert f"torch: geometric mean ratio {gmean:.2f}x, min 0.90x over 2 points; " \
           f"below 1.0x: 1" in text
    assert "vs best: geometric mean ratio" in text
    assert "[1] jax at lstm 100x16x256 training: mismatch: dx: too far" in text
    assert bench.failures(records) == ["jax at lstm 100x16x256 training"]
    # one peer: no "vs best" column
    assert "vs best" not in bench.format_table(records[:1], ["torch"])


def test_format_table_unsupported_pass_and_no_fma_peak():
    record = _record(torch={"status": "ok", "ratio": 2.0},
                     onnxruntime={"status": "unsupported", "message": "inference only"})
    record["fma"] = None
    text = bench.format_table([record], ["torch", "onnxruntime"])
    row = text.splitlines()[2].split()
    assert row[9] == "-"  # fma%: no peak measured
    assert row[10:13] == ["2.00x", "—", "2.00x"]  # vs best: among the timed peers
    assert "[1]" not in text and bench.failures([record]) == []


# ----------------------------------------------------------------------------- the command


def test_bench_command_quick_json_and_plot(tmp_path, restore_threads):
    path = tmp_path / "bench.json"
    args = ["--quick", *TINY, "--cells", "rnn,gru", "--peers", "reference",
            "--json", str(path)]
    plot = importlib.util.find_spec("matplotlib") is not None
    if plot:
        args += ["--plot", str(tmp_path / "ratios.png")]
    code, out = run_main(args)
    assert code == 0, out
    for needle in ("CPU:", "OPENBLAS_CORETYPE:", "threads:", "fastrnn 0.", "numpy ", "timing:",
                   "gemm:", "reference"):
        assert needle in out
    data = json.loads(path.read_text())
    recs = data["records"]
    assert [(r["cell"], r["T"], r["I"], r["H"], r["pass"]) for r in recs] == [
        (c, T, I, H, p) for c in ("rnn", "gru") for (T, I, H) in ((5, 3, 3), (4, 2, 5))
        for p in ("inference", "training")]
    for r in recs:
        assert r["fastrnn"]["status"] == "ok" and r["fastrnn"]["best_s"] > 0
        assert r["fastrnn"]["gflops"] == pytest.approx(r["flops"] / r["fastrnn"]["best_s"] / 1e9)
        ref = r["peers"]["reference"]
        assert ref["status"] == "ok" and ref["max_error"] <= ref["tolerance"]
        assert ref["ratio"] == pytest.approx(ref["best_s"] / r["fastrnn"]["best_s"])
        assert r["gemm"]["gflops"] > 0
    assert data["environment"]["threads"] >= 1 and data["table"] in out
    if plot:
        assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_mode_fails_on_a_peer_that_disagrees(monkeypatch, restore_threads):
    real = bench.make_runner

    def corrupted(name, problem, pass_):
        runner = real(name, problem, pass_)
        if name != "reference":
            return runner

        def collect(res):
            result = dict(runner.collect(res))
            result["out"] = result["out"] + 0.5
            return result
        return peers.Runner(name, runner.run, collect)

    monkeypatch.setattr(bench, "make_runner", corrupted)
    args = ["--quick", *TINY, "--cells", "lstm", "--pass", "inference", "--peers", "reference"]
    code, out = run_main(args)
    assert code == 0 and "MISMATCH[1]" in out and "out: max |difference|" in out
    code, out = run_main(args + ["--check"])
    assert code == 1


def test_bad_options_exit_2(monkeypatch, capsys):
    assert bench.main(["--cells", "rnn,transformer"]) == 2
    assert "unknown cells ['transformer']" in capsys.readouterr().err
    assert bench.main(["--shapes", "100x1"]) == 2
    assert bench.main(["--pass", "backward"]) == 2
    assert bench.main(["--dtype", "float16"]) == 2
    assert bench.main(["--layers", "0"]) == 2
    assert bench.main(["--threads", "0"]) == 2
    monkeypatch.setattr(bench, "peer_available", lambda name: False)
    assert bench.main(["--peers", "torch"]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err
    assert bench.main(["--help"]) == 0


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert bench.main(["--quick", "--peers", "none", "--plot", "x.png"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cpu caps


def test_child_environment_per_capability():
    base = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576",
            "XLA_FLAGS": "--xla_foo=1"}
    before = dict(base)
    avx512 = {"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    env = caps.child_environment("avx2", base, ["--cpu-capability", "avx2"], avx512)
    assert base == before  # the parent's environment is not changed
    assert env["PATH"] == "/bin" and "OPENBLAS_L2_SIZE" not in env
    assert {k: env[k] for k in ("FASTRNN_CPU_CAPABILITY", "OPENBLAS_CORETYPE",
                                "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                "ATEN_CPU_CAPABILITY")} == {
        "FASTRNN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2"}
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_cpu_max_isa=AVX2"
    parent = caps.parent_info(env)
    assert parent == {"cap": "avx2", "argv": ["--cpu-capability", "avx2"],
                      "removed": {"OPENBLAS_CORETYPE": "Haswell",
                                  "OPENBLAS_L2_SIZE": "1048576"}}

    env = caps.child_environment("default", {}, flags=avx512)
    assert (env["FASTRNN_CPU_CAPABILITY"], env["OPENBLAS_CORETYPE"], env["ONEDNN_MAX_CPU_ISA"],
            env["MKL_ENABLE_INSTRUCTIONS"], env["ATEN_CPU_CAPABILITY"], env["XLA_FLAGS"]) == (
        "default", "Prescott", "SSE41", "SSE4_2", "default", "--xla_cpu_max_isa=SSE4_2")
    env = caps.child_environment("avx512", {}, flags=avx512)
    assert (env["OPENBLAS_CORETYPE"], env["ONEDNN_MAX_CPU_ISA"],
            env["XLA_FLAGS"]) == ("SkylakeX", "AVX512_CORE", "--xla_cpu_max_isa=AVX512")
    # on a CPU without AVX-512, OpenBLAS and ATen are not forced onto kernels it lacks (the
    # maxima of the others are harmless); they run below the cap already
    env = caps.child_environment("avx512", {}, flags={"sse2", "avx", "avx2", "fma"})
    assert "OPENBLAS_CORETYPE" not in env and "ATEN_CPU_CAPABILITY" not in env
    assert (env["FASTRNN_CPU_CAPABILITY"], env["MKL_ENABLE_INSTRUCTIONS"]) == ("avx512",
                                                                              "AVX512")
    env = caps.child_environment("avx2", {}, flags={"sse2", "avx"})
    assert "OPENBLAS_CORETYPE" not in env and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"

    # no cap: only the variables that force OpenBLAS's kernels go
    env = caps.child_environment(None, base)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert env["XLA_FLAGS"] == "--xla_foo=1"
    assert not any(v in env for v in ("FASTRNN_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY",
                                      "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"))
    assert caps.parent_info(env)["cap"] is None
    with pytest.raises(ValueError, match="avx2"):
        caps.child_environment("sse2", {})


def test_when_a_child_runs_and_its_arguments():
    assert caps.needs_child("avx2", {})
    assert not caps.needs_child(None, {"PATH": "/bin"})
    assert caps.needs_child(None, {"OPENBLAS_CORETYPE": "Haswell"})
    assert caps.needs_child(None, {"OPENBLAS_L2_SIZE": "1"})
    child = caps.child_environment("avx2", {"OPENBLAS_CORETYPE": "Haswell"})
    assert not caps.needs_child("avx2", child)  # never a child of a child
    argv = ["--quick", "--cpu-capability", "avx2", "--cells", "lstm", "--cpu-capability=default",
            "--cpu-cap", "avx512", "--check", "--cells=gru"]
    assert caps.child_argv(argv) == ["--quick", "--cells", "lstm", "--check", "--cells=gru"]


def test_isa_levels_of_what_the_libraries_print():
    level = caps._level_of_isa_name
    assert level("Intel AVX2") == caps.LEVELS["avx2"]
    assert level("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions") == 3
    assert level("Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support") == 4
    assert level("Intel SSE4.1") == level("SSE4.2") == level("DEFAULT") == 0
    assert level("AVX512") == 3 and level("avx2") == 2 and level("ZVECTOR") is None
    assert caps._level_of_openblas("Haswell") == 2
    assert caps._level_of_openblas("SkylakeX") == 3
    assert caps._level_of_openblas("Katmai") == caps._level_of_openblas("Prescott") == 0
    assert caps._level_of_openblas("SapphireRapids") == 4


def test_probe_logs_are_parsed(monkeypatch):
    torch_log = ("MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 "
                 "architecture Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled "
                 "processors, Lnx 2.60GHz lp64 gnu_thread\n"
                 "onednn_verbose,v1,info,cpu,isa:Intel AVX2\n")
    monkeypatch.setattr(caps, "_run_probe", lambda code, env, timeout=120.0: torch_log)
    assert caps._torch_probe() == {"onednn": "Intel AVX2", "mkl": "AVX2"}
    jax_log = ("I1201 cpu_compiler.cc:1495] `xla_cpu_max_isa` is set. Will not use features "
               "newer than: SSE4_2\nmatmul library: YNNPACK\n")
    monkeypatch.setattr(caps, "_run_probe", lambda code, env, timeout=120.0: jax_log)
    assert caps._jax_probe() == {"max_isa": "SSE4_2", "unknown": None, "matmul": "YNNPACK"}
    monkeypatch.setattr(caps, "_run_probe", lambda code, env, timeout=120.0:
                        "W1201 cpu_features.cc:106] Unknown CPU ISA: BOGUS\n")
    assert caps._jax_probe()["unknown"] == "BOGUS"


@pytest.mark.skipif(not X86_64, reason="x86-64 instruction-set caps")
def test_torch_honours_its_caps(monkeypatch):
    if not peers.peer_available("torch"):
        pytest.skip("torch is not installed")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    found = caps._torch_probe()
    assert found["onednn"] is not None and "SSE4.1" in found["onednn"]
    assert found["mkl"] is not None and "SSE4.2" in found["mkl"]


@pytest.mark.skipif(not X86_64, reason="x86-64 instruction-set caps")
def test_xla_honours_its_cap(monkeypatch):
    if not peers.peer_available("jax"):
        pytest.skip("jax is not installed")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=SSE4_2")
    found = caps._jax_probe()
    assert found["max_isa"] == "SSE4_2" and found["unknown"] is None


def _env(**extra):
    env = {"cpu": "Test CPU", "cpus": 2, "simd": ["avx2", "fma"], "blas": [],
           "openblas_coretype": None, "threads": 2, "thread_control": {"affinity": "-"},
           "versions": {"fastrnn": "0"}, "peer_info": {}, "python": "3",
           "cpu_capability": {"asked": None, "removed": {}, "libraries": []},
           "fma_peak": None}
    env.update(extra)
    return env


def test_header_names_the_caps_and_the_fma_peak():
    entry = caps._report_entry
    libraries = [
        entry("fastrnn", "avx2", 2, "avx2", "FASTRNN_CPU_CAPABILITY=avx2",
              "fastrnn.get_cpu_capability()"),
        entry("torch oneDNN", "Intel AVX-512", 3, "avx2", "ONEDNN_MAX_CPU_ISA=AVX2",
              "ONEDNN_VERBOSE=1 in a probe process"),
        entry("onnxruntime MLAS", "kernels for this CPU: no setting caps them", None,
              "avx2", None, "-", cappable=False),
    ]
    env = _env(openblas_coretype="Haswell",
               cpu_capability={"asked": "avx2", "removed": {}, "libraries": libraries},
               fma_peak={"threads": 2, "gflops": 80.0, "gflops_1": 40.0, "seconds": 0.1})
    text = bench.format_header(env, bench.TimingSettings(), 1e-6)
    assert "OPENBLAS_CORETYPE: Haswell (set by --cpu-capability avx2)" in text
    assert "cpu capability: capped to avx2 (--cpu-capability avx2: the bench re-ran" in text
    assert ("  fastrnn: avx2 [honoured] (FASTRNN_CPU_CAPABILITY=avx2; "
            "fastrnn.get_cpu_capability())") in text
    assert "  torch oneDNN: Intel AVX-512 [NOT honoured] (ONEDNN_MAX_CPU_ISA=AVX2;" in text
    assert "  onnxruntime MLAS: kernels for this CPU: no setting caps them [not capped]" in text
    assert ("FMA peak: 40.0 GF/s on 1 thread, 80.0 GF/s on 2 (fastrnn._kernels.fma_peak: "
            "independent float32 FMA chains, capability avx2); fma% = fastrnn GF/s / the "
            "2-thread peak\n") in text
    text = bench.format_header(env, bench.TimingSettings(), 1e-6, "float64")
    assert "2-thread peak; float64: against half of it (half the lanes)" in text

    env = _env(cpu_capability={"asked": None, "removed": {"OPENBLAS_CORETYPE": "Haswell",
                                                          "OPENBLAS_L2_SIZE": "1"},
                               "libraries": [entry("fastrnn", "avx512", 3, None, None,
                                                   "fastrnn.get_cpu_capability()")]})
    text = bench.format_header(env, bench.TimingSettings(), 1e-6)
    assert ("OPENBLAS_CORETYPE: unset (the environment's Haswell was removed for this run: "
            "OpenBLAS picks its kernels for this CPU)") in text
    assert "  OPENBLAS_L2_SIZE=1 was set in the environment: removed for this run" in text
    assert "cpu capability: no cap asked" in text
    assert "  fastrnn: avx512 (fastrnn.get_cpu_capability())" in text
    assert "FMA peak: not measured" in text


def test_fma_peak_and_its_share(monkeypatch, restore_threads):
    from fastrnn import _kernels

    calls = []

    def fake_peak(seconds, threads):
        calls.append((seconds, threads))
        return 50.0 * threads

    monkeypatch.setattr(_kernels, "fma_peak", fake_peak, raising=False)
    assert bench.fma_peak(2, 0.01) == {"threads": 2, "gflops": 100.0, "gflops_1": 50.0,
                                       "seconds": 0.01}
    assert calls == [(0.01, 1), (0.01, 2)]
    assert bench.fma_peak(1, 0.01)["gflops"] == 50.0 and calls[-1] == (0.01, 1)
    code, out = run_main(["--quick", *TINY, "--cells", "rnn", "--pass", "inference",
                          "--peers", "none", "--threads", "1"])
    assert code == 0 and "FMA peak: 50.0 GF/s on 1 thread, 50.0 GF/s on 1" in out
    row = out.split("\n\n")[-1].splitlines()[2].split()
    gflops, share = float(row[6]), row[9]
    assert share == f"{gflops / 50.0:.0%}"
    code, out = run_main(["--quick", *TINY, "--cells", "rnn", "--pass", "inference",
                          "--peers", "none", "--threads", "1", "--dtype", "float64"])
    row = out.split("\n\n")[-1].splitlines()[2].split()
    assert code == 0 and row[9] == f"{float(row[6]) / 25.0:.0%}"


@pytest.mark.skipif(not X86_64, reason="x86-64 instruction-set caps (OpenBLAS's x86 kernels)")
def test_cpu_capability_runs_the_bench_in_a_child(tmp_path):
    path = tmp_path / "bench.json"
    args = ["--quick", *TINY[2:], "--shapes", "3x2x2", "--cells", "rnn", "--pass",
            "inference", "--peers", "reference", "--cpu-capability", "default",
            "--json", str(path)]
    code, out = run_main(args)
    assert code == 0, out
    assert "cpu capability: capped to default (--cpu-capability default" in out
    assert "OPENBLAS_CORETYPE: Prescott (set by --cpu-capability default)" in out
    assert "\n  fastrnn: " in out and "reference: geometric mean ratio" in out
    data = json.loads(path.read_text())
    capability = data["environment"]["cpu_capability"]
    assert capability["asked"] == "default"
    assert data["command"] == ["python", "-m", "fastrnn", "bench", *args]
    libs = {e["library"]: e for e in capability["libraries"]}
    if "OpenBLAS" in libs:  # threadpoolctl installed: OpenBLAS took its SSE3 kernels
        assert libs["OpenBLAS"]["honoured"] is True and "Katmai" in libs["OpenBLAS"]["runs"]
    # fastrnn took its portable kernels
    assert libs["fastrnn"]["runs"] == "default" and libs["fastrnn"]["honoured"] is True


def test_forced_openblas_kernels_are_removed_in_a_child(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    code, out = run_main(["--quick", *TINY[2:], "--shapes", "3x2x2", "--cells", "gru",
                          "--pass", "inference", "--peers", "none"])
    assert code == 0, out
    assert "OPENBLAS_CORETYPE: unset (the environment's Haswell was removed for this run" in out
    assert "cpu capability: no cap asked" in out


# ----------------------------------------------------------------------------- onnxruntime


def _onnxruntime():
    if not peers.peer_available("onnxruntime"):
        pytest.skip("onnx and onnxruntime are not installed")
    import onnxruntime

    return onnxruntime


ONNX_POINTS = {
    "rnn": [Point("rnn", 6, 3, 4, 5), Point("rnn", 6, 3, 4, 5, layers=2, bidirectional=True,
                                            ragged=True)],
    "lstm": [Point("lstm", 6, 3, 4, 5), Point("lstm", 5, 4, 3, 2, layers=2,
                                              bidirectional=True, ragged=True)],
    "gru": [Point("gru", 6, 3, 4, 5), Point("gru", 7, 2, 3, 4, layers=2, bidirectional=True,
                                            ragged=True)],
}


@pytest.mark.parametrize("cell", sorted(ONNX_POINTS))
def test_onnx_nodes_agree_with_fastrnn(cell, restore_threads):
    _onnxruntime()
    for point in ONNX_POINTS[cell]:
        problem = make_problem(point, seed=5)
        ours = make_runner("fastrnn", problem, "inference")
        want = ours.collect(ours.run())
        theirs = make_runner("onnxruntime", problem, "inference")
        got = theirs.collect(theirs.run())
        assert set(got) == set(want) == ({"out", "h_n", "c_n"} if cell == "lstm"
                                         else {"out", "h_n"})
        result = compare(want, got, point.dtype)
        assert result.ok, f"onnxruntime {point.label}: {result.message}"
        assert result.max_error < result.tolerance / 10


def test_onnx_gru_is_reset_after_the_matmul():
    """PyTorch's GRU is ONNX's linear_before_reset=1: with 0 (the reset before the matmul)
    the same weights give another result, so the agreement above is not by chance."""
    ort = _onnxruntime()
    from onnx import helper

    point = Point("gru", 6, 3, 4, 5)
    problem = make_problem(point, seed=5)
    ours = make_runner("fastrnn", problem, "inference")
    want = ours.collect(ours.run())
    model = peers.onnx_model(point, problem.params)
    node = next(n for n in model.graph.node if n.op_type == "GRU")
    kept = [a for a in node.attribute if a.name != "linear_before_reset"]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("linear_before_reset", 0)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"x": problem.x})))
    assert not compare(want, got, point.dtype).ok


def test_onnxruntime_is_inference_only_and_float32():
    _onnxruntime()
    problem = make_problem(Point("lstm", 3, 2, 2, 3))
    with pytest.raises(peers.Unsupported, match="inference only"):
        make_runner("onnxruntime", problem, "training")
    problem = make_problem(Point("lstm", 3, 2, 2, 3, dtype="float64"))
    with pytest.raises(peers.Unsupported, match="float32"):
        make_runner("onnxruntime", problem, "inference")


def test_onnxruntime_in_the_bench(restore_threads):
    _onnxruntime()
    code, out = run_main(["--quick", *TINY, "--cells", "lstm", "--peers", "onnxruntime",
                          "--threads", "1", "--check"])
    assert code == 0, out
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split()[-2:] == ["onnxruntime", "others"]
    rows = [line.split() for line in table[2:6]]
    assert [r[3] for r in rows] == ["inference", "training"] * 2
    assert all(r[-2].endswith("x") for r in rows[::2]) and all(r[-2] == "—" for r in rows[1::2])
    assert "onnxruntime: intra_op_num_threads=1, inter_op_num_threads=1" in out
    assert "onnxruntime MLAS: kernels for this CPU: no setting caps them" in out


# ----------------------------------------------------------------------------- the peers

PEER_POINTS = [Point("rnn", 6, 3, 4, 5, layers=2, bidirectional=True, ragged=True),
               Point("lstm", 6, 3, 4, 5, bidirectional=True),
               Point("gru", 6, 3, 4, 5, layers=2, ragged=True),
               Point("lstm", 5, 4, 3, 2, layers=2, bidirectional=True, ragged=True,
                     dtype="float64")]


@pytest.mark.parametrize("peer", ["reference", "torch", "jax"])
def test_peers_agree_with_fastrnn(peer):
    if not peers.peer_available(peer):
        pytest.skip(f"{peer} is not installed")
    for point in PEER_POINTS:
        problem = make_problem(point, seed=3)
        for pass_ in ("inference", "training"):
            ours = make_runner("fastrnn", problem, pass_)
            want = ours.collect(ours.run())
            theirs = make_runner(peer, problem, pass_)
            got = theirs.collect(theirs.run())
            assert set(got) == set(want)
            if pass_ == "training":
                assert "dx" in got and f"grad:weight_hh_l{point.layers - 1}" in got
            result = compare(want, got, point.dtype)
            assert result.ok, f"{peer} {point.label} {pass_}: {result.message}"
            assert result.max_error < result.tolerance / 10


@pytest.mark.parametrize("pass_", ["inference", "training"])
def test_the_torch_module_peer_gives_fastrnns_results(pass_):
    """fastrnn.torch's module under torch's autograd ("torch-module"): the same outputs,
    states and gradients as fastrnn's own call, stacked and bidirectional."""
    pytest.importorskip("torch")
    for point in (Point("lstm", 7, 3, 4, 5, layers=2, bidirectional=True),
                  Point("gru", 6, 2, 3, 4, ragged=True)):
        problem = make_problem(point, seed=3)
        ours, theirs = (make_runner(n, problem, pass_) for n in ("fastrnn", "torch-module"))
        result = compare(ours.collect(ours.run()), theirs.collect(theirs.run()), point.dtype)
        assert result.ok, f"{point.label} {pass_}: {result.message}"

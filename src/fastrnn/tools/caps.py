"""The instruction-set caps of ``python -m fastrnn bench --cpu-capability``, and what each
library reports it runs.

Every library picks its kernels once, when it loads, from the CPU and from its own
environment variable; so a cap cannot be set in a running process. The bench re-runs itself
in a child process (:func:`run_child`) whose environment (:func:`child_environment`) caps
each library it can:

============  ==========================  ===========  ==========  =============
library       variable                    avx512       avx2        default
============  ==========================  ===========  ==========  =============
fastrnn       ``FASTRNN_CPU_CAPABILITY``  avx512       avx2        default
OpenBLAS      ``OPENBLAS_CORETYPE``       SkylakeX     Haswell     Prescott
oneDNN        ``ONEDNN_MAX_CPU_ISA``      AVX512_CORE  AVX2        SSE41
MKL           ``MKL_ENABLE_INSTRUCTIONS`` AVX512       AVX2        SSE4_2
torch (ATen)  ``ATEN_CPU_CAPABILITY``     avx512       avx2        default
XLA (JAX)     ``XLA_FLAGS``               AVX512       AVX2        SSE4_2
============  ==========================  ===========  ==========  =============

(XLA: ``--xla_cpu_max_isa``, which caps the code XLA generates; its matrix products run in
YNNPACK, which picks its kernels from the CPU and has no cap. onnxruntime's MLAS has none
either.) OpenBLAS names its x86-64 Prescott (SSE3) kernels "Katmai".

``OPENBLAS_CORETYPE`` forces a kernel set rather than capping it (a set the CPU lacks dies of
an illegal instruction), and PyTorch's dispatcher takes ``ATEN_CPU_CAPABILITY`` as given;
so these two are set only when the CPU has the cap's instructions (without them the library
already runs below the cap). The other variables are maxima.

Without a cap the child is needed all the same when the environment sets
``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` (some machines do): the bench removes them, so
that OpenBLAS runs the kernels it picks for this CPU, as on a user's machine.

:func:`report` tells, per library, what it runs and whether that is within the cap: fastrnn,
OpenBLAS (threadpoolctl) and ATen from this process; oneDNN, MKL and XLA from their verbose
logs in a short probe process with the same environment.
"""
from __future__ import annotations

import codecs
import json
import locale
import os
import re
import subprocess
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TextIO

import fastrnn

__all__ = [
    "CAPABILITIES",
    "CAP_ENV",
    "PARENT_VAR",
    "child_argv",
    "child_environment",
    "cpu_flags",
    "format_report",
    "needs_child",
    "parent_info",
    "report",
    "run_child",
]

CAPABILITIES = ("avx512", "avx2", "default")
#: The environment of each cap (XLA's flag goes into ``XLA_FLAGS``, see :data:`XLA_MAX_ISA`).
CAP_ENV: dict[str, dict[str, str]] = {
    "avx512": {"FASTRNN_CPU_CAPABILITY": "avx512", "OPENBLAS_CORETYPE": "SkylakeX",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ATEN_CPU_CAPABILITY": "avx512"},
    "avx2": {"FASTRNN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"},
    "default": {"FASTRNN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Prescott",
                "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ATEN_CPU_CAPABILITY": "default"},
}
XLA_MAX_ISA = {"avx512": "AVX512", "avx2": "AVX2", "default": "SSE4_2"}
#: Removed from the child's environment, cap or not: they force OpenBLAS's kernel choice.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Set in the child's environment: JSON of what the parent asked (cap, removed variables,
#: its command line). Its presence also keeps the child from starting one of its own.
PARENT_VAR = "FASTRNN_BENCH_PARENT"

#: Variables that force their kernel set: set only where the CPU has these flags.
FORCING = ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY")
CPU_FLAGS = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
             "avx2": ("avx2", "fma"), "default": ("sse2",)}

#: Instruction-set levels, to tell whether what a library runs is within a cap.
LEVELS = {"default": 0, "avx": 1, "avx2": 2, "avx512": 3, "beyond": 4}
_LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
_OPENBLAS_LEVELS = {
    **dict.fromkeys(("katmai", "coppermine", "northwood", "prescott", "banias", "atom",
                     "core2", "penryn", "dunnington", "nehalem", "athlon", "opteron",
                     "opteron_sse3", "barcelona", "nano", "bobcat"), 0),
    "sandybridge": 1, "bulldozer": 1,
    "haswell": 2, "zen": 2, "piledriver": 2, "steamroller": 2, "excavator": 2,
    "skylakex": 3, "cooperlake": 4, "sapphirerapids": 4,
}


# ----------------------------------------------------------------------------- the child


def needs_child(cap: str | None, environ: Mapping[str, str]) -> bool:
    """Whether the bench must re-run itself: a cap was asked, or the environment forces
    OpenBLAS's kernels; never inside such a child already."""
    if PARENT_VAR in environ:
        return False
    return cap is not None or any(v in environ for v in OPENBLAS_VARS)


def cpu_flags() -> frozenset[str]:
    """The CPU's flags as Linux lists them in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def child_environment(cap: str | None, environ: Mapping[str, str], argv: Sequence[str] = (),
                      flags: Collection[str] | None = None) -> dict[str, str]:
    """The child's environment: ``environ`` without :data:`OPENBLAS_VARS`, with the cap's
    variables (:data:`CAP_ENV`, ``--xla_cpu_max_isa`` appended to ``XLA_FLAGS``) when ``cap``
    is given, those of :data:`FORCING` only where the CPU's ``flags`` (default
    :func:`cpu_flags`) have the cap's instructions, and :data:`PARENT_VAR` telling the child
    what was asked."""
    if cap is not None and cap not in CAP_ENV:
        raise ValueError(f"cpu capability must be one of {', '.join(CAPABILITIES)}, got {cap!r}")
    env = dict(environ)
    removed = {v: env.pop(v) for v in OPENBLAS_VARS if v in env}
    if cap is not None:
        has = set(cpu_flags() if flags is None else flags)
        forcible = all(f in has for f in CPU_FLAGS[cap])
        env.update({k: v for k, v in CAP_ENV[cap].items() if forcible or k not in FORCING})
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_cpu_max_isa={XLA_MAX_ISA[cap]}").strip()
    env[PARENT_VAR] = json.dumps({"cap": cap, "removed": removed, "argv": list(argv)})
    return env


def child_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--cpu-capability X`` (or ``--cpu-capability=X``, or an unambiguous
    prefix of the option, as argparse takes it)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if len(name) >= 4 and "--cpu-capability".startswith(name):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def parent_info(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """What the parent asked (see :data:`PARENT_VAR`), or None outside a child."""
    text = (os.environ if environ is None else environ).get(PARENT_VAR)
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _copy_pipe(src: Any, dst: TextIO) -> None:
    """Copy the bytes of the pipe ``src`` to the text stream ``dst`` as they come (a
    progress bar's updates end in no newline), decoded as the child encodes them."""
    decoder = codecs.getincrementaldecoder(locale.getpreferredencoding(False))("replace")
    for chunk in iter(lambda: src.read1(4096), b""):
        dst.write(decoder.decode(chunk))
        dst.flush()
    dst.write(decoder.decode(b"", final=True))
    dst.flush()


def run_child(argv: Sequence[str], env: Mapping[str, str], out: TextIO,
              err: TextIO | None = None) -> int:
    """Run ``python -m fastrnn bench argv`` with ``env``; its output goes to ``out`` (and its
    progress to ``err``, or to this process's stderr); return its exit code."""
    cmd = [sys.executable, "-m", "fastrnn", "bench", *argv]
    proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=None if err is None else subprocess.PIPE)
    pump = None
    if err is not None:
        pump = threading.Thread(target=_copy_pipe, args=(proc.stderr, err), daemon=True)
        pump.start()
    try:
        _copy_pipe(proc.stdout, out)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): so does the child
        proc.kill()
    finally:
        code = proc.wait()
        if pump is not None:
            pump.join()
    return code


# ----------------------------------------------------------------------------- what runs


def _openblas_kernels() -> list[tuple[str, str]]:
    """(library file, kernel set) of every OpenBLAS loaded, from threadpoolctl."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    return [(os.path.basename(i.get("filepath", "?")), str(i.get("architecture")))
            for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]


def _level_of_openblas(name: str) -> int | None:
    return _OPENBLAS_LEVELS.get(name.lower())


def _level_of_isa_name(text: str) -> int | None:
    """The level of an ISA name as oneDNN, MKL, ATen or XLA print it."""
    t = text.upper().replace("-", "").replace("_", "")
    if any(k in t for k in ("AMX", "AVX10", "VNNI", "BF16", "FP16", "INT8")):
        return LEVELS["beyond"]
    if "AVX512" in t:
        return LEVELS["avx512"]
    if "AVX2" in t:
        return LEVELS["avx2"]
    if "AVX" in t:
        return LEVELS["avx"]
    if "SSE" in t or "DEFAULT" in t:
        return LEVELS["default"]
    return None


_TORCH_PROBE = """
import torch
torch.set_num_threads(1)
a = torch.randn(64, 64)
a @ a
with torch.no_grad():
    torch.nn.LSTM(8, 8)(torch.randn(3, 2, 8))
"""

_JAX_PROBE = """
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.tanh(a @ b))
text = f.lower(jnp.ones((8, 16), jnp.float32), jnp.ones((16, 32), jnp.float32)).compile().as_text()
print("matmul library:", "YNNPACK" if "__ynn_fusion" in text else
      "XNNPACK" if "__xnn_fusion" in text else "XLA")
"""


def _run_probe(code: str, extra_env: Mapping[str, str], timeout: float = 120.0) -> str:
    """stdout + stderr of ``python -c code`` in this process's environment plus ``extra_env``
    (empty if it could not run)."""
    env = {**os.environ, **extra_env}
    env.pop(PARENT_VAR, None)
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + "\n" + done.stderr


def _torch_probe() -> dict[str, str | None]:
    """The ISA oneDNN and MKL inside torch report in their verbose logs."""
    text = _run_probe(_TORCH_PROBE, {"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"})
    onednn = re.search(r"onednn_verbose,(?:v\d+,)?info,cpu,isa:([^\n]+)", text)
    mkl = re.search(r"MKL_VERBOSE oneMKL[^\n]*?architecture ([^\n]*?)"
                    r"(?: enabled processors|, Lnx|\n)", text)
    mkl_isa = None
    if mkl:  # "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2)" -> "AVX2"
        mkl_isa = re.sub(r"Intel\(R\) [^()]*\(Intel\(R\) ([^)]+)\)", r"\1", mkl.group(1))
    return {"onednn": onednn.group(1).strip() if onednn else None,
            "mkl": mkl_isa.strip() if mkl_isa else None}


def _jax_probe() -> dict[str, str | None]:
    """The ISA limit XLA's compiler logs, and the library its matrix products go to."""
    text = _run_probe(_JAX_PROBE, {"TF_CPP_MIN_LOG_LEVEL": "0",
                                   "TF_CPP_VMODULE": "cpu_compiler=1,cpu_features=1"})
    newer = re.search(r"Will not use features newer than: (\S+)", text)
    unknown = re.search(r"Unknown CPU ISA: (\S+)", text)
    lib = re.search(r"matmul library: (\S+)", text)
    return {"max_isa": newer.group(1) if newer else None,
            "unknown": unknown.group(1) if unknown else None,
            "matmul": lib.group(1) if lib else None}


def _report_entry(library: str, runs: str | None, level: int | None, cap: str | None,
                  setting: str | None, how: str, cappable: bool = True) -> dict[str, Any]:
    """One line of the report. ``honoured``: with a cap, whether the library runs within it
    (None: no cap, or nothing to judge by); ``cappable``: whether any setting caps it."""
    honoured = None
    if cap is not None and cappable and level is not None:
        honoured = level <= LEVELS[cap]
    return {"library": library, "runs": runs, "level": _LEVEL_NAMES.get(level),
            "setting": setting, "honoured": honoured, "cappable": cappable, "how": how}


def report(peers: Sequence[str], cap: str | None = None,
           probe: bool = True) -> list[dict[str, Any]]:
    """Per library, what it runs and (with ``cap``) whether that is within the cap.

    fastrnn, OpenBLAS (threadpoolctl, every copy loaded) and torch's ATen are read in this
    process (it must have loaded them); with ``probe``, oneDNN and MKL (torch in ``peers``)
    and XLA (jax in ``peers``, with a cap) in a short probe process each.
    """
    env = CAP_ENV.get(cap, {}) if cap else {}

    def setting(var: str) -> str | None:
        value = os.environ.get(var)
        return None if value is None else f"{var}={value}"

    out = []
    ours = fastrnn.get_cpu_capability()
    out.append(_report_entry("fastrnn", ours, LEVELS.get(ours), cap,
                             setting("FASTRNN_CPU_CAPABILITY"), "fastrnn.get_cpu_capability()"))
    blas = _openblas_kernels()
    if blas:
        levels = [_level_of_openblas(k) for _, k in blas]
        level = None if None in levels else max(levels)
        runs = ", ".join(f"{k} ({f})" for f, k in blas)
        how = "threadpoolctl"
        if any(k.lower() == "katmai" for _, k in blas):
            how += "; Katmai is OpenBLAS's name for its x86-64 Prescott (SSE3) kernels"
        out.append(_report_entry("OpenBLAS", runs, level, cap, setting("OPENBLAS_CORETYPE"),
                                 how))
    if "torch" in peers:
        import torch

        aten = torch.backends.cpu.get_cpu_capability()
        out.append(_report_entry("torch ATen", aten, _level_of_isa_name(aten), cap,
                                 setting("ATEN_CPU_CAPABILITY"),
                                 "torch.backends.cpu.get_cpu_capability()"))
        found = _torch_probe() if probe else {"onednn": None, "mkl": None}
        for key, name, var, log in (("onednn", "torch oneDNN", "ONEDNN_MAX_CPU_ISA",
                                     "ONEDNN_VERBOSE"),
                                    ("mkl", "torch MKL", "MKL_ENABLE_INSTRUCTIONS",
                                     "MKL_VERBOSE")):
            runs = found[key]
            level = None if runs is None else _level_of_isa_name(runs)
            out.append(_report_entry(name, runs or "?", level, cap, setting(var),
                                     f"{log}=1 in a probe process" if probe else "not probed"))
    if "jax" in peers:
        flag = re.search(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
        found = _jax_probe() if probe and flag else {}
        if flag is None:
            runs, level = "code generated for this CPU", None
        elif found.get("unknown"):
            runs, level = f"XLA rejected {found['unknown']!r}", LEVELS["beyond"]
        elif found.get("max_isa"):
            runs = f"generated code up to {found['max_isa']}"
            level = _level_of_isa_name(found["max_isa"])
        else:
            runs, level = "? (no cap seen in XLA's log)", None
        out.append(_report_entry("jax XLA", runs, level, cap,
                                 None if flag is None else f"--xla_cpu_max_isa={flag.group(1)}",
                                 "XLA's compiler log in a probe process" if found
                                 else "-" if flag is None else "XLA_FLAGS, not probed"))
        if found.get("matmul") in ("YNNPACK", "XNNPACK"):
            out.append(_report_entry(f"jax matmuls ({found['matmul']})",
                                     "kernels for this CPU: no setting caps them", None, cap, None,
                                     "the compiled HLO in the probe", cappable=False))
    if "onnxruntime" in peers:
        out.append(_report_entry("onnxruntime MLAS", "kernels for this CPU: no setting caps them",
                                 None, cap, None, "-", cappable=False))
    return out


def format_report(entries: Sequence[Mapping[str, Any]], cap: str | None,
                  removed: Mapping[str, str] | None = None) -> list[str]:
    """The header's lines about the caps: what was asked, and per library what it runs."""
    if cap is None:
        head = ("cpu capability: no cap asked, every library picks its kernels for this CPU "
                "(--cpu-capability avx2|default|avx512 caps them)")
    else:
        head = (f"cpu capability: capped to {cap} (--cpu-capability {cap}: the bench re-ran "
                "itself in a child process with each library's cap set before it loaded)")
    lines = [head]
    for e in entries:
        mark = {True: " [honoured]", False: " [NOT honoured]", None: ""}[e["honoured"]]
        if cap is not None and not e["cappable"]:
            mark = " [not capped]"
        how = [e["setting"]] if e["setting"] else []
        how += [e["how"]] if e["how"] and e["how"] != "-" else []
        lines.append(f"  {e['library']}: {e['runs']}{mark}" +
                     (f" ({'; '.join(how)})" if how else ""))
    for var, value in (removed or {}).items():
        lines.append(f"  {var}={value} was set in the environment: removed for this run")
    return lines

"""Declares the Cython extension; metadata lives in pyproject.toml.

Compiler directives are set here once. FASTRNN_DEBUG=1 turns bounds, wraparound and
initialisation checks back on (and drops optimisation) for debugging a kernel.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTRNN_DEBUG") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

# No -march=native, so that a wheel runs on any x86-64: the kernels are compiled once per
# ISA in target regions and picked at run time instead (_ktable.h). -fno-trapping-math lets GCC if-convert (and so
# vectorise) the clamps in them; nothing here reads floating-point exception flags.
extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]

extensions = [
    Extension(
        "fastrnn._kernels",
        ["src/fastrnn/_kernels.pyx"],
        include_dirs=["src/fastrnn", np.get_include()],
        depends=[f"src/fastrnn/{name}" for name in (
            "_ktable.h", "_kern_body.h", "_simd_avx512.h", "_simd_avx2.h", "_simd_default.h",
            "_simd_end.h", "_stop.h", "_cellmath.h", "_cellmath_rows.h", "_rows_inst.h", "_pool.h",
            "_cellmath.pxd", "_blas.pxd")],
        extra_compile_args=extra_compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))

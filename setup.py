"""Declares the Cython extension; metadata lives in pyproject.toml.

Compiler directives are set here once. FASTRNN_DEBUG=1 turns bounds, wraparound and
initialisation checks back on (and drops optimisation) for debugging a kernel.
"""
import os

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

# -O3 lets gcc vectorise the pointwise loops for the baseline ISA; no -march=native so
# that a wheel runs on any x86-64.
extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(
        "fastrnn._kernels",
        ["fastrnn/_kernels.pyx"],
        extra_compile_args=extra_compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))

"""Declares the Cython extension; metadata lives in pyproject.toml.

Compiler directives are set here once. FASTRNN_DEBUG=1 turns bounds, wraparound and
initialisation checks back on (and drops optimisation) for debugging a kernel.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

KERNELS = "src/fastrnn/kernels"
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
# ISA in target regions and picked at run time instead (kernels/_ktable.h). -fno-trapping-math lets GCC if-convert (and so
# vectorise) the clamps in them; nothing here reads floating-point exception flags.
extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]

extensions = [
    Extension(
        "fastrnn._kernels",
        ["src/fastrnn/kernels/_kernels.pyx"],
        # the folder of the kernels' sources: the headers, and the .pxd files cimported by
        # name (the module is fastrnn._kernels, but its sources are not a package)
        include_dirs=[KERNELS, np.get_include()],
        depends=sorted(glob.glob(f"{KERNELS}/**/*.h", recursive=True)
                       + glob.glob(f"{KERNELS}/*.pxd") + glob.glob(f"{KERNELS}/*.pxi")),
        extra_compile_args=extra_compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))

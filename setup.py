"""Declares the Cython extension; metadata lives in pyproject.toml.

Compiler directives are set here once. FASTRNN_DEBUG=1 turns bounds, wraparound and
initialisation checks back on (and drops optimisation) for debugging a kernel.
"""
import glob
import os

import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
# ISA in target regions and picked at run time instead (kernels/_ktable.h).
# -fno-trapping-math lets GCC if-convert (and so vectorise) the clamps in them; nothing
# here reads floating-point exception flags.
extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
# A release build carries no debug information (the interpreter's CFLAGS may say -g: the
# last -g option wins) and, on Linux, no symbol table beyond the dynamic one (-s).
if not DEBUG and sys.platform != "win32":
    extra_compile_args.append("-g0")
extra_link_args = ["-s"] if (not DEBUG and sys.platform.startswith("linux")) else []

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
        extra_link_args=extra_link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]



class BuildExt(build_ext):
    """build_ext without the interpreter's own library search path: a Python built in a
    private prefix (pyenv, conda) links its extensions with -Wl,-rpath,<prefix>/lib,
    which the extension does not need and a wheel must not carry."""

    def build_extensions(self):
        linker = getattr(self.compiler, "linker_so", None)
        if linker is not None:
            self.compiler.linker_so = [a for a in linker
                                       if not a.startswith(("-Wl,-rpath", "-Wl,-R"))]
        super().build_extensions()


setup(ext_modules=cythonize(extensions, compiler_directives=directives),
      cmdclass={"build_ext": BuildExt})

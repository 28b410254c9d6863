"""Declares the Cython extension; metadata lives in pyproject.toml.

Compiler directives are set here once. FASTRNN_DEBUG=1 turns bounds, wraparound and
initialisation checks back on (and drops optimisation) for debugging a kernel.
"""
import glob
import os
import shutil
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
WINDOWS = sys.platform == "win32"
extra_compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
# A release build carries no debug information (the interpreter's CFLAGS may say -g: the
# last -g option wins) and, on Linux, no symbol table beyond the dynamic one (-s).
if not DEBUG and not WINDOWS:
    extra_compile_args.append("-g0")
extra_link_args = ["-s"] if (not DEBUG and sys.platform.startswith("linux")) else []
# Windows: WaitOnAddress and WakeByAddressAll (kernels/_os.h)
libraries = ["synchronization"] if WINDOWS else []

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
        libraries=libraries,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]



CLANG_CL_PLACES = [r"C:\Program Files\LLVM\bin\clang-cl.exe"]


def _clang_cl():
    """clang-cl's path: FASTRNN_CLANG_CL, the PATH, or LLVM's default install."""
    found = (os.environ.get("FASTRNN_CLANG_CL") or shutil.which("clang-cl")
             or next((p for p in CLANG_CL_PLACES if os.path.isfile(p)), None))
    if found is None:
        raise RuntimeError(
            "building fastrnn on Windows needs clang-cl, LLVM's compiler for the MSVC "
            "toolchain (the kernels use GCC/Clang vector extensions and builtins, which "
            "MSVC's cl does not compile): install LLVM (e.g. `winget install LLVM.LLVM`, or "
            "Visual Studio's 'C++ Clang tools for Windows'), or set FASTRNN_CLANG_CL to "
            "clang-cl.exe")
    return found


class BuildExt(build_ext):
    """build_ext without the interpreter's own library search path, and with clang-cl on
    Windows.

    A Python built in a private prefix (pyenv, conda) links its extensions with
    -Wl,-rpath,<prefix>/lib, which the extension does not need and a wheel must not carry.
    On Windows, setuptools drives MSVC; clang-cl takes cl's options and makes objects for
    MSVC's linker, so only the compiler is swapped (and /GL dropped: link-time code
    generation is cl's own object format)."""

    def build_extensions(self):
        linker = getattr(self.compiler, "linker_so", None)
        if linker is not None:
            self.compiler.linker_so = [a for a in linker
                                       if not a.startswith(("-Wl,-rpath", "-Wl,-R"))]
        if self.compiler.compiler_type == "msvc":
            if not getattr(self.compiler, "initialized", True):
                self.compiler.initialize()
            self.compiler.cc = _clang_cl()
            for ext in self.extensions:  # clang's own options go behind /clang:
                ext.extra_compile_args = [f"/clang:{a}" for a in ext.extra_compile_args]
            for name in ("compile_options", "compile_options_debug"):
                options = getattr(self.compiler, name, None)
                if options is not None:
                    setattr(self.compiler, name, [o for o in options if o != "/GL"])
        super().build_extensions()


setup(ext_modules=cythonize(extensions, compiler_directives=directives),
      cmdclass={"build_ext": BuildExt})

"""Builds moe_cpp._core with the project's CMake build (target moe_python) and packages python/moe_cpp.

Environment:
  MOE_PY_BUILD_DIR   CMake build folder (default build/pip). An already configured folder (e.g. build)
                     is built as it is, so an installed package can reuse an existing build.
  MOE_CMAKE_ARGS     extra configure arguments for a new folder (default: -DMOE_CUDA=OFF -DMOE_MPI=OFF).
  MOE_BUILD_JOBS     parallel build jobs (default: the CPU count).
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.path.abspath(os.environ.get("MOE_PY_BUILD_DIR") or os.path.join(ROOT, "build", "pip"))
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            args = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DMOE_BUILD_TESTS=OFF",
                    "-DMOE_PYTHON=ON", f"-DPython_EXECUTABLE={sys.executable}"]
            try:
                import pybind11
                args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
            except ImportError:
                pass  # CMake finds Debian's pybind11-dev by itself
            if shutil.which("ninja"):
                args += ["-G", "Ninja"]
            args += shlex.split(os.environ.get("MOE_CMAKE_ARGS", "-DMOE_CUDA=OFF -DMOE_MPI=OFF"))
            subprocess.check_call(args)
        jobs = os.environ.get("MOE_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "moe_python", "-j", jobs])
        pkg = os.path.join(build_dir, "python", "moe_cpp")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = os.path.join(pkg, "_core" + suffix)
        if not os.path.exists(built):
            found = [f for f in os.listdir(pkg) if f.startswith("_core.")] if os.path.isdir(pkg) else []
            raise RuntimeError(f"moe_cpp: {built} was not built (found {found}): the build folder {build_dir} "
                               f"was configured for another Python; set MOE_PY_BUILD_DIR to a new folder")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(built, dest)


setup(
    package_dir={"": "python"},
    packages=["moe_cpp"],
    ext_modules=[Extension("moe_cpp._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
    options={"build": {"build_base": os.path.join("build", "setuptools")}},
)

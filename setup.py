"""The two native targets of the trimalloc Python package.

Metadata lives in pyproject.toml. This file declares:
- trimalloc._trimalloc: the CPython extension (its own C file plus the glue
  shared with the Ruby gem, core/bind/bind_*.c). It finds the allocator among
  the loaded objects at run time and never compiles the allocator in.
- trimalloc/libtrimalloc.so: the preload library, built from core/ by the core's
  own Makefile (the one place that knows its flags) and copied into the package.
  It needs only libc; it does not link libpython.
"""
import os
import re
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "core")


def core_version():
    with open(os.path.join(CORE, "trimalloc.h")) as f:
        return re.search(r'#define TRIMALLOC_VERSION "([^"]+)"', f.read()).group(1)


class CoreLibrary(Extension):
    """libtrimalloc.so, built with `make -C core BUILD=<dir>`, not by distutils."""


class BuildExt(build_ext):
    def get_ext_filename(self, fullname):
        # distutils passes the full name here, or only its last part
        if fullname == "trimalloc.libtrimalloc":
            return os.path.join("trimalloc", "libtrimalloc.so")
        if fullname == "libtrimalloc":
            return "libtrimalloc.so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if not isinstance(ext, CoreLibrary):
            return super().build_extension(ext)
        out = os.path.abspath(os.path.join(self.build_temp, "core"))
        os.makedirs(out, exist_ok=True)
        cmd = [os.environ.get("MAKE", "make"), "-C", CORE, "BUILD=" + out]
        print(" ".join(cmd))
        try:
            subprocess.check_call(cmd)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit("trimalloc: building the preload library failed: %s" % e)
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(out, "libtrimalloc.so"), dest)
        os.chmod(dest, 0o755)


setup(
    version=core_version(),
    package_dir={"": "ext-python"},
    packages=["trimalloc"],
    package_data={"trimalloc": ["py.typed", "*.pyi"]},
    exclude_package_data={"trimalloc": ["*.c"]},  # in the sdist (MANIFEST.in), not the wheel
    zip_safe=False,
    ext_modules=[
        Extension(
            "trimalloc._trimalloc",
            sources=["ext-python/trimalloc/_trimalloc.c", "ext-python/trimalloc/_prof.c",
                     "core/bind/bind_backend.c",
                     "core/bind/bind_policy.c", "core/bind/bind_launch.c",
                     "core/bind/bind_sampler.c", "core/bind/bind_prof.c",
                     "core/bind/bind_prof_top.c", "core/bind/bind_flame.c", "core/bind/bind_inflate.c"],
            include_dirs=["core", "core/bind", "ext-python/trimalloc"],
            define_macros=[("Py_LIMITED_API", "0x03080000")],
            py_limited_api=True,
            extra_compile_args=["-std=c11", "-fvisibility=hidden", "-Wall", "-Wextra"],
            libraries=["dl", "m"],
        ),
        CoreLibrary("trimalloc.libtrimalloc", sources=["core/Makefile"]),
    ],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp38"}},
)

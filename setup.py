"""The two native targets of the trimalloc Python package.

Metadata lives in pyproject.toml. This file declares:
- trimalloc._trimalloc: the CPython extension (its own C files plus the glue
  shared with the Ruby gem, core/bind/bind_*.c). It finds the allocator among
  the loaded objects at run time and never compiles the allocator in.
- trimalloc/libtrimalloc.so: the preload library, built from core/ by the core's
  own Makefile (the one place that knows its flags) and copied into the package.
  It needs only libc; it does not link libpython.
"""
import glob
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


def sources(pattern):
    """The files matching pattern, relative to this directory, sorted."""
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


class CoreLibrary(Extension):
    """libtrimalloc.so, built with `make -C core BUILD=<dir>`, not by distutils."""


class BuildExt(build_ext):
    def finalize_options(self):
        # The two targets build side by side (the core's make runs its own
        # jobs below): `pip install` takes about half the time on 2 CPUs.
        if self.parallel is None:
            self.parallel = 2
        super().finalize_options()

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
        cmd = [os.environ.get("MAKE", "make"), "-j%d" % (os.cpu_count() or 1), "-C", CORE, "BUILD=" + out]
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
    package_data={"trimalloc": ["py.typed", "*.pyi", "_bootstrap/*.py"]},
    exclude_package_data={"trimalloc": ["*.c"]},  # in the sdist (MANIFEST.in), not the wheel
    zip_safe=False,
    ext_modules=[
        Extension(
            "trimalloc._trimalloc",
            # every C file of the package, and the glue shared with the Ruby gem
            # (the gem's extconf.rb takes core/bind/bind_*.c the same way, less bind_pymalloc.c)
            sources=sources("ext-python/trimalloc/_*.c") + sources("core/bind/bind_*.c"),
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

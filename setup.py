"""Builds the optional Cython accelerator ggap._fastlog.

GGAP_NO_EXTENSIONS=1 skips it (pure-Python wheel); a failed compile falls back to the
pure twin unless GGAP_REQUIRE_EXTENSIONS=1 makes it fatal.
"""

import os
import sys

from setuptools import Extension, setup

NO_EXT = bool(os.environ.get("GGAP_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

ext_modules = []
if not NO_EXT:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("ggap._fastlog", ["ggap/_fastlog.pyx"])],
        compiler_directives={"language_level": 3, "embedsignature": True},
    )
    # cythonize() drops Extension(optional=True); re-apply it so a missing compiler
    # degrades to the pure twin instead of failing the install.
    for ext in ext_modules:
        ext.optional = not os.environ.get("GGAP_REQUIRE_EXTENSIONS")

setup(ext_modules=ext_modules)

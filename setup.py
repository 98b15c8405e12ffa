"""Builds the C parts that ship in the wheel; metadata lives in pyproject.toml.

vaddr._launch is loaded with ctypes, not imported: it is a plain shared
library, built as an extension only so that pip compiles it at install time."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vaddr._launch", sources=["vaddr/launch.c"],
                             extra_compile_args=["-O2", "-Wall"])])

"""Builds the C parts that ship in the wheel; metadata lives in pyproject.toml.

None is imported: vaddr._launch and _delayline are loaded with ctypes,
vaddr._preload is the LD_PRELOAD shim, and vaddr._procview the library that
routes /proc/net opens to a vhost's view.  They are plain shared libraries,
built as extensions only so that pip compiles them at install time and no
compiler is needed later."""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("vaddr._launch", sources=["vaddr/launch.c"], depends=["vaddr/view_filter.h"],
              extra_compile_args=["-O2", "-Wall"]),
    Extension("vaddr._preload", sources=["preload/" + f for f in (
        "shim.c", "map.c", "bind.c", "send.c", "reveal.c", "ifaddrs.c", "exec.c", "member.c", "names.c",
        "loopback.c", "translate.c")],
              extra_compile_args=["-O2", "-Wall", "-fvisibility=hidden"], libraries=["dl", "pthread"]),
    Extension("vaddr._procview", sources=["preload/procview.c"],
              extra_compile_args=["-O2", "-Wall", "-fvisibility=hidden"], libraries=["dl"]),
    Extension("vaddr._delayline", sources=["vaddr/delayline.c"], extra_compile_args=["-O2", "-Wall"]),
])

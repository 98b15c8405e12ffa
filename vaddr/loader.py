"""Compiling and attaching the socket hooks with bcc: done once per boot (or
after `vaddr reset`), never on a spawn that finds the runtime ready.

bcc needs a kernel header tree, but the hooks use only UAPI types, so headers
of another kernel version serve when the running kernel's are missing."""
import glob
import os
import re

from vaddr import cgroups, maps
from vaddr.errors import VaddrError

# (name in sock_addr.c, bcc program type, attach type); numbers from the UAPI
# enums, since bcc 0.26 lacks names for some of them.
CGROUP_SOCK_ADDR = 18
CGROUP_SOCKOPT = 25
HOOKS = (
    ("vaddr_bind4", CGROUP_SOCK_ADDR, 8),
    ("vaddr_bind6", CGROUP_SOCK_ADDR, 9),
    ("vaddr_connect4", CGROUP_SOCK_ADDR, 10),
    ("vaddr_connect6", CGROUP_SOCK_ADDR, 11),
    ("vaddr_sendmsg4", CGROUP_SOCK_ADDR, 14),
    ("vaddr_sendmsg6", CGROUP_SOCK_ADDR, 15),
    ("vaddr_setsockopt", CGROUP_SOCKOPT, 22),
)
BPF_F_ALLOW_MULTI = 2
# Pinned last: its presence says the hooks are attached, not just the maps made.
READY_PIN = os.path.join(maps.PIN_DIR, "ready")


def bpf_dir():
    """bpf/ beside the package in a checkout, vaddr/bpf in an installed wheel."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "bpf"), os.path.join(os.path.dirname(here), "bpf")):
        if os.path.exists(os.path.join(candidate, "sock_addr.c")):
            return candidate
    raise VaddrError("vaddr's BPF sources are missing", "reinstall vaddr")


def check_layout(header_path):
    """The header and maps.py must describe the same maps."""
    text = open(header_path).read()
    version = re.search(r"#define VADDR_LAYOUT_VERSION (\d+)", text)
    pin_dir = re.search(r'#define VADDR_PIN_DIR "([^"]+)"', text)
    if not version or int(version.group(1)) != maps.LAYOUT_VERSION or pin_dir.group(1) != maps.PIN_DIR:
        raise VaddrError("bpf/vaddr.h and vaddr/maps.py disagree on the map layout",
                         "reinstall vaddr from one source tree")


def _arch():
    m = os.uname().machine
    return {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390"}.get(m, m)


def header_flags():
    """(BCC_KERNEL_SOURCE or None, extra cflags) for a usable header tree."""
    release = os.uname().release
    build = f"/lib/modules/{release}/build"
    if os.path.exists(os.path.join(build, "include/generated/autoconf.h")) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return None, []
    # Trees with generated headers: Debian's linux-headers-*-amd64, Ubuntu's
    # -generic, Fedora's /usr/src/kernels/*.  Newest first.
    generated = sorted(glob.glob("/usr/src/linux-headers-*/include/generated/autoconf.h")
                       + glob.glob("/usr/src/kernels/*/include/generated/autoconf.h"),
                       key=_version_key, reverse=True)
    for autoconf in generated:
        tree = autoconf[: -len("/include/generated/autoconf.h")]
        if os.path.exists(os.path.join(tree, "include/linux/kconfig.h")):
            return tree, []
        # Debian and Ubuntu split the tree: the arch half's Makefile names the common half.
        common = _included_tree(os.path.join(tree, "Makefile"))
        if common and os.path.exists(os.path.join(common, "include/linux/kconfig.h")):
            arch = _arch()
            return common, [f"-I{tree}/include", f"-I{tree}/arch/{arch}/include/generated",
                            f"-I{tree}/arch/{arch}/include/generated/uapi", f"-I{tree}/include/generated/uapi"]
    raise VaddrError("no kernel headers found for bcc",
                     "install any version's: apt install linux-headers-amd64 (Debian), linux-headers-generic "
                     "(Ubuntu) or dnf install kernel-devel (Fedora)")


def _version_key(path):
    return [int(n) for n in re.findall(r"\d+", path)]


def _included_tree(makefile):
    try:
        text = open(makefile).read()
    except OSError:
        return None
    m = re.search(r"^include (\S+)/Makefile", text, re.M)
    return m.group(1) if m else None


def compile_program(filename, set_retval=False):
    """A bcc BPF object for bpf/FILENAME, its pinned maps created or reused.
    set_retval: compile the refused-bind path with bpf_set_retval."""
    src_dir = bpf_dir()
    check_layout(os.path.join(src_dir, "vaddr.h"))
    source, cflags = header_flags()
    if source:
        os.environ["BCC_KERNEL_SOURCE"] = source
    cflags = cflags + [f"-I{src_dir}"]
    if set_retval:
        cflags.append("-DVADDR_HAVE_SET_RETVAL")
    os.makedirs(maps.PIN_DIR, exist_ok=True)
    try:
        from bcc import BPF
    except ImportError:
        raise VaddrError("bcc is not installed", "apt install python3-bpfcc, then make setup")
    try:
        return BPF(src_file=os.path.join(src_dir, filename).encode(), cflags=cflags)
    except Exception as e:
        raise VaddrError(f"bcc could not compile {filename}: {e}", "run vaddr doctor")


def pin(fn, path):
    from bcc import libbcc
    if libbcc.lib.bpf_obj_pin(fn.fd, path.encode()) != 0:
        raise VaddrError(f"could not pin {path} in bpffs", "run vaddr reset, then retry")


BIND_REFUSAL_FILE = "bind-refusal"  # in RUN_DIR: the errno a refused bind gets


def _load_hooks():
    """(bpf object, [loaded functions], errno name of a refused bind).  The
    verifier is asked whether this kernel has bpf_set_retval (5.18+, or a
    backport): the hooks are loaded with it, and without it if refused."""
    errors = []
    for set_retval, refusal in ((True, "EADDRNOTAVAIL"), (False, "EPERM")):
        bpf = compile_program("sock_addr.c", set_retval=set_retval)
        try:
            fns = [(bpf.load_func(name.encode(), prog_type, attach_type=attach_type), attach_type)
                   for name, prog_type, attach_type in HOOKS]
            return bpf, fns, refusal
        except Exception as e:
            errors.append(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
    raise VaddrError(f"the kernel refused vaddr's socket hooks: {errors[-1]}", "run vaddr doctor")


def bind_refusal():
    """The errno a bind of another vhost's address fails with, as measured
    when the hooks were loaded; None before that."""
    from vaddr import runtime
    try:
        with open(os.path.join(runtime.RUN_DIR, BIND_REFUSAL_FILE)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def load_and_attach():
    """Compile, load and attach the hooks to vaddr's parent cgroup, then pin
    the ready marker.  Caller holds the runtime lock."""
    from bcc import BPF
    from vaddr import runtime
    bpf, fns, refusal = _load_hooks()
    with open(os.path.join(runtime.RUN_DIR, BIND_REFUSAL_FILE), "w") as f:
        f.write(refusal + "\n")
    parent = cgroups.ensure_parent()
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for fn, attach_type in fns:
            BPF.attach_func(fn, fd, attach_type, BPF_F_ALLOW_MULTI)
        pin(bpf.load_func(b"vaddr_bind4", CGROUP_SOCK_ADDR, attach_type=8), READY_PIN)
    finally:
        os.close(fd)

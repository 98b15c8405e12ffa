"""Compiling and attaching the socket hooks with bcc: done once per boot (or
after `vaddr reset`), never on a spawn that finds the runtime ready.

bcc needs a kernel header tree, but the hooks use only UAPI types, so headers
of another kernel version serve when the running kernel's are missing."""
import collections
import glob
import os
import re
import sys

from vaddr import cgroups, maps
from vaddr.errors import VaddrError

# (name in sock_addr.c, bcc program type, attach type); numbers from the UAPI
# enums, since bcc 0.26 lacks names for some of them.
CGROUP_SOCK_ADDR = 18
CGROUP_SOCKOPT = 25
SOCK_OPS = 13
SK_LOOKUP = 30
HOOKS = (
    ("vaddr_bind4", CGROUP_SOCK_ADDR, 8),
    ("vaddr_bind6", CGROUP_SOCK_ADDR, 9),
    ("vaddr_connect4", CGROUP_SOCK_ADDR, 10),
    ("vaddr_connect6", CGROUP_SOCK_ADDR, 11),
    ("vaddr_sendmsg4", CGROUP_SOCK_ADDR, 14),
    ("vaddr_sendmsg6", CGROUP_SOCK_ADDR, 15),
    ("vaddr_recvmsg4", CGROUP_SOCK_ADDR, 19),
    ("vaddr_recvmsg6", CGROUP_SOCK_ADDR, 20),
    ("vaddr_setsockopt", CGROUP_SOCKOPT, 22),
    ("vaddr_getpeername4", CGROUP_SOCK_ADDR, 29),
    ("vaddr_getpeername6", CGROUP_SOCK_ADDR, 30),
    ("vaddr_getsockname4", CGROUP_SOCK_ADDR, 31),
    ("vaddr_getsockname6", CGROUP_SOCK_ADDR, 32),
)
# Remapped listeners (bpf/steer.h): the sockops program on the cgroup, the
# sk_lookup program on the network namespace through a pinned link.
STEER_HOOKS = (("vaddr_sockops", SOCK_OPS, 3),)
STEER_PROG = ("vaddr_steer", SK_LOOKUP, 36)
STEER_LINK_PIN = os.path.join(maps.PIN_DIR, "steer_link")
# UDP ports of a vhost's own (bpf/udp_ports.h): three cgroup sock programs, a
# tc program on lo's ingress, and one on its egress for multicast (bpf/mcast.h).
CGROUP_SOCK = 9
SCHED_CLS = 3
UDP_HOOKS = (
    ("vaddr_post_bind4", CGROUP_SOCK, 12),
    ("vaddr_post_bind6", CGROUP_SOCK, 13),
    ("vaddr_sock_release", CGROUP_SOCK, 34),
)
UDP_PROG = "vaddr_udp_ports"
MCAST_PROG = "vaddr_mcast"
# (bpf_set_retval, steering, UDP ports, listen() without bind), most first;
# the last two stand on steering.
TRIES = ((True, True, True, True), (True, True, True, False), (False, True, True, True),
         (False, True, True, False), (True, True, False, False), (False, True, False, False),
         (True, False, False, False), (False, False, False, False))
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


def compile_program(filename, set_retval=False, steer=False, udp_ports=False, loose=False, mcast=False, edt=False):
    """A bcc BPF object for bpf/FILENAME, its pinned maps created or reused.
    set_retval: compile the refusals with bpf_set_retval; steer: with the
    remapped listeners of bpf/steer.h; udp_ports: with bpf/udp_ports.h;
    loose: with steer.h's listeners made by listen() without bind; mcast:
    with bpf/mcast.h (stands on udp_ports); edt: shape.c with departure times."""
    src_dir = bpf_dir()
    check_layout(os.path.join(src_dir, "vaddr.h"))
    source, cflags = header_flags()
    if source:
        os.environ["BCC_KERNEL_SOURCE"] = source
    cflags = cflags + [f"-I{src_dir}"]
    if set_retval:
        cflags.append("-DVADDR_HAVE_SET_RETVAL")
    if steer:
        cflags.append("-DVADDR_STEER")
    if udp_ports:
        cflags.append("-DVADDR_UDP_PORTS")
    if loose:
        cflags.append("-DVADDR_LOOSE")
    if mcast:
        cflags.append("-DVADDR_MCAST")
    if edt:
        cflags.append("-DVADDR_EDT")
    os.makedirs(maps.PIN_DIR, exist_ok=True)
    try:
        from bcc import BPF
    except ImportError:
        raise VaddrError("bcc is not installed", "apt install python3-bpfcc, then make setup")
    try:
        return BPF(text=_inline_includes(src_dir, filename).encode(), cflags=cflags)
    except Exception as e:
        raise VaddrError(f"bcc could not compile {filename}: {e}", "run vaddr doctor")


class quiet_stderr:
    """bcc prints a refused program's whole verifier log (and clang its
    errors) on stderr.  A refusal we expect and fall back from must not
    fill the user's terminal: `with quiet_stderr() as said:` sends fd 2 to
    a scratch file and leaves the refusal's own line in said.reason.  A
    class, not contextlib's decorator: this module is imported when
    `--backend auto` chooses, and tempfile costs that path ~4 ms."""

    def __enter__(self):
        self.reason = None
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._sink = os.memfd_create("vaddr-stderr")
        os.dup2(self._sink, 2)
        return self

    def __exit__(self, *exc):
        try:
            # clang's errors come first, the verifier's complaint last; a
            # verifier log can run to megabytes in between.
            size, part = os.fstat(self._sink).st_size, 1 << 16
            log = os.pread(self._sink, part, 0) + b"\n" + os.pread(self._sink, part, max(part, size - part))
            self.reason = verifier_reason(log.decode(errors="replace"))
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            os.close(self._sink)
        return False


def verifier_reason(log):
    """The verifier's own complaint in a log: the line before "processed N
    insns" (e.g. "unknown func bpf_get_current_cgroup_id#80"), or clang's
    first error; None if there is neither."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("processed ") and i:
            return lines[i - 1].strip()
    return next((line.strip() for line in lines if " error: " in line), None)


def _inline_includes(src_dir, filename, seen=None):
    """The source with our own headers pasted in: bcc rewrites map calls
    (`vhosts.lookup(...)`) only in its main file, and the hooks are split
    into headers by topic.  vaddr.h, which holds no code, stays included."""
    seen = set() if seen is None else seen
    out = []
    for line in open(os.path.join(src_dir, filename)):
        m = re.match(r'#include "(\w+\.h)"', line)
        if m and m.group(1) != "vaddr.h":
            if m.group(1) not in seen:
                seen.add(m.group(1))
                out.append(_inline_includes(src_dir, m.group(1), seen))
            continue
        out.append(line)
    return "".join(out)


def pin(fn, path):
    from bcc import libbcc
    if libbcc.lib.bpf_obj_pin(fn.fd, path.encode()) != 0:
        raise VaddrError(f"could not pin {path} in bpffs", "run vaddr reset, then retry")


BIND_REFUSAL_FILE = "bind-refusal"  # in RUN_DIR: the errno a refused bind gets
STEER_FILE = "steering"  # in RUN_DIR: "on", or why remapped listeners are off
UDP_PORTS_FILE = "udp-ports"  # in RUN_DIR: "on", or why UDP ports are off
LOOSE_FILE = "loose-listeners"  # in RUN_DIR: "on", or why listen() without bind is not confined
MCAST_FILE = "multicast"  # in RUN_DIR: "on", or why vhosts' multicast reaches no other vhost


def _state(why_off):
    return "on" if why_off is None else f"off: {why_off}"


Loaded = collections.namedtuple("Loaded", "bpf fns steer_fn udp_fn refusal no_steer no_udp no_loose no_mcast")


def _load_hooks():
    """A Loaded: the bpf object, [(loaded function, attach type)], the
    steering program and the UDP port and multicast programs (or None), the errno name of a refused
    bind, and why each optional part is off (or None).  The verifier is
    asked what this kernel has: bpf_set_retval (5.18+), steering (sk_lookup
    and listening sockets in a sockhash, 5.10+), UDP ports (sock_release,
    5.9+, and socket storage in post_bind) and listeners made by listen()
    without bind (the cgroup id in sockops); each is left out where refused."""
    errors = {}
    # Multicast between vhosts (mcast.h) is tried with each combination that
    # has UDP ports, then without it: a verifier refusing its loops must not
    # cost the UDP ports it stands on.
    tries = [(*combo, mcast) for combo in TRIES for mcast in ((True, False) if combo[2] else (False,))]
    for set_retval, steer, udp, loose, mcast in tries:
        try:
            with quiet_stderr() as said:
                bpf = compile_program("sock_addr.c", set_retval=set_retval, steer=steer, udp_ports=udp,
                                      loose=loose, mcast=mcast)
                hooks = HOOKS + (STEER_HOOKS if steer else ()) + (UDP_HOOKS if udp else ())
                fns = [(bpf.load_func(name.encode(), prog_type, attach_type=attach_type), attach_type)
                       for name, prog_type, attach_type in hooks]
                steer_fn = (bpf.load_func(STEER_PROG[0].encode(), STEER_PROG[1], attach_type=STEER_PROG[2])
                            if steer else None)
                udp_fn = (bpf.load_func(UDP_PROG.encode(), SCHED_CLS),
                          bpf.load_func(MCAST_PROG.encode(), SCHED_CLS) if mcast else None) if udp else None
            # Why a feature is off: the refusal of the try that had it and
            # lacked bpf_set_retval, so that the refusal is its own.
            return Loaded(bpf, fns, steer_fn, udp_fn, "EADDRNOTAVAIL" if set_retval else "EPERM",
                          None if steer else _why(errors, (False, True, False, False)),
                          None if udp else _why(errors, (False, True, True, False)),
                          None if loose else _why(errors, (False, True, True, True)),
                          None if mcast else errors.get((set_retval, steer, udp, loose, True), "needs own UDP ports"))
        except Exception as e:
            errors[(set_retval, steer, udp, loose, mcast)] = said.reason or _last_line(e)
    raise VaddrError(f"the kernel refused vaddr's socket hooks: {list(errors.values())[-1]}", "run vaddr doctor")


def _last_line(e):
    return str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)


def _why(errors, combo):
    return errors.get((*combo, False)) or errors.get((*combo, True)) or next(iter(errors.values()), "refused")


def _read_run_file(name):
    from vaddr import runtime
    try:
        with open(os.path.join(runtime.RUN_DIR, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def bind_refusal():
    """The errno a bind of another vhost's address fails with, as measured
    when the hooks were loaded; None before that."""
    return _read_run_file(BIND_REFUSAL_FILE)


def steering():
    """"on" when vhosts have ports of their own (bpf/steer.h), else why not;
    None before the hooks were loaded."""
    return _read_run_file(STEER_FILE)


def udp_ports():
    """"on" when vhosts' UDP ports are their own (bpf/udp_ports.h), else why
    not; None before the hooks were loaded."""
    return _read_run_file(UDP_PORTS_FILE)


def multicast():
    """"on" when a vhost's group datagrams reach the other member vhosts
    (bpf/mcast.h), else why not; None before loading."""
    return _read_run_file(MCAST_FILE)


def loose_listeners():
    """"on" when a listen() without bind in a vhost answers on its own
    addresses only (bpf/steer.h), else why not; None before loading."""
    return _read_run_file(LOOSE_FILE)


def _attach_netns(fn):
    """Attach an sk_lookup program to this network namespace with a BPF link,
    pinned so that it outlives this process (reset unpins it)."""
    from vaddr import bpfsys
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        link = bpfsys.link_create(fn.fd, netns, STEER_PROG[2])
    except OSError as e:
        # Without it, the remapped listeners would be unreachable: stop here,
        # before any hook is attached (the next spawn retries from scratch).
        raise VaddrError(f"could not attach the sk_lookup program to this network namespace: {e.strerror}",
                         "run vaddr doctor") from None
    finally:
        os.close(netns)
    try:
        bpfsys.obj_pin(link, STEER_LINK_PIN)
    except OSError as e:
        raise VaddrError(f"could not pin {STEER_LINK_PIN}: {e.strerror}", "run vaddr reset, then retry") from None
    finally:
        os.close(link)


def load_and_attach():
    """Compile, load and attach the hooks to vaddr's parent cgroup, then pin
    the ready marker.  Caller holds the runtime lock."""
    from bcc import BPF
    from vaddr import runtime
    got = _load_hooks()
    bpf, fns = got.bpf, got.fns
    # The tc filter first: a failed attach leaves only it, which the retry
    # replaces and reset removes; a pinned sk_lookup link would block the retry.
    if got.udp_fn is not None:
        from vaddr import shaping
        shaping.attach_udp_ports(*got.udp_fn)
    if got.steer_fn is not None:
        _attach_netns(got.steer_fn)
    for name, text in ((BIND_REFUSAL_FILE, got.refusal), (STEER_FILE, _state(got.no_steer)),
                       (UDP_PORTS_FILE, _state(got.no_udp)), (LOOSE_FILE, _state(got.no_loose)),
                       (MCAST_FILE, _state(got.no_mcast))):
        with open(os.path.join(runtime.RUN_DIR, name), "w") as f:
            f.write(text + "\n")
    parent = cgroups.ensure_parent()
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for fn, attach_type in fns:
            BPF.attach_func(fn, fd, attach_type, BPF_F_ALLOW_MULTI)
        pin(bpf.load_func(b"vaddr_bind4", CGROUP_SOCK_ADDR, attach_type=8), READY_PIN)
    finally:
        os.close(fd)

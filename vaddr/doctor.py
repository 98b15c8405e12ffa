"""`vaddr doctor`: each prerequisite of the eBPF backend, checked, with the fix
for what fails."""
import os
import shutil


class Check:
    def __init__(self, name, ok, detail, fix=None, required=True):
        self.name, self.ok, self.detail, self.fix, self.required = name, ok, detail, fix, required

    def to_dict(self):
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix, "required": self.required}


def _kernel():
    import re
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    ver = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if ver < (5, 15):
        return Check("kernel", False, f"{release}: older than 5.15", "use a 5.15 or newer kernel")
    from vaddr import loader
    refusal = loader.bind_refusal()
    if refusal == "EPERM":
        return Check("kernel", True, f"{release}: no bpf_set_retval, so binds of another vhost's address "
                     "fail with EPERM, not EADDRNOTAVAIL")
    if refusal is None and ver < (5, 18):
        return Check("kernel", True, f"{release}: binds of another vhost's address will likely fail with EPERM, "
                     "not EADDRNOTAVAIL (bpf_set_retval is 5.18+; checked when the hooks load)")
    return Check("kernel", True, release)


def _guard(name, fn, fix, required=True):
    try:
        detail = fn()
        return Check(name, True, detail or "ok", required=required)
    except Exception as e:
        msg = getattr(e, "message", None) or str(e)
        return Check(name, False, msg, getattr(e, "hint", None) or fix, required=required)


def checks():
    from vaddr import bpfsys, cgroups, loader, runtime
    out = [_kernel()]
    out.append(Check("root", os.geteuid() == 0, f"euid {os.geteuid()}",
                     "run vaddr as root (sudo), or use --backend preload"))
    out.append(_guard("cgroup v2", cgroups.mount_point,
                      "mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1"))
    out.append(_guard("bpf()", lambda: bpfsys.probe() or "bpf() system call works",
                      "run as root on a kernel with CONFIG_BPF_SYSCALL=y"))
    out.append(_guard("bpffs", lambda: (runtime.ensure_bpffs(), runtime.BPFFS)[1], "mount -t bpf bpf /sys/fs/bpf"))

    def bcc_version():
        import bcc
        return f"bcc {getattr(bcc, '__version__', '?')}"
    out.append(_guard("bcc", bcc_version, "apt install python3-bpfcc (Debian/Ubuntu) or dnf install python3-bcc, "
                      "and a venv made with --system-site-packages"))

    def headers():
        source, flags = loader.header_flags()
        if source is None:
            return f"/lib/modules/{os.uname().release}/build"
        return source + (" (+ generated headers of its arch tree)" if flags else "")
    # Needed to compile the hooks; once they are loaded, only after a reset.
    out.append(_guard("kernel headers", headers, "apt install linux-headers-amd64", required=not runtime.ready()))
    out.append(Check("setpriv", bool(shutil.which("setpriv")), shutil.which("setpriv") or "missing",
                     "apt install util-linux (needed only for --user)", required=False))
    ipt = shutil.which("iptables-legacy") or shutil.which("iptables")
    out.append(Check("iptables", bool(ipt), ipt or "missing",
                     "apt install iptables (needed only for link --delay, --jitter and --rate)", required=False))
    out.append(_delay())
    from vaddr.backends import preload
    out.append(_guard("LD_PRELOAD shim", preload.shim_path, "make setup, or pip install .", required=False))
    loaded = runtime.ready()
    out.append(Check("hooks loaded", True, "attached and pinned" if loaded else
                     "not yet: the first vaddr spawn compiles and attaches them (~1 s)", required=False))
    out.extend(_kernel_parts())
    out.append(_interface_view())
    out.append(_sizes())
    out.append(Check("vhost limits", True, "; ".join(WHOLE_HOST_LIMITS), required=False))
    out.append(Check("shim limits", True, "; ".join(SHIM_LIMITS), required=False))
    return out


# What a vhost is not, on any kernel (README, "Limits"): said by doctor too.
WHOLE_HOST_LIMITS = (
    "::1 in a vhost is carried over its IPv4 loopback, and IPV6_V6ONLY sockets on ::1 or [::] are reached "
    "at the vhost's ::1 by port rewriting (\"own UDP ports\"), or, for [::] UDP ones in a vhost with IPv6, "
    "at its IPv6 vIP (their server sees a ::1 client there); of an SO_REUSEPORT group on ::1 only the first "
    "socket is reached",
    "Unix socket paths and files are the machine's, shared by all vhosts (a lab's private folders "
    "separate folders); abstract Unix names are a vhost's own where it has its interface view",
    "/sys/class/net, and /proc/net as static programs read it, show the machine's interfaces and sockets; "
    "netlink, getifaddrs, interface ioctls, ss, and /proc/net as dynamically linked programs read it "
    "(netstat, lsof -i, ifconfig, Java) show the vhost's own (see \"interface view\")",
)


LAB_HOSTS_GOAL = 10000


def _delay():
    """Which delay path this kernel gets, and what its queues hold and lost:
    the one chosen when links were first loaded, else the one expected."""
    from vaddr import delaylines, edt
    chosen = edt.recorded()
    why_not = chosen.split(": ", 1)[1] if chosen and chosen != "edt" else (None if chosen else edt.predict())
    if why_not is None:
        detail = (f"in the kernel: departure times (EDT) held by fq on {edt.IFB}, no delay line process"
                  if chosen else "in the kernel (EDT, fq on an ifb device): chosen when links are first loaded")
        stats = edt.stats() if chosen else None
        stats = {0: (stats[0], stats[1], 0)} if stats else None
    else:
        detail = f"{delaylines.describe()}; not in the kernel (EDT): {why_not}"
        stats = delaylines.queue_stats()
    if stats:
        held = sum(s[0] for s in stats.values())
        lost = sum(s[1] + s[2] for s in stats.values())
        detail += f"; running: {held:,} packets held, {lost:,} dropped with a queue full"
    return Check("delay", True, detail, required=False)


def _sizes():
    """The machine's capacity: the pinned maps' sizes, and the descriptors a
    lab's vaddr needs (one pidfd per host; it raises its soft limit to the
    hard one)."""
    import resource
    from vaddr.maps import LIMITS
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else f"{hard:,}"
    sizes = ", ".join(f"{size:,} {what}" for name, (size, what) in LIMITS.items() if name != "loopbacks")
    ok = hard == resource.RLIM_INFINITY or hard >= LAB_HOSTS_GOAL + 64
    return Check("capacity", ok, f"per machine {sizes}; open files: hard limit {hard_text} (a lab holds one per host)",
                 f"raise the hard limit for {LAB_HOSTS_GOAL:,}-host labs: ulimit -Hn 65536 (LimitNOFILE= in a unit)",
                 required=False)


# What an LD_PRELOAD vhost is not, beyond the above (README, "Without root").
SHIM_LIMITS = (
    "a vIP's real 127.x address (and the vhost's own 127.0.0.1) shares its ports with the machine's 0.0.0.0 "
    "listeners: a vhost's bind of a port the machine holds fails",
    "127.0.0.1 reaches a vhost's wildcard listener only where nothing of the vhost's is bound to 127.0.0.1:P "
    "(a vIP-only listener counts as a wildcard one)",
    "a dual-stack [::] socket in a vhost with both families takes the IPv4 vIP only",
    "static and Go executables are refused; raw syscall() and io_uring bypass the shim",
    "links and partitions need the eBPF backend",
)


def _interface_view():
    """The view daemon (vaddr/viewd.py): state from the last start, and whether it runs."""
    from vaddr import views
    state = views.status()
    running = views.daemon_pids()
    procnet = (", and /proc/net files (netstat, lsof, ifconfig; dynamically linked programs)" if views.procview_path()
               else "; /proc/net shows the machine's (vaddr/_procview*.so is not built: run make setup)")
    if state.startswith("off"):
        return Check("interface view", False, f"{state.removeprefix('off: ')}: programs in vhosts see the machine's "
                     "interfaces (getifaddrs, ip addr, Go's net.Interfaces) and sockets (ss), and share its abstract "
                     "Unix socket names", "use Linux 5.9 or newer",
                     required=False)
    if not running:
        why = "started by the first vhost" if not state else f"not running ({views.last_error() or 'ended'})"
        return Check("interface view", True, f"seccomp-notified netlink sockets and interface ioctls, answered from a "
                     f"per-vhost namespace, socket listings (ss){procnet}, and Unix sockets made there (abstract "
                     f"names of the vhost's own); {why}",
                     required=False)
    return Check("interface view", True, f"getifaddrs, ip addr and Go's net.Interfaces in a vhost show lo and eth0 "
                 f"with its addresses, ss its own sockets{procnet}; abstract Unix names are its own "
                 f"(daemon pid {running[0]})", required=False)


# Optional parts of the hooks, each probed when they load (loader.py): the
# check's name, the loader function that reads its state, what it does, what
# a vhost lacks without it, and the fix.
KERNEL_PARTS = (
    ("own ports", "steering", "TCP listeners in vhosts are remapped and steered by sk_lookup: a vhost's port and "
     "the machine's 0.0.0.0 one coexist; the machine's `ss` shows them at their real, ephemeral port",
     "a vhost's TCP port collides with the machine's 0.0.0.0 listener on that port",
     "use a kernel with sk_lookup and sockmap (5.10+)"),
    ("own UDP ports", "udp_ports", "UDP sockets in vhosts hold an ephemeral port that a tc program on lo rewrites: "
     "a vhost's port and the machine's 0.0.0.0 one coexist, and a dual-stack [::] socket answers on both vIPs; "
     "the machine's `ss -u` shows the real port",
     "a vhost's UDP port collides with the machine's 0.0.0.0 socket on that port, and a dual-stack [::] socket "
     "answers on the IPv4 vIP only",
     "use a kernel with cgroup sock_release hooks and socket storage in them (5.10+)"),
    ("multicast", "multicast", "IPv4 multicast between vhosts: joins and sends stay on lo, and a tc program copies "
     "a group's datagram to each member vhost (up to 64 a group), through its links; IPv6 multicast and broadcast "
     "take the machine's routes",
     "a vhost's joins take the machine's routes and no other vhost hears its group datagrams",
     "use a kernel whose verifier takes bounded loops in tc programs, with own UDP ports (5.10+)"),
    ("unbound listen", "loose_listeners", "listen() without bind answers on the vhost's own addresses only",
     "such a listener in a vhost is refused at the vhost's addresses (bind before listen)",
     "use a kernel whose sockops programs may read the cgroup id"),
)


def _kernel_parts():
    from vaddr import loader
    out = []
    for name, reader, does, lacks, fix in KERNEL_PARTS:
        state = getattr(loader, reader)()
        if state is None:
            out.append(Check(name, True, "checked when the hooks load", required=False))
        elif state == "on":
            out.append(Check(name, True, does, required=False))
        else:
            out.append(Check(name, False, f"this kernel refused it ({state.removeprefix('off: ')}): {lacks}", fix,
                             required=False))
    return out

"""The pinned maps that hold per-vhost state: the Python mirror of bpf/vaddr.h.

The loader checks LAYOUT_VERSION and PIN_DIR against the header before it
compiles, so the two cannot drift apart silently."""
import ctypes
import errno
import os
import _socket as socket  # socket's enums cost ms per spawn

from vaddr import bpfsys
from vaddr.errors import VaddrError

LAYOUT_VERSION = 5
PIN_DIR = "/sys/fs/bpf/vaddr"
MAP_NAMES = ("vhosts", "owners", "loopbacks", "lab_nets")

VHOST_HAS_V4 = 1
VHOST_HAS_V6 = 2
VHOST_HOST_LOOPBACK = 4
# Private loopbacks (bpf/loopback.h): 127.127.0.0/16, one per vhost.
LOOPBACK_NET = (127, 127)

_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


class Vhost(ctypes.Structure):
    _fields_ = [("ip4", ctypes.c_uint8 * 4), ("flags", ctypes.c_uint32), ("ip6", ctypes.c_uint8 * 16),
                ("lo4", ctypes.c_uint8 * 4)]


class AddrKey(ctypes.Structure):
    _fields_ = [("ip6", ctypes.c_uint8 * 16)]


class LabPrefix(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip6", ctypes.c_uint8 * 16)]


class LinkKey(ctypes.Structure):
    _fields_ = [("src", ctypes.c_uint8 * 16), ("dst", ctypes.c_uint8 * 16)]


class LinkCfg(ctypes.Structure):
    _fields_ = [("loss", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("delay_us", ctypes.c_uint32),
                ("jitter_us", ctypes.c_uint32), ("rate_bps", ctypes.c_uint64),
                ("duplicate", ctypes.c_uint32), ("corrupt", ctypes.c_uint32)]


class LinkStats(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("dropped", ctypes.c_uint64), ("dropped_bytes", ctypes.c_uint64), ("delayed", ctypes.c_uint64)]


DELAY_MARK = 0x00100000  # VADDR_DELAY_MARK in vaddr.h
DELAY_QUEUE = 30305      # VADDR_DELAY_QUEUE: the first of DELAY_QUEUES_MAX
QUEUE_SHIFT = 22         # VADDR_QUEUE_SHIFT
DELAY_QUEUES_MAX = 4     # VADDR_QUEUES_MAX


LINK_PARTITIONED = 1
LINK_MAP_NAMES = ("links", "link_stats")


def link_key(src, dst):
    return LinkKey(addr_key(src).ip6, addr_key(dst).ip6)


def key_addrs(key):
    """(src, dst) text of a LinkKey."""
    return tuple(_addr_text(bytes(part)) for part in (key.src, key.dst))


def _addr_text(raw):
    if raw[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def addr_key(ip):
    """The owners-map key of an address: IPv4 as v4-mapped IPv6."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip)
    else:
        raw = _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, ip)
    return AddrKey((ctypes.c_uint8 * 16).from_buffer_copy(raw))


def vhost_value(ip4=None, ip6=None, lo4=None, host_loopback=False):
    value = Vhost()
    if lo4:
        value.lo4 = (ctypes.c_uint8 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET, lo4))
    if host_loopback:
        value.flags |= VHOST_HOST_LOOPBACK
    if ip4:
        value.ip4 = (ctypes.c_uint8 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET, ip4))
        value.flags |= VHOST_HAS_V4
    if ip6:
        value.ip6 = (ctypes.c_uint8 * 16).from_buffer_copy(socket.inet_pton(socket.AF_INET6, ip6))
        value.flags |= VHOST_HAS_V6
    return value


class SteerKey(ctypes.Structure):
    _fields_ = [("ip6", ctypes.c_uint8 * 16), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint16)]


def _entries(name, key_type, value_type):
    """[(key, value)] of the pinned map NAME; [] when it is not pinned
    (nothing loaded yet, or a kernel where that part is left out)."""
    try:
        fd = bpfsys.obj_get(os.path.join(PIN_DIR, name))
    except OSError:
        return []
    try:
        out = []
        for key in bpfsys.keys(fd, key_type):
            value = value_type()
            if bpfsys.lookup(fd, key, value):
                out.append((key, value))
        return out
    finally:
        os.close(fd)


def steered_listeners():
    """{(address, port)} of the remapped TCP listeners (bpf/steer.h): `ss`
    shows each at its real, ephemeral port instead."""
    return {(_addr_text(bytes(k.ip6)), k.port) for k, _ in _entries("listeners", SteerKey, ctypes.c_uint64)}


PORT_TO_REAL = 1  # bpf/vaddr.h
PORT_TO_VIRTUAL = 2
PORT_ASKED_ANY = 3


class PortKey(ctypes.Structure):
    _fields_ = [("ip6", ctypes.c_uint8 * 16), ("port", ctypes.c_uint16), ("dir", ctypes.c_uint16)]


def udp_ports():
    """{(address, port): real port} of vhosts' UDP sockets (bpf/udp_ports.h):
    `ss` shows each at its real, ephemeral port instead."""
    return {(_addr_text(bytes(k.ip6)), k.port): real.value
            for k, real in _entries("udp_ports", PortKey, ctypes.c_uint32) if k.dir == PORT_TO_REAL}


class Lo6Key(ctypes.Structure):
    _fields_ = [("cgid", ctypes.c_uint64), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint16),
                ("pad", ctypes.c_uint32)]


class Lo6Val(ctypes.Structure):
    _fields_ = [("cgid", ctypes.c_uint64), ("port", ctypes.c_uint32), ("wild", ctypes.c_uint32)]


def lo6_ports():
    """{(protocol, real port): (vhost cgroup id, port asked, asked [::])} of
    parked IPV6_V6ONLY sockets on ::1 (bpf/lo6.h): `ss` shows each at [::1]:real."""
    return {(k.proto, k.port): (held.cgid, held.port, bool(held.wild))
            for k, held in _entries("lo6_ports", Lo6Key, Lo6Val) if k.cgid == 0}


def ready():
    """True when the runtime's maps are pinned (the programs were loaded)."""
    return all(os.path.exists(os.path.join(PIN_DIR, name)) for name in MAP_NAMES)


# Entries each pinned map holds (bpf/lib.h, bpf/shape.c) and what fills it:
# the machine's limits, stated by the README and vaddr doctor.
LIMITS = {"vhosts": (16384, "vhosts"), "owners": (32768, "vhost addresses"),
          "loopbacks": (16384, "vhosts (one private loopback each)"), "lab_nets": (1024, "lab subnets"),
          "links": (131072, "directed links with settings")}


def update(fds, name, key, value, flags=bpfsys.BPF_ANY):
    """A map update that names the limit when the map is full (the kernel
    says E2BIG) instead of a bare OSError."""
    try:
        bpfsys.update(fds[name], key, value, flags)
    except OSError as e:
        if e.errno != errno.E2BIG:
            raise
        size, what = LIMITS[name]
        raise VaddrError(f"vaddr's {name} map is full: this machine holds {size:,} {what}",
                         "remove some (vaddr rm, vaddr link clear, vaddr net rm), or vaddr reset") from None


class Maps:
    """Open handles on the pinned maps; use as a context manager."""

    def __init__(self):
        self.fds = {}
        try:
            for name in MAP_NAMES:
                self.fds[name] = bpfsys.obj_get(os.path.join(PIN_DIR, name))
        except OSError as e:
            self.close()
            if e.errno == errno.ENOENT and os.path.exists(os.path.join(PIN_DIR, "ready")):
                raise VaddrError("vaddr's BPF maps were made by an older vaddr", "run vaddr reset (as root)")
            if e.errno == errno.ENOENT:
                raise VaddrError("vaddr's BPF maps are not loaded", "run any vaddr spawn as root, or vaddr doctor")
            raise VaddrError(f"cannot open vaddr's BPF maps: {e.strerror}", "run as root")

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_vhost(self, cgid, ip4=None, ip6=None, host_loopback=False):
        """Map entries for a vhost; returns its private loopback address."""
        for ip in (ip4, ip6):
            if ip:
                update(self.fds, "owners", addr_key(ip), ctypes.c_uint64(cgid))
        lo4 = self._claim_loopback(cgid)
        update(self.fds, "vhosts", ctypes.c_uint64(cgid), vhost_value(ip4, ip6, lo4, host_loopback))
        return lo4

    def _claim_loopback(self, cgid):
        """A free address in 127.127.0.0/16, found from the cgroup id so that
        a spawn costs one or two map operations, not a file."""
        a, b = LOOPBACK_NET
        start = (cgid * 2654435761) & 0xFFFF
        for step in range(1 << 16):
            n = (start + step) & 0xFFFF
            if n in (0, 0xFFFF):
                continue
            lo4 = f"{a}.{b}.{n >> 8}.{n & 255}"
            try:
                update(self.fds, "loopbacks", addr_key(lo4), ctypes.c_uint64(cgid), bpfsys.BPF_NOEXIST)
                return lo4
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        raise VaddrError("every private loopback address (127.127.0.0/16) is in use", "vaddr rm some vhosts")

    def loopback_of(self, cgid):
        value = Vhost()
        if not bpfsys.lookup(self.fds["vhosts"], ctypes.c_uint64(cgid), value) or not any(value.lo4):
            return None
        return socket.inet_ntop(socket.AF_INET, bytes(value.lo4))

    def remove_vhost(self, cgid, ips=()):
        # No vhost entry: a spawn killed between claiming a loopback and
        # writing it; only a scan finds the claim (a rare, crash-only path).
        lo4 = self.loopback_of(cgid) or self._loopback_claimed_by(cgid)
        bpfsys.delete(self.fds["vhosts"], ctypes.c_uint64(cgid))
        for fd, ip in [(self.fds["owners"], ip) for ip in ips] + [(self.fds["loopbacks"], lo4)] * bool(lo4):
            key = addr_key(ip)
            owner = ctypes.c_uint64()
            # Only the owner's entry: a new vhost may already hold the address.
            if bpfsys.lookup(fd, key, owner) and owner.value == cgid:
                bpfsys.delete(fd, key)

    def _loopback_claimed_by(self, cgid):
        fd, owner = self.fds["loopbacks"], ctypes.c_uint64()
        for key in bpfsys.keys(fd, AddrKey):
            if bpfsys.lookup(fd, key, owner) and owner.value == cgid:
                return socket.inet_ntop(socket.AF_INET, bytes(key.ip6)[12:])
        return None

    def owner(self, ip):
        owner = ctypes.c_uint64()
        return owner.value if bpfsys.lookup(self.fds["owners"], addr_key(ip), owner) else None

    def vhost_ids(self):
        return [k.value for k in bpfsys.keys(self.fds["vhosts"], ctypes.c_uint64)]

    def add_lab_net(self, prefix):
        update(self.fds, "lab_nets", _lab_prefix(prefix), ctypes.c_uint8(1))

    def remove_lab_net(self, prefix):
        return bpfsys.delete(self.fds["lab_nets"], _lab_prefix(prefix))


def _lab_prefix(prefix):
    ip, _, bits = prefix.partition("/")
    key = addr_key(ip)
    plen = int(bits) + (0 if ":" in ip else 96)
    return LabPrefix(plen, key.ip6)

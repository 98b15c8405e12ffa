"""What `ss` sees inside a vhost: the vhost's own sockets, at the addresses
and ports its programs asked for.

The socket hooks give a vhost a port space of its own by binding its TCP
listeners and UDP sockets to an ephemeral real port R while serving the
port P the program asked for (bpf/steer.h, udp_ports.h, groups.h), and its
127.0.0.1 is a private 127.127.x.y (loopback.h).  The kernel's socket dump
(NETLINK_SOCK_DIAG, what `ss` reads) shows those real facts, and every
socket of the machine besides.  Here a dump is taken for the vhost and
rewritten as a host of its own would answer: only the sockets made in the
vhost's cgroup, each at P and at 127.0.0.1, and the caller's filter
(inet_diag bytecode, which speaks of ports) run on the rewritten sockets
rather than handed to the kernel, which would run it on the real ones.

viewdiag.py serves the system calls; this module only reads maps and
rewrites messages."""
import ctypes
import os
import socket
import struct

from vaddr import bpfsys, cgroups, maps

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP = 1, 2, 0x300
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_REQ_PROTOCOL = 3  # a protocol beyond a byte (IPPROTO_MPTCP, 262: `ss -M`, and plain `ss -a`)
INET_DIAG_MARK = 15
INET_DIAG_CGROUP_ID = 21
TCP_LISTEN = 10
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
REQ = struct.Struct("=BBBxI48s")  # family, protocol, ext, states, inet_diag_sockid
ATTR = struct.Struct("=HH")
# In an inet_diag_msg: family, state, timer, retrans, then the sockid.
SPORT, SRC, DST, COOKIE, ATTRS = 4, 8, 24, 44, 72
DATAGRAM_MAX = 32768  # what the kernel packs into one reply datagram
V4_MAPPED = b"\0" * 10 + b"\xff\xff"
LOCALHOST = {socket.AF_INET: socket.inet_pton(socket.AF_INET, "127.0.0.1"), socket.AF_INET6: b"\0" * 15 + b"\1"}
WILDCARD = {socket.AF_INET: b"\0" * 4, socket.AF_INET6: b"\0" * 16}


def _align(n):
    return (n + 3) & ~3


def attrs(raw, start):
    """{type: payload} of the netlink attributes from start on."""
    out = {}
    while start + ATTR.size <= len(raw):
        length, kind = ATTR.unpack_from(raw, start)
        if length < ATTR.size:
            break
        out[kind & 0x3FFF] = raw[start + ATTR.size:start + length]
        start += _align(length)
    return out


def parse_requests(data):
    """[(seq, family, protocol, ext, states, bytecode)] of the inet socket
    dumps in data, or None if any message is something else (other
    families, single-socket lookups, SOCK_DESTROY): the kernel answers those."""
    out, at = [], 0
    while at + NLMSG.size <= len(data):
        length, kind, flags, seq, _pid = NLMSG.unpack_from(data, at)
        if length < NLMSG.size + REQ.size or at + length > len(data):
            return None
        if kind != SOCK_DIAG_BY_FAMILY or (flags & NLM_F_DUMP) != NLM_F_DUMP:
            return None
        family, protocol, ext, states, _sockid = REQ.unpack_from(data, at + NLMSG.size)
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None
        extra = attrs(data[:at + length], at + NLMSG.size + REQ.size)
        if INET_DIAG_REQ_PROTOCOL in extra:
            protocol = struct.unpack_from("=I", extra[INET_DIAG_REQ_PROTOCOL])[0]
        out.append((seq, family, protocol, ext, states, extra.get(INET_DIAG_REQ_BYTECODE)))
        at += _align(length)
    return out or None


class Vhost:
    """The facts a rewrite needs, read once per dump."""

    def __init__(self, cgid):
        self.cgids = _cgroup_family(cgid)
        value = maps.Vhost()
        fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "vhosts"))
        try:
            bpfsys.lookup(fd, ctypes.c_uint64(cgid), value)
        finally:
            os.close(fd)
        self.lo4 = bytes(value.lo4) if any(value.lo4) else None
        mine = {V4_MAPPED + self.lo4} if self.lo4 else set()
        if value.flags & maps.VHOST_HAS_V4:
            mine.add(V4_MAPPED + bytes(value.ip4))
        if value.flags & maps.VHOST_HAS_V6:
            mine.add(bytes(value.ip6))
        self.addrs = mine
        self.listeners = _listeners(mine)  # cookie -> (port, {addresses it answers on})
        self.udp = _PortPairs()
        # (protocol, real port) -> (port asked, asked [::]) of its parked ::1 sockets (bpf/lo6.h)
        self.lo6 = {key: (asked, wild) for key, (owner, asked, wild) in maps.lo6_ports().items()
                    if owner in self.cgids}

    def is_loopback(self, raw):
        return self.lo4 is not None and raw[-4:] == self.lo4 and (len(raw) == 4 or raw[:12] == V4_MAPPED)

    def rewrite(self, msg, protocol):
        """The inet_diag_msg as the vhost sees it, or None if not its own."""
        family = msg[0]
        size = 4 if family == socket.AF_INET else 16
        cgid = attrs(msg, ATTRS).get(INET_DIAG_CGROUP_ID)
        src, dst = bytes(msg[SRC:SRC + size]), bytes(msg[DST:DST + size])
        if cgid is not None:
            if struct.unpack("=Q", cgid)[0] not in self.cgids:
                return None
        elif _mapped(src) not in self.addrs:  # kernels before 5.7: judge by address
            return None
        out = bytearray(msg)
        sport, dport = struct.unpack_from("!HH", msg, SPORT)
        listener = self.listeners.get(struct.unpack_from("=Q", msg, COOKIE)[0])
        parked = family == socket.AF_INET6 and src == LOCALHOST[family] and self.lo6.get((protocol, sport))
        if parked:  # an IPV6_V6ONLY socket held at [::1]:R for the vhost's ::1:P
            sport, wild = parked
            src = WILDCARD[family] if wild else src
        elif protocol == socket.IPPROTO_TCP and msg[1] == TCP_LISTEN and listener:
            sport, answers = listener
            if len(answers) > 1 and any(self.is_loopback(a) for a in answers):
                src = WILDCARD[family]  # filed under 127.0.0.1 and a vIP: it was bound to the wildcard
        elif protocol == socket.IPPROTO_UDP:
            asked_any = self.udp.asked_any(src, sport)
            sport = self.udp.virtual(src, sport)
            dport = self.udp.virtual(dst, dport)
            src = WILDCARD[family] if asked_any else src
        if family == socket.AF_INET6 and dst == LOCALHOST[family] and (protocol, dport) in self.lo6:
            dport = self.lo6[(protocol, dport)][0]  # a client of such a socket
        src, dst = (LOCALHOST[family] if self.is_loopback(a) else a for a in (src, dst))
        struct.pack_into("!HH", out, SPORT, sport, dport)
        out[SRC:SRC + size], out[DST:DST + size] = src, dst
        return out


def _mapped(raw):
    return V4_MAPPED + raw if len(raw) == 4 else raw


def _cgroup_family(cgid):
    """cgid and the ids of the cgroups below it (programs may make some)."""
    parent = cgroups.parent_path()
    try:
        names = os.listdir(parent)
    except OSError:
        return {cgid}
    for name in names:
        top = os.path.join(parent, name)
        try:
            if os.stat(top).st_ino != cgid:
                continue
        except OSError:
            continue
        return {os.stat(d).st_ino for d, _subdirs, _files in os.walk(top)} | {cgid}
    return {cgid}


def _listeners(addrs):
    """{cookie: (port, {addresses})} of the vhost's remapped TCP listeners,
    read from the sockhash the sk_lookup program steers with."""
    out = {}
    try:
        fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "listeners"))
    except OSError:
        return out
    try:
        for key in bpfsys.keys(fd, maps.SteerKey):
            addr = bytes(key.ip6)
            cookie = ctypes.c_uint64()
            if addr in addrs and bpfsys.lookup(fd, key, cookie):
                out.setdefault(cookie.value, (key.port, set()))[1].add(addr)
    finally:
        os.close(fd)
    return out


class _PortPairs:
    """The udp_ports map's way back: (address, real port) -> the port asked for."""

    def __init__(self):
        try:
            self.fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "udp_ports"))
        except OSError:
            self.fd = None

    def _lookup(self, addr, port, direction):
        if self.fd is None or port == 0:
            return None
        key = maps.PortKey((ctypes.c_uint8 * 16).from_buffer_copy(_mapped(addr)), port, direction)
        asked = ctypes.c_uint32()
        return asked.value if bpfsys.lookup(self.fd, key, asked) else None

    def virtual(self, addr, port):
        asked = self._lookup(addr, port, maps.PORT_TO_VIRTUAL)
        return port if asked is None else asked

    def asked_any(self, addr, port):
        """Was the socket at (addr, real port) bound to 0.0.0.0 (bpf/udp_ports.h)?"""
        return self._lookup(addr, port, maps.PORT_ASKED_ANY) is not None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# inet_diag bytecode (net/ipv4/inet_diag.c, inet_diag_bc_run): ops of
# {code, yes, no}; a test that passes moves on by yes bytes, else by no.
NOP, JMP, S_GE, S_LE, D_GE, D_LE, AUTO, S_COND, D_COND, DEV_COND, MARK_COND, S_EQ, D_EQ, CGROUP_COND = range(14)
OP = struct.Struct("=BBH")


def _prefix_match(addr, want, bits):
    whole, rest = divmod(bits, 8)
    if addr[:whole] != want[:whole]:
        return False
    if rest == 0:
        return True
    mask = (0xFF << (8 - rest)) & 0xFF
    return (addr[whole] & mask) == (want[whole] & mask)


def _host_cond(code, at, entry):
    family, prefix, port = struct.unpack_from("=BBxxi", code, at + OP.size)
    addr = entry["src" if code[at] == S_COND else "dst"]
    if port != -1 and port != entry["sport" if code[at] == S_COND else "dport"]:
        return False
    if prefix == 0:
        return True
    want = code[at + OP.size + 8:]
    if family not in (socket.AF_UNSPEC, entry["family"]):
        return (entry["family"] == socket.AF_INET6 and family == socket.AF_INET and addr[:12] == V4_MAPPED
                and _prefix_match(addr[12:], want, prefix))
    return _prefix_match(addr, want, prefix)


def _passes(code, at, entry):
    """Whether the test at offset at holds for entry."""
    op = code[at]
    arg = OP.unpack_from(code, at + OP.size)[2] if at + 2 * OP.size <= len(code) else 0
    if op in (S_GE, S_LE, S_EQ, D_GE, D_LE, D_EQ):
        port = entry["sport" if op in (S_GE, S_LE, S_EQ) else "dport"]
        return port >= arg if op in (S_GE, D_GE) else port <= arg if op in (S_LE, D_LE) else port == arg
    if op in (S_COND, D_COND):
        return _host_cond(code, at, entry)
    if op == DEV_COND:
        return struct.unpack_from("=I", code, at + OP.size)[0] == entry["ifindex"]
    if op == MARK_COND:
        mark, mask = struct.unpack_from("=II", code, at + OP.size)
        return entry["mark"] & mask == mark
    if op == CGROUP_COND:
        return struct.unpack_from("=Q", code, at + OP.size)[0] == entry["cgroup"]
    # NOP passes; JMP fails; AUTO asks for userlocks, which a dump does not
    # show: the port is taken as chosen by the program.
    return op in (NOP, AUTO)


def bytecode_passes(code, entry):
    """True when the filter accepts entry (family, sport, dport, src, dst,
    ifindex, mark, cgroup)."""
    at = 0
    while at < len(code):
        _op, yes, no = OP.unpack_from(code, at)
        step = yes if _passes(code, at, entry) else no
        if step <= 0:
            return False  # the kernel refuses such code; so do we
        at += step
    return at == len(code)


def fields(msg):
    """What a filter may test of an inet_diag_msg (bytecode_passes's entry)."""
    family = msg[0]
    size = 4 if family == socket.AF_INET else 16
    extra = attrs(msg, ATTRS)
    sport, dport = struct.unpack_from("!HH", msg, SPORT)
    return {"family": family, "sport": sport, "dport": dport, "src": bytes(msg[SRC:SRC + size]),
            "dst": bytes(msg[DST:DST + size]), "ifindex": struct.unpack_from("=I", msg, 40)[0],
            "mark": struct.unpack("=I", extra[INET_DIAG_MARK])[0] if INET_DIAG_MARK in extra else 0,
            "cgroup": struct.unpack("=Q", extra[INET_DIAG_CGROUP_ID])[0] if INET_DIAG_CGROUP_ID in extra else 0}


def kernel_dump(diag, family, protocol, ext, states):
    """Every socket of one family and protocol, from the kernel, unfiltered."""
    body = REQ.pack(family, protocol & 0xFF, ext, states, b"\0" * 48)
    if protocol > 0xFF:
        body += ATTR.pack(ATTR.size + 4, INET_DIAG_REQ_PROTOCOL) + struct.pack("=I", protocol)
    diag.send(NLMSG.pack(NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
    out = []
    while True:
        data = diag.recv(1 << 16)
        at = 0
        while at + NLMSG.size <= len(data):
            length, kind = NLMSG.unpack_from(data, at)[:2]
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, at + NLMSG.size)[0]
                raise OSError(err, os.strerror(err))
            out.append(data[at + NLMSG.size:at + length])
            at += _align(length)


def answer(diag, cgid, requests, portid):
    """The datagrams a host of the vhost's own would send back."""
    vhost = Vhost(cgid)
    try:
        datagrams = []
        for seq, family, protocol, ext, states, code in requests:
            current = b""
            for msg in kernel_dump(diag, family, protocol, ext, states):
                mine = vhost.rewrite(msg, protocol)
                if mine is None or (code and not bytecode_passes(code, fields(mine))):
                    continue
                part = NLMSG.pack(NLMSG.size + len(mine), SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, seq, portid) + mine
                part += b"\0" * (_align(len(part)) - len(part))
                if len(current) + len(part) > DATAGRAM_MAX:
                    datagrams.append(current)
                    current = b""
                current += part
            done = NLMSG.pack(NLMSG.size + 4, NLMSG_DONE, NLM_F_MULTI, seq, portid) + b"\0" * 4
            datagrams.extend([current + done] if current else [done])
        return datagrams
    finally:
        vhost.udp.close()

"""/proc/net files in a vhost's view: what the view daemon hands a program in
a vhost that opens one (preload/procview.c routes those opens to it).

Files about interfaces and routes (`ifconfig`'s /proc/net/dev, `route`'s
/proc/net/route, the IPv6 addresses that Java's NetworkInterface reads from
/proc/net/if_inet6) are the view namespace's own, opened there: `lo` and an
`eth0` with the vhost's addresses (viewns); so is /proc/net/unix, since the
vhost's Unix sockets are made there (viewd).  The socket tables that
`netstat` and `lsof -i` read are written here from the vhost's own socket
listing (sockview: its sockets only, at the ports and addresses its
programs asked for), in the kernel's own layout (net/ipv4/tcp_ipv4.c
get_tcp4_sock, net/ipv4/udp.c udp4_format_sock, and their IPv6 twins), so
that every parser written for the kernel's reads them unchanged.  Fields
no listing carries are written as an unprivileged reader of the kernel's
file sees them: the kernel pointer as zeros, reference counts as 1 (TCP)
and 2 (UDP)."""
import re
import socket
import struct

from vaddr import sockview

# preload/procview.c keeps the same list: the opens it routes here.
FROM_VIEW = ("dev", "if_inet6", "route", "ipv6_route", "unix")
TABLES = {"tcp": (socket.AF_INET, socket.IPPROTO_TCP), "tcp6": (socket.AF_INET6, socket.IPPROTO_TCP),
          "udp": (socket.AF_INET, socket.IPPROTO_UDP), "udp6": (socket.AF_INET6, socket.IPPROTO_UDP)}
SERVED = FROM_VIEW + tuple(TABLES)
_PATH = re.compile(r"/proc/(?:net|self/net|thread-self/net|(\d+)/net)/([a-z0-9_]+)")

TCP4_HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
TCP6_HEAD = ("  sl  local_address                         remote_address                        st tx_queue "
             "rx_queue tr tm->when retrnsmt   uid  timeout inode")
UDP4_HEAD = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode "
             "ref pointer drops")
UDP6_HEAD = TCP6_HEAD + " ref pointer drops"
# The IPv4 tables pad each line to a fixed width (seq_pad), the IPv6 ones do not.
WIDTH = {"tcp": 149, "udp": 127, "tcp6": 0, "udp6": 0}
HEAD = {"tcp": TCP4_HEAD, "tcp6": TCP6_HEAD, "udp": UDP4_HEAD, "udp6": UDP6_HEAD}

INET_DIAG_INFO, INET_DIAG_SKMEMINFO = 2, 8
SK_MEMINFO_DROPS = 8
TCP_ESTABLISHED, TCP_SYN_RECV, TCP_TIME_WAIT, TCP_LISTEN = 1, 3, 6, 10
# Every state /proc/net lists (ESTABLISHED..NEW_SYN_RECV), not the bound-only
# sockets newer kernels dump on request.
STATES = 0x1FFE
NO_POINTER = "0" * 16
USER_HZ = 100  # clock_t, in which /proc/net gives times
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF
# inet_diag_msg after the sockid: expires (ms), rqueue, wqueue, uid, inode.
MSG_TAIL = struct.Struct("=IIIII")
TAIL_AT = 52


def served(path):
    """(name, pid) for a path that opens a /proc/net file the view serves;
    pid is the one the path names, or None for self.  None otherwise."""
    m = _PATH.fullmatch(path)
    if not m or m.group(2) not in SERVED:
        return None
    return m.group(2), int(m.group(1)) if m.group(1) else None


def _hex_addr(raw):
    """The kernel's %08X of each 32-bit word, as it lies in memory."""
    return "".join(f"{w:08X}" for w in struct.unpack(f"={len(raw) // 4}I", raw))


def _ticks(ms):
    return max(ms, 0) * USER_HZ // 1000


def _tcp_line(i, f, msg, extra):
    info = extra.get(INET_DIAG_INFO, b"")
    state = msg[1]
    expires, rqueue, wqueue, uid, inode = MSG_TAIL.unpack_from(msg, TAIL_AT)
    ends = f"{i:4d}: {_hex_addr(f['src'])}:{f['sport']:04X} {_hex_addr(f['dst'])}:{f['dport']:04X} {state:02X}"
    if state == TCP_TIME_WAIT:
        return f"{ends} 00000000:00000000 03:{_ticks(expires):08X} 00000000 {0:5d} {0:8d} 0 1 {NO_POINTER}"
    if state == TCP_SYN_RECV:
        return (f"{ends} 00000000:00000000 01:{_ticks(expires):08X} {msg[3]:08X} {uid:5d} {0:8d} 0 0 "
                f"{NO_POINTER}")
    retransmits = probes = 0
    rto = ato = cwnd = 0
    ssthresh = -1
    if len(info) >= 84:  # struct tcp_info up to tcpi_snd_cwnd
        retransmits, probes = info[2], info[3]
        rto_us, ato_us = struct.unpack_from("=II", info, 8)
        rto, ato = rto_us * USER_HZ // 1000000, ato_us * USER_HZ // 1000000
        threshold, cwnd = struct.unpack_from("=II", info, 76)
        ssthresh = -1 if threshold >= TCP_INFINITE_SSTHRESH else threshold
    timer = msg[2]
    if state == TCP_LISTEN:
        wqueue, ssthresh = 0, 0  # rqueue is its backlog, as the kernel shows it
    return (f"{ends} {wqueue:08X}:{rqueue:08X} {timer:02X}:{_ticks(expires) if timer else 0:08X} "
            f"{retransmits:08X} {uid:5d} {probes:8d} {inode} 1 {NO_POINTER} {rto} {ato} 0 {cwnd} {ssthresh}")


def _udp_line(i, f, msg, extra):
    _expires, rqueue, wqueue, uid, inode = MSG_TAIL.unpack_from(msg, TAIL_AT)
    meminfo = extra.get(INET_DIAG_SKMEMINFO, b"")
    drops = struct.unpack_from("=I", meminfo, 4 * SK_MEMINFO_DROPS)[0] if len(meminfo) >= 36 else 0
    return (f"{i:5d}: {_hex_addr(f['src'])}:{f['sport']:04X} {_hex_addr(f['dst'])}:{f['dport']:04X} "
            f"{msg[1]:02X} {wqueue:08X}:{rqueue:08X} 00:00000000 00000000 {uid:5d} {0:8d} {inode} 2 "
            f"{NO_POINTER} {drops}")


def table(diag, cgid, name):
    """The text of /proc/net/NAME (tcp, tcp6, udp, udp6) for the vhost."""
    family, protocol = TABLES[name]
    ext = 1 << ((INET_DIAG_INFO if protocol == socket.IPPROTO_TCP else INET_DIAG_SKMEMINFO) - 1)
    vhost = sockview.Vhost(cgid)
    try:
        mine = [vhost.rewrite(msg, protocol) for msg in sockview.kernel_dump(diag, family, protocol, ext, STATES)]
    finally:
        vhost.udp.close()
    line = _tcp_line if protocol == socket.IPPROTO_TCP else _udp_line
    width = WIDTH[name]
    rows = [HEAD[name]] + [line(i, sockview.fields(msg), msg, sockview.attrs(msg, sockview.ATTRS))
                           for i, msg in enumerate(m for m in mine if m is not None)]
    return "".join(row.ljust(width) + "\n" for row in rows)

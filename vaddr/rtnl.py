"""One IPv4 route, added or deleted with one rtnetlink message through the
standard library: the spawn of a vhost whose address needs a route of its
own must not pay pyroute2's import (~140 ms) twice, at start and at exit.
Everything else about routes goes through pyroute2 (routes.py)."""
import os
import socket
import struct

RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
RTA_DST, RTA_OIF, RTA_PREFSRC, RTA_TABLE = 1, 4, 7, 15
RTN_LOCAL, RT_SCOPE_HOST, RT_TABLE_LOCAL = 2, 254, 255


def _attr(kind, payload):
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _request(kind, flags, body):
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.sendto(struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body, (0, 0))
        reply = s.recv(65536)
    _, rtype, _, _, _ = struct.unpack_from("=IHHII", reply)
    if rtype == NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(err, os.strerror(err))


def local_route4(op, ip, proto, prefsrc=None):
    """op "add" or "del": `ip route OP local IP/32 dev lo table local scope
    host proto PROTO [src PREFSRC]`."""
    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, RT_TABLE_LOCAL, proto, RT_SCOPE_HOST, RTN_LOCAL, 0)
    attrs = (_attr(RTA_DST, socket.inet_aton(ip)) + _attr(RTA_OIF, struct.pack("=I", socket.if_nametoindex("lo")))
             + _attr(RTA_TABLE, struct.pack("=I", RT_TABLE_LOCAL)))
    if prefsrc:
        attrs += _attr(RTA_PREFSRC, socket.inet_aton(prefsrc))
    if op == "add":
        _request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, rtmsg + attrs)
    else:
        _request(RTM_DELROUTE, 0, rtmsg + attrs)

"""The socket filters `ss` sends (inet_diag bytecode) are run by vaddr on the
listing a vhost sees, since the kernel would run them on the real ports.
The kernel is the judge of what they mean: each filter here goes to the
kernel and to vaddr's interpreter over the same sockets, and both must keep
the same ones."""
import socket
import struct

import pytest

from vaddr import sockview

pytestmark = pytest.mark.kernel

BASE = 7180  # the ports of this test's sockets: BASE .. BASE+4


def op(code, yes, no):
    return struct.pack("=BBH", code, yes, no)


def program(*tests):
    """AND of tests, each (kind, args), compiled as ss compiles them: a
    passing test moves on, a failing one jumps 4 bytes past the end, which
    the kernel counts as a rejection; "not X" is X followed by a JMP op."""
    bodies = []
    for kind, *args in tests:
        body = _test(kind, *args)
        bodies.append((body, kind.startswith("not ")))
    total = sum(len(body) + 4 * negate for body, negate in bodies)
    out = b""
    for body, negate in bodies:
        if negate:  # failing: skip the JMP and go on; passing: the JMP rejects
            out += struct.pack("=BBH", body[0], len(body), len(body) + 4) + body[4:]
            out += op(1, 4, total - len(out) + 4)
        else:
            out += struct.pack("=BBH", body[0], len(body), total - len(out) + 4) + body[4:]
    return out


def _test(kind, *args):
    code = {"S_GE": 2, "S_LE": 3, "D_GE": 4, "D_LE": 5, "S_COND": 7, "D_COND": 8, "S_EQ": 11, "D_EQ": 12}[
        kind.replace("not ", "")]
    if code in (7, 8):
        family, prefix, port, addr = args
        raw = socket.inet_pton(family, addr)
        return op(code, 0, 0) + struct.pack("=BBxxi", family, prefix, port) + raw
    return op(code, 0, 0) + op(0, 0, args[0])


def kernel_filtered(family, code):
    """The cookies of sockets the kernel's own run of code keeps."""
    diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
    try:
        body = sockview.REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF, b"\0" * 48)
        body += struct.pack("=HH", 4 + len(code), sockview.INET_DIAG_REQ_BYTECODE) + code
        diag.send(sockview.NLMSG.pack(16 + len(body), sockview.SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + body)
        out = set()
        while True:
            data, at = diag.recv(1 << 16), 0
            while at < len(data):
                length, kind = sockview.NLMSG.unpack_from(data, at)[:2]
                if kind == sockview.NLMSG_DONE:
                    return out
                assert kind != sockview.NLMSG_ERROR, f"the kernel refused the filter: {data[at + 16:at + 20]!r}"
                out.add(_ours(data[at + 16:at + length]))
                at += (length + 3) & ~3
    finally:
        diag.close()


def _ours(msg):
    entry = sockview.fields(msg)
    if BASE <= entry["sport"] <= BASE + 4 or BASE <= entry["dport"] <= BASE + 4:
        return struct.unpack_from("=Q", msg, sockview.COOKIE)[0]
    return None


def vaddr_filtered(family, code):
    diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
    try:
        msgs = sockview.kernel_dump(diag, family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
    finally:
        diag.close()
    return {_ours(m) for m in msgs if sockview.bytecode_passes(code, sockview.fields(m))}


@pytest.fixture(scope="module")
def sockets():
    made = []
    for family, host, port in [(socket.AF_INET, "127.0.0.1", BASE), (socket.AF_INET, "127.0.0.2", BASE + 1),
                               (socket.AF_INET, "127.0.0.3", BASE + 2), (socket.AF_INET6, "::1", BASE + 3),
                               (socket.AF_INET6, "::", BASE + 4)]:
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen()
        made.append(s)
    made.append(socket.create_connection(("127.0.0.1", BASE)))
    made.append(socket.create_connection(("127.0.0.2", BASE + 4)))  # v4-mapped at the dual-stack listener
    made.append(socket.create_connection(("::1", BASE + 3)))
    yield made
    for s in made:
        s.close()


FILTERS = {
    "source port range": [("S_GE", BASE + 1), ("S_LE", BASE + 3)],
    "source port equal": [("S_EQ", BASE + 2)],
    "not that port": [("S_GE", BASE), ("not S_EQ", BASE + 1)],
    "destination port": [("D_GE", BASE), ("D_LE", BASE + 4)],
    "source prefix": [("S_COND", socket.AF_INET, 31, -1, "127.0.0.2")],
    "source address and port": [("S_COND", socket.AF_INET, 32, BASE, "127.0.0.1")],
    "destination prefix and port": [("D_COND", socket.AF_INET, 8, BASE + 4, "127.0.0.0")],
    "IPv6 source": [("S_COND", socket.AF_INET6, 128, -1, "::1")],
    "no prefix, a port": [("S_COND", socket.AF_INET6, 0, BASE + 3, "::")],
}


@pytest.mark.parametrize("name", FILTERS)
def test_vaddr_keeps_the_sockets_the_kernels_filter_keeps(sockets, name):
    code = program(*FILTERS[name])
    kept = {family: kernel_filtered(family, code) - {None} for family in (socket.AF_INET, socket.AF_INET6)}
    assert any(kept.values()), "the filter should keep some of the test's sockets"
    for family in kept:
        assert vaddr_filtered(family, code) - {None} == kept[family], f"family {family}"

"""0.0.0.0 and [::] as destinations name "this host": the kernel sends a
connection or datagram there to 127.0.0.1 (::1).  In a vhost that is the
vhost's own loopback, never the machine's.  etcd's gRPC gateway dials its
own listen address, 0.0.0.0:2379, and so do other servers that reuse a
listen address as a dial one."""
import errno
import os
import socket

import pytest

from tests.lab import run_py, start_py, wait_fact

SERVE = """
    kind, family = socket.SOCK_{kind}, socket.AF_INET6 if ":" in "{bind}" else socket.AF_INET
    s = socket.socket(family, kind); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack, as Node and Python bind [::]
    s.bind(("{bind}", {port}))
    if kind == socket.SOCK_STREAM:
        s.listen()
    fact(ready=1)
    while True:
        if kind == socket.SOCK_STREAM:
            c, peer = s.accept(); c.sendall(json.dumps([os.environ["WHO"], peer[0]]).encode()); c.close()
        else:
            data, peer = s.recvfrom(100); s.sendto(json.dumps([os.environ["WHO"], peer[0]]).encode(), peer)
"""

ASK = """
    family, kind = socket.{family}, socket.SOCK_{kind}
    c = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            c.connect(("{dst}", {port})); got = c.recv(200)
        else:
            c.settimeout(3); c.sendto(b"?", ("{dst}", {port})); got = c.recv(200)
        fact(got=json.loads(got))
    except OSError as e:
        fact(errno=e.errno)
"""

# (destination, client family, server binds): [::] is ::1, which a server
# on [::] answers and one on 127.0.0.1 does not, on any host.
DESTINATIONS = [("0.0.0.0", "AF_INET", "0.0.0.0"), ("0.0.0.0", "AF_INET", "127.0.0.1"), ("::", "AF_INET6", "::")]


def _ask(ip, backend, dst, family, kind, port):
    code, facts, err = run_py(ASK.format(dst=dst, family=family, kind=kind, port=port), ip=ip, backend=backend)
    assert code == 0 and facts, err
    return facts[0]


@pytest.mark.own_loopback
@pytest.mark.parametrize("dst,family,bind", DESTINATIONS, ids=["0.0.0.0", "0.0.0.0-to-localhost", "[::]"])
def test_a_connection_to_the_unspecified_address_reaches_the_vhosts_own_server(backend, vips, reap, dst,
                                                                                 family, bind):
    """Two vhosts and the machine each serve the port: each vhost's client
    reaches its own server, which sees it at 127.0.0.1, as on a host."""
    ips, port = [vips(), vips()], 7160
    for ip in ips:
        wait_fact(reap(start_py(SERVE.format(kind="STREAM", bind=bind, port=port), ip=ip, backend=backend,
                                env=dict(os.environ, WHO=ip))))
    for ip in ips:
        got = _ask(ip, backend, dst, family, "STREAM", port)["got"]
        assert got[0] == ip and got[1] in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


@pytest.mark.own_loopback
def test_a_datagram_to_0_0_0_0_reaches_the_vhosts_own_server(backend, vips, reap):
    ip, port = vips(), 7161
    wait_fact(reap(start_py(SERVE.format(kind="DGRAM", bind="127.0.0.1", port=port), ip=ip, backend=backend,
                            env=dict(os.environ, WHO=ip))))
    assert _ask(ip, backend, "0.0.0.0", "AF_INET", "DGRAM", port) == {"got": [ip, "127.0.0.1"]}


# The machine's listener where a real kernel would send each destination:
# [::] is ::1, which an IPv4 socket never hears (a case that could not fail).
MACHINE = [("0.0.0.0", "AF_INET", "127.0.0.1"), ("0.0.0.0", "AF_INET", "0.0.0.0"), ("::", "AF_INET6", "::1"),
           ("::", "AF_INET6", "::")]


@pytest.mark.own_loopback
@pytest.mark.parametrize("dst,family,machine_bind", MACHINE, ids=["0.0.0.0-lo", "0.0.0.0-any", "[::]-lo", "[::]-any"])
def test_the_unspecified_address_never_reaches_the_machines_listener(backend, vips, dst, family, machine_bind):
    """The machine's etcd on 127.0.0.1:2379 must not answer a vhost's etcd
    gateway: with nothing of the vhost's on the port, the connection is refused."""
    machine = socket.socket(socket.AF_INET6 if ":" in machine_bind else socket.AF_INET)
    with machine:
        machine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if machine.family == socket.AF_INET6:
            machine.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        machine.bind((machine_bind, 0))
        machine.listen()
        got = _ask(vips(), backend, dst, family, "STREAM", machine.getsockname()[1])
    assert got == {"errno": errno.ECONNREFUSED}

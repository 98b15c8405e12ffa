"""::1 inside a vhost for IPV6_V6ONLY servers (bpf/lo6.h): PostgreSQL and
named bind ::1 so, nginx's default site `listen [::]:80`.  Parked on the
machine's [::1] at another port, each is still reached at ::1 by its own
vhost's clients only, both ends seeing ::1 and the port asked for."""
import errno
import json
import os
import socket
import subprocess

import pytest

import vaddr

from tests.conftest import need
from tests.lab import communicate, py_argv, run_in, run_py, start_py, wait_fact

pytestmark = pytest.mark.own_loopback

V6ONLY_SERVER = """
    kind = socket.SOCK_{kind}
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("{bind}", {port}))
    if kind == socket.SOCK_STREAM:
        s.listen(); fact(ready=s.getsockname()[:2])
        while True:
            c, peer = s.accept()
            c.sendall(json.dumps([os.environ["WHO"], peer[0], c.getsockname()[:2]]).encode()); c.close()
    else:
        fact(ready=s.getsockname()[:2])
        while True:
            data, peer = s.recvfrom(100); s.sendto(json.dumps([os.environ["WHO"], peer[0]]).encode(), peer)
"""

CLIENT = """
    kind = socket.SOCK_{kind}
    c = socket.socket(socket.AF_INET6, kind)
    if {v6only}:
        c.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    c.settimeout(3)
    try:
        if kind == socket.SOCK_STREAM:
            c.connect(("::1", {port}))
            fact(got=json.loads(c.recv(200)), peer=c.getpeername()[:2])
        else:
            c.sendto(b"?", ("::1", {port})); reply, frm = c.recvfrom(200)  # unconnected
            d = socket.socket(socket.AF_INET6, kind); d.settimeout(3)
            d.connect(("::1", {port})); d.send(b"?"); again = d.recv(200)  # and connected
            fact(got=json.loads(reply), peer=frm[:2], connected=[json.loads(again), d.getpeername()[:2]])
    except OSError as e:
        fact(errno=e.errno)
"""


def _server(reap, ip, kind, bind, port, backend):
    server = reap(start_py(V6ONLY_SERVER.format(kind=kind, bind=bind, port=port), ip=ip, backend=backend,
                           env=dict(os.environ, WHO=ip if isinstance(ip, str) else ip[0])))
    return wait_fact(server)["ready"]


def _client(ip, kind, port, backend, v6only=True):
    code, facts, err = run_py(CLIENT.format(kind=kind, port=port, v6only=v6only), ip=ip, backend=backend)
    assert code == 0, err
    return facts[0]


@pytest.fixture
def machine_lo6():
    """machine_lo6(kind, port): the machine's own socket on [::1]:port, outside any vhost."""
    made = []

    def make(kind, port):
        s = socket.socket(socket.AF_INET6, getattr(socket, f"SOCK_{kind}"))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1", port))
        if kind == "STREAM":
            s.listen()
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("kind", ["STREAM", "DGRAM"], ids=["tcp", "udp"])
@pytest.mark.parametrize("bind", ["::1", "::"], ids=["on-1", "on-wildcard"])
def test_an_ipv6_only_server_answers_its_own_vhost_at_1(backend, vips, reap, machine_lo6, kind, bind):
    """Two IPv4-only vhosts each run an IPV6_V6ONLY server on ::1:7090 (or
    [::]:7091, which on a host without IPv6 addresses answers ::1 only), and
    the machine holds [::1]:7090 too: a client in each vhost reaches its own,
    TCP, UDP sent and UDP connected, and each end sees ::1:7090."""
    port = 7090 + 10 * (kind == "DGRAM") + (bind == "::")  # none left in TIME_WAIT by another case
    mine = machine_lo6(kind, port)
    ips = [vips(), vips()]
    for ip in ips:
        assert _server(reap, ip, kind, bind, port, backend) == [bind, port]  # getsockname, as asked
    for ip in ips:
        got = _client(ip, kind, port, backend)
        if kind == "STREAM":
            assert got == {"got": [ip, "::1", ["::1", port]], "peer": ["::1", port]}
        else:
            assert got == {"got": [ip, "::1"], "peer": ["::1", port], "connected": [[ip, "::1"], ["::1", port]]}
    # The machine's own [::1]:7090 is still the machine's.
    probe = socket.socket(socket.AF_INET6, getattr(socket, f"SOCK_{kind}"))
    probe.settimeout(3)
    probe.connect(("::1", port))
    if kind == "STREAM":
        mine.settimeout(3)
        accepted = mine.accept()[0]
        probe.close()  # first, so that TIME_WAIT holds the probe's port, not 7090
        accepted.close()
    else:
        probe.send(b"machine")
        assert mine.recv(10) == b"machine"
        probe.close()


@pytest.mark.parametrize("kind", ["STREAM", "DGRAM"], ids=["tcp", "udp"])
def test_another_vhost_finds_nothing_at_1_where_a_vhost_parked_a_server(backend, vips, reap, kind):
    """The parked server's ::1 is its own vhost's: in another vhost ::1:7094
    refuses, an IPV6_V6ONLY client and a dual-stack one alike."""
    _server(reap, vips(), kind, "::1", 7094, backend)
    other = vips()
    refused = {"errno": errno.ECONNREFUSED}
    if kind == "STREAM":
        assert _client(other, kind, 7094, backend) == refused
        assert _client(other, kind, 7094, backend, v6only=False) == refused
    else:  # refused, or no answer, as on a host where nothing listens (an unconnected send learns nothing)
        assert _client(other, kind, 7094, backend)["errno"] in (errno.ECONNREFUSED, errno.ENETUNREACH, None)


def test_a_closed_ipv6_only_servers_port_is_free_again(backend, vips, reap):
    """The filing goes with the socket: a server started again on ::1:7095
    after the first closed is the one reached."""
    ip = vips()
    first = reap(start_py(V6ONLY_SERVER.format(kind="STREAM", bind="::1", port=7095), ip=ip, backend=backend,
                          env=dict(os.environ, WHO="first")))
    wait_fact(first)
    first.kill()
    first.wait()
    second = reap(start_py(V6ONLY_SERVER.format(kind="STREAM", bind="::1", port=7095), ip=ip, backend=backend,
                           env=dict(os.environ, WHO="second")))
    wait_fact(second)
    assert _client(ip, "STREAM", 7095, backend)["got"][0] == "second"


@pytest.mark.own_sockets
def test_ss_in_the_vhost_lists_a_parked_server_at_the_port_it_asked(backend, vips, reap):
    ss = need("ss")
    ip = vips()
    _server(reap, ip, "STREAM", "::", 7096, backend)
    _server(reap, ip, "DGRAM", "::1", 7096, backend)
    code, out, err = run_in(ip, [ss, "-Htuln"], backend=backend)
    assert code == 0, err
    local = sorted(line.split()[4] for line in out.splitlines())
    assert local == ["[::1]:7096", "[::]:7096"], out


@pytest.mark.ipv6
@pytest.mark.parametrize("v6only_client", [True, False], ids=["v6only-client", "dual-stack-client"])
def test_an_ipv6_only_udp_wildcard_in_a_dual_stack_vhost_answers_1(backend, vips, vip6s, reap, v6only_client):
    """dnsmasq and knot bind [::]:53 IPV6_V6ONLY beside 0.0.0.0:53; in a
    vhost with both families `dig @::1` (sent and connected) is answered,
    from ::1.  Under eBPF the server sees the client at the vhost's IPv6
    vIP (no IPv6 loopback address of the vhost's own to send from); the
    shim's client leaves from the vhost's ::1."""
    ip, ip6 = vips(), vip6s()
    assert _server(reap, [ip, ip6], "DGRAM", "::", 7098, backend) == [ip6, 7098]
    got = _client([ip, ip6], "DGRAM", 7098, backend, v6only=v6only_client)
    seen = ip6 if backend == "ebpf" else "::1"
    assert got == {"got": [ip, seen], "peer": ["::1", 7098], "connected": [[ip, seen], ["::1", 7098]]}


@pytest.mark.ipv6
def test_an_ipv6_only_wildcard_listener_in_a_dual_stack_vhost_answers_1_and_its_vip(backend, vips, vip6s, reap):
    """nginx's `listen [::]:80` in a vhost with both families: reached at its
    own ::1 from inside, and at its IPv6 vIP from the machine."""
    ip, ip6 = vips(), vip6s()
    assert _server(reap, [ip, ip6], "STREAM", "::", 7097, backend) == [ip6, 7097]  # as for 0.0.0.0: the vIP
    got = _client([ip, ip6], "STREAM", 7097, backend)
    assert got == {"got": [ip, "::1", ["::1", 7097]], "peer": ["::1", 7097]}
    # From the machine: a process outside any vhost (the shim's through `vaddr exec --client`).
    outside = vaddr.spawn_client(py_argv(f"""
        c = socket.create_connection(("{ip6}", 7097), timeout=5); fact(seen=json.loads(c.recv(200))[2])
    """), stdout=vaddr.PIPE, stderr=vaddr.PIPE)
    out, err = communicate(outside, 20)
    assert json.loads(out) == {"seen": [ip6, 7097]}, err

"""SO_REUSEPORT groups in a vhost: one port, many sockets (HAProxy, unbound,
nginx's and Envoy's `reuseport`), as on a host of its own, next to the
machine's wildcard listeners on the same port."""
import errno
import os
import socket

import pytest

import vaddr
from tests.lab import run_py, start_py, wait_fact
from vaddr import maps

GROUP_OF_TWO = """
    def member(kind):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", {port}))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        return s
    kind = socket.{kind}
    a, b = member(kind), member(kind)
    fact(ready=[a.getsockname()[1], b.getsockname()[1]])
    import selectors
    sel = selectors.DefaultSelector()
    for s, who in ((a, "a"), (b, "b")):
        sel.register(s, selectors.EVENT_READ, who)
    while True:
        for key, _ in sel.select():
            if kind == socket.SOCK_STREAM:
                c, _ = key.fileobj.accept(); c.sendall(key.data.encode()); c.close()
            else:
                _, peer = key.fileobj.recvfrom(100); key.fileobj.sendto(key.data.encode(), peer)
"""


def _who_answers(server_ip, port, udp, tries):
    """Code for run_py: `tries` fresh clients (each its own source port, so
    the kernel's pick among the group varies), each fact the member's name."""
    kind = "socket.SOCK_DGRAM" if udp else "socket.SOCK_STREAM"
    return f"""
        for _ in range({tries}):
            c = socket.socket(socket.AF_INET, {kind}); c.settimeout(3); c.connect(("{server_ip}", {port}))
            if {udp}:
                c.send(b"?")
            fact(who=c.recv(10).decode()); c.close()
    """


@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"])
def test_reuseport_sockets_in_a_vhost_form_one_group(backend, vips, reap, kind):
    """Two SO_REUSEPORT sockets on 0.0.0.0:7040 in one vhost both bind, show
    the port, and share its clients, as workers of one server do."""
    server_ip, client_ip = vips(), vips()
    udp = kind == "SOCK_DGRAM"
    server = reap(start_py(GROUP_OF_TWO.format(port=7040, kind=kind), ip=server_ip, backend=backend))
    assert wait_fact(server) == {"ready": [7040, 7040]}
    code, facts, err = run_py(_who_answers(server_ip, 7040, udp, 48), ip=client_ip, backend=backend)
    assert code == 0, err
    answered = {f["who"] for f in facts}
    assert len(facts) == 48 and answered == {"a", "b"}, facts


@pytest.mark.own_ports
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_a_reuseport_group_takes_a_port_the_machine_holds_on_the_wildcard(backend, vips, reap, kind):
    """HAProxy and unbound set SO_REUSEPORT: their group in a vhost must
    start where the machine's own server holds the port on 0.0.0.0, and the
    machine's loopback still reaches the machine's."""
    machine = socket.socket(socket.AF_INET, kind)
    machine.bind(("0.0.0.0", 0))
    port = machine.getsockname()[1]
    if kind == socket.SOCK_STREAM:
        machine.listen()
    try:
        server_ip, client_ip = vips(), vips()
        kind_name = "SOCK_STREAM" if kind == socket.SOCK_STREAM else "SOCK_DGRAM"
        server = reap(start_py(GROUP_OF_TWO.format(port=port, kind=kind_name), ip=server_ip, backend=backend))
        assert wait_fact(server) == {"ready": [port, port]}
        code, facts, err = run_py(_who_answers(server_ip, port, kind == socket.SOCK_DGRAM, 4), ip=client_ip,
                                  backend=backend)
        assert code == 0, err
        assert {f["who"] for f in facts} <= {"a", "b"} and len(facts) == 4
        if kind == socket.SOCK_STREAM:
            c = socket.create_connection(("127.0.0.1", port), timeout=3)
            machine.accept()[0].close()
            c.close()
    finally:
        machine.close()


@pytest.mark.parametrize("survivor", [0, 2], ids=["first-left", "last-left"])
def test_a_reuseport_group_answers_while_any_listener_is_left(backend, vips, survivor):
    """Workers end one by one (a reload, a scaled-down pool): while one
    listener of the group is left, whichever, the port answers."""
    code, facts, err = run_py(f"""
        def member():
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", 7041)); s.listen(64); return s
        group = [member(), member(), member()]
        left = group.pop({survivor})
        for s in group:
            s.close()
        for _ in range(8):
            c = socket.create_connection((os.environ["VIP"], 7041), timeout=3); left.accept()[0].close(); c.close()
        fact(served=8)
    """, ip=(ip := vips()), backend=backend, env=dict(os.environ, VIP=ip))
    assert code == 0, err
    assert facts == [{"served": 8}]


@pytest.mark.parametrize("first_reuseport,second_reuseport", [(True, False), (False, True)])
def test_a_listener_without_reuseport_and_a_group_exclude_each_other(backend, vips, first_reuseport,
                                                                   second_reuseport):
    """As on a host: SO_REUSEPORT joins only sockets that all set it."""
    code, facts, err = run_py(f"""
        def listener(reuse):
            s = socket.socket()
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", 7042)); s.listen(); return s
        first = listener({first_reuseport})
        try:
            listener({second_reuseport}); fact(second="listening")
        except OSError as e:
            fact(errno=e.errno)
    """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"errno": errno.EADDRINUSE}]


@pytest.mark.own_ports
def test_a_udp_group_keeps_its_port_until_its_last_socket_closes(backend, vips):
    """The port's translation (udp_ports.h) belongs to the group: a closed
    member leaves it to the others, the last one takes it away."""
    ip = vips()
    proc = start_py("""
        def member():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("0.0.0.0", 7043)); return s
        a, b = member(), member()
        a.close()
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(3)
        c.sendto(b"?", (os.environ["VIP"], 7043))
        data, peer = b.recvfrom(10); b.sendto(b"!", peer)
        fact(got=c.recv(10).decode())
        sys.stdin.readline()
        b.close(); fact(closed=1)
        sys.stdin.readline()
    """, ip=ip, backend=backend, env=dict(os.environ, VIP=ip), stdin=vaddr.PIPE)
    try:
        assert wait_fact(proc) == {"got": "!"}
        assert (ip, 7043) in maps.udp_ports()
        proc.stdin.write(b"\n"); proc.stdin.flush()
        assert wait_fact(proc) == {"closed": 1}
        assert (ip, 7043) not in maps.udp_ports()
    finally:
        proc.kill()
        proc.wait()

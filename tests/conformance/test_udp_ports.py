"""A vhost's UDP ports are its own (bpf/udp_ports.h): next to the machine's
wildcard socket on the same port, answered from the port the client asked
for, and the pair filed for the rewriting goes with the socket (the leak
check counts the map's entries)."""
import errno
import json
import socket

import pytest

from tests.lab import run_py, start_py, wait_fact

# A UDP echo: replies "[its vhost, the peer it saw]" to every datagram.
UDP_ECHO = """
    u = socket.socket({family}, socket.SOCK_DGRAM); u.bind(("{bind}", {port})); fact(ready=u.getsockname()[:2])
    while True:
        data, peer = u.recvfrom(100); u.sendto(json.dumps(["{who}", peer[0]]).encode(), peer)
"""


@pytest.fixture
def udp_echo(backend, reap):
    def start(ip, bind, port, family="socket.AF_INET"):
        server = reap(start_py(UDP_ECHO.format(family=family, bind=bind, port=port, who=ip), ip=ip,
                               backend=backend))
        return wait_fact(server)["ready"]
    return start


def _ask(host, port, connected, family="socket.AF_INET"):
    """Client code: one datagram, the reply and who it came from."""
    send = f'u.connect(("{host}", {port})); u.send(b"?")' if connected else f'u.sendto(b"?", ("{host}", {port}))'
    return f"""
        u = socket.socket({family}, socket.SOCK_DGRAM); u.settimeout(3); {send}
        data, peer = u.recvfrom(100); fact(got=json.loads(data), peer=list(peer[:2]))
    """


@pytest.fixture
def machine_udp():
    """machine_udp(bind, port): a UDP socket of the machine's, closed after the test."""
    made = []

    def make(bind="0.0.0.0", port=0, family=socket.AF_INET):
        made.append(socket.socket(family, socket.SOCK_DGRAM))
        made[-1].bind((bind, port))
        made[-1].settimeout(3)
        return made[-1]
    yield make
    for sock in made:
        sock.close()


@pytest.mark.own_ports
@pytest.mark.parametrize("machine_first", [True, False], ids=["machine-first", "vhost-first"])
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_a_udp_server_takes_a_port_the_machine_holds_on_the_wildcard(backend, vips, udp_echo, machine_udp,
                                                                      machine_first, connected):
    """dnsmasq on :53 in a vhost while the machine runs its own on 0.0.0.0:53:
    the vIP reaches the vhost, whose reply comes from :53; 127.0.0.1 reaches
    the machine's."""
    server_ip, client_ip = vips(), vips()
    probe = machine_udp()
    port = probe.getsockname()[1]
    probe.close()
    machine = machine_udp("0.0.0.0", port) if machine_first else None
    assert udp_echo(server_ip, "0.0.0.0", port) == [server_ip, port]
    if not machine_first:
        machine = machine_udp("0.0.0.0", port)
    code, facts, err = run_py(_ask(server_ip, port, connected), ip=client_ip, backend=backend)
    assert code == 0, err
    assert facts == [{"got": [server_ip, client_ip], "peer": [server_ip, port]}]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"to the machine", ("127.0.0.1", port))
    assert machine.recvfrom(100)[0] == b"to the machine"
    c.close()


@pytest.mark.own_ports
@pytest.mark.parametrize("family", ["v4", pytest.param("v6", marks=pytest.mark.ipv6)])
def test_a_machines_connected_client_gets_the_reply_of_a_vhosts_udp_server(backend, vips, vip6s, udp_echo,
                                                                            family):
    """The machine's clients of a vIP come from its loopback (the vIP routes'
    source): the server's reply goes to that client, not to the vhost's own
    127.0.0.1 or ::1 (dig or nc -u from the machine)."""
    ip = vips() if family == "v4" else vip6s()
    af = socket.AF_INET if family == "v4" else socket.AF_INET6
    port = udp_echo(ip, ip, 7040, family=f"socket.{af.name}")[1]
    c = socket.socket(af, socket.SOCK_DGRAM)
    c.settimeout(3)
    c.connect((ip, port))
    c.send(b"?")
    data, peer = c.recvfrom(100)
    c.close()
    assert json.loads(data)[0] == ip
    assert peer[:2] == (ip, port)


@pytest.mark.own_ports
def test_a_vhosts_udp_server_cannot_send_to_the_machines_loopback_services(backend, vips, machine_udp):
    """The reply path above is for clients connected to the server: a
    datagram to a machine's service on 127.0.0.1 still goes nowhere."""
    service = machine_udp("127.0.0.1")
    code, facts, err = run_py(f"""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7041))
        try:
            u.sendto(b"probe", ("127.0.0.1", {service.getsockname()[1]})); fact(sent=True)
        except OSError as e:
            fact(errno=e.errno)
    """, ip=vips(), backend=backend)
    assert code == 0, err
    with pytest.raises(socket.timeout):
        service.settimeout(0.5)
        service.recvfrom(100)


@pytest.mark.own_ports
def test_a_second_udp_bind_on_a_vhosts_port_fails_with_eaddrinuse(backend, vips):
    code, facts, err = run_py("""
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("0.0.0.0", 7042))
        try:
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("0.0.0.0", 7042)); fact(second="bound")
        except OSError as e:
            fact(errno=e.errno)
        a.close()
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("0.0.0.0", 7042)); fact(after_close=c.getsockname()[1])
    """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"errno": errno.EADDRINUSE}, {"after_close": 7042}]


@pytest.mark.own_loopback
@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_udp_to_localhost_reaches_the_vhosts_own_server_and_its_reply_returns(backend, vips, udp_echo, bind,
                                                                               connected):
    """dnspython's unconnected queries to a resolver on 127.0.0.1 in the same
    vhost: the client's kernel-chosen wildcard port is the vhost's, not the
    machine's, so the reply is not refused."""
    ip = vips()
    udp_echo(ip, bind, 7043)
    code, facts, err = run_py(_ask("127.0.0.1", 7043, connected), ip=ip, backend=backend)
    assert code == 0, err
    assert len(facts) == 1 and facts[0]["got"] == [ip, "127.0.0.1"], facts
    assert facts[0]["peer"][1] == 7043


@pytest.mark.own_loopback
def test_udp_to_localhost_does_not_reach_another_vhosts_server(backend, vips, udp_echo):
    udp_echo(vips(), "127.0.0.1", 7044)
    code, facts, err = run_py("""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
        try:
            u.sendto(b"?", ("127.0.0.1", 7044)); u.recvfrom(100); fact(reached=True)
        except OSError as e:
            fact(reached=False)
    """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"reached": False}]

"""A vhost's UDP ports are its own (bpf/udp_ports.h): next to the machine's
wildcard socket on the same port, answered from the port the client asked
for, and the pair filed for the rewriting goes with the socket (the leak
check counts the map's entries)."""
import errno
import json
import socket
import time

import pytest

import vaddr
from tests.lab import run_py, start_py, wait_fact
from vaddr import maps

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
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_a_machines_client_gets_the_reply_of_a_vhosts_udp_server(backend, vips, vip6s, udp_echo, family,
                                                                  connected):
    """The machine's clients of a vIP come from its loopback (the vIP routes'
    source): the server's reply goes to that client, not to the vhost's own
    127.0.0.1 or ::1, whether it connected (nc -u) or not (kdig, a Python
    sendto; the server's sendto used to fail with ECONNREFUSED)."""
    ip = vips() if family == "v4" else vip6s()
    af = socket.AF_INET if family == "v4" else socket.AF_INET6
    port = udp_echo(ip, "0.0.0.0" if family == "v4" else "::", 7040, family=f"socket.{af.name}")[1]
    c = socket.socket(af, socket.SOCK_DGRAM)
    c.settimeout(3)
    if connected:
        c.connect((ip, port))
        c.send(b"?")
    else:
        c.sendto(b"?", (ip, port))
    data, peer = c.recvfrom(100)
    c.close()
    assert json.loads(data)[0] == ip
    assert peer[:2] == (ip, port)


@pytest.mark.own_ports
def test_a_vhosts_udp_server_cannot_send_to_the_machines_loopback_services(backend, vips, machine_udp, reap):
    """The reply path above is for the machine's clients that spoke to the
    server first: having answered one, the server still cannot reach a
    machine's service on 127.0.0.1 (on its own address or the wildcard)."""
    ip = vips()
    services = [machine_udp("127.0.0.1"), machine_udp("0.0.0.0")]
    ports = [s.getsockname()[1] for s in services]
    server = reap(start_py(f"""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7041)); fact(ready=1)
        data, peer = u.recvfrom(10); u.sendto(b"answer", peer)
        for port in {ports}:
            try:
                u.sendto(b"probe", ("127.0.0.1", port)); fact(sent=port)
            except OSError as e:
                fact(errno=e.errno)
    """, ip=ip, backend=backend))
    wait_fact(server)
    client = machine_udp()
    client.sendto(b"?", (ip, 7041))
    assert client.recvfrom(100)[0] == b"answer"
    wait_fact(server), wait_fact(server)  # both probes were sent (or refused)
    for service in services:
        with pytest.raises(socket.timeout):
            service.settimeout(0.5)
            service.recvfrom(100)


def _refused(client, machine):
    """A connected client's datagram is refused (port unreachable: the next
    send fails), and the machine's socket got nothing."""
    client.send(b"for the vhost")
    with pytest.raises(ConnectionRefusedError):
        for _ in range(50):  # the error arrives with the ICMP reply
            time.sleep(0.02)
            client.send(b"for the vhost")
    machine.settimeout(0.2)
    with pytest.raises(socket.timeout):
        machine.recvfrom(100)


@pytest.mark.own_ports
@pytest.mark.ipv6
def test_udp_to_a_vip_port_no_vhost_socket_holds_is_refused_not_served_by_the_machine(backend, vips, vip6s, reap,
                                                                                       machine_udp):
    """dig @vIP from the machine, with the machine's own DNS server on
    [::]:53 and none in the vhost: refused, as by a host with nothing on 53,
    not answered by the machine's server; 127.0.0.1 still reaches it, and the
    vIPs reach the vhost once it binds the port."""
    ips = [vips(), vip6s()]
    machine = machine_udp("::", 0, socket.AF_INET6)
    port = machine.getsockname()[1]
    server = reap(start_py(f"""
        fact(up=True); sys.stdin.readline()
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u.bind(("::", {port})); fact(bound=True)
        while True:
            data, peer = u.recvfrom(100); u.sendto(b"vhost", peer)
    """, ip=ips, backend=backend, stdin=vaddr.PIPE))
    wait_fact(server)
    for ip in ips:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.connect((ip, port))
            _refused(c, machine)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"to the machine", ("127.0.0.1", port))
        assert machine.recvfrom(100)[0] == b"to the machine"
    server.stdin.write(b"bind\n")
    server.stdin.flush()
    wait_fact(server)
    for ip in ips:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(3)
            c.connect((ip, port))
            c.send(b"?")
            assert c.recv(10) == b"vhost"


@pytest.mark.own_ports
def test_udp_to_a_vip_does_not_reach_another_vhosts_client_socket_on_that_port(backend, vips, reap, machine_udp):
    """An unconnected client socket in vhost B sits at 0.0.0.0:E (the kernel
    bound it when it first sent): a datagram to vhost A's vIP:E is not B's to
    receive."""
    a, b = vips(), vips()
    wait_fact(reap(start_py("fact(up=True); time.sleep(60)", ip=a, backend=backend)))
    client = reap(start_py(f"""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("{b}", 9))
        fact(port=u.getsockname()[1]); u.settimeout(1)
        try:
            fact(got=u.recvfrom(100)[0].decode())
        except socket.timeout:
            fact(got=None)
    """, ip=b, backend=backend))
    port = wait_fact(client)["port"]
    sink = machine_udp()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.connect((a, port))
        _refused(c, sink)
    assert wait_fact(client) == {"got": None}


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


DUAL_STACK_ECHO = """
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    u.bind(("::", {port})); fact(ready=u.getsockname()[:2])
    while True:
        data, peer = u.recvfrom(100); fact(data=data.decode()); u.sendto(json.dumps(["{who}", peer[0]]).encode(), peer)
"""


@pytest.mark.ipv6
@pytest.mark.own_ports
@pytest.mark.both_families_one_socket
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_a_dual_stack_udp_server_answers_on_both_vips(backend, vips, vip6s, reap, machine_udp, connected):
    """Go's ListenPacket("udp", ":P"), Node's udp6 and Python's [::] sockets
    are dual-stack: in a vhost with both families, IPv4 and IPv6 clients each
    get the reply from the address and port they asked, next to the
    machine's own [::]:P socket."""
    server, v4_client, v6_client = (vips(), vip6s()), vips(), vip6s()
    probe = machine_udp("::", 0, socket.AF_INET6)
    port = probe.getsockname()[1]
    probe.close()
    machine = machine_udp("::", port, socket.AF_INET6)
    proc = reap(start_py(DUAL_STACK_ECHO.format(port=port, who="server"), ip=list(server), backend=backend))
    assert wait_fact(proc) == {"ready": ["::", port]}
    for client, host, family, seen in ((v4_client, server[0], "socket.AF_INET", f"::ffff:{v4_client}"),
                                       (v6_client, server[1], "socket.AF_INET6", v6_client)):
        code, facts, err = run_py(_ask(host, port, connected, family), ip=client, backend=backend)
        assert code == 0, err
        assert facts == [{"got": ["server", seen], "peer": [host, port]}]
    for host, family, seen in ((server[0], socket.AF_INET, "::ffff:127.0.0.1"), (server[1], socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_DGRAM) as c:  # dig from the machine
            c.settimeout(3)
            c.connect((host, port))
            c.send(b"?")
            assert json.loads(c.recv(100)) == ["server", seen]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"to the machine", ("127.0.0.1", port))
    assert machine.recvfrom(100)[0] == b"to the machine"
    c.close()


@pytest.mark.ipv6
@pytest.mark.own_ports
@pytest.mark.both_families_one_socket
def test_a_dual_stack_udp_server_gets_nothing_sent_to_its_real_port_at_other_addresses(backend, vips, vip6s, reap):
    """Its socket holds [::]:R on the wildcard: datagrams to R at the
    machine's loopback or at another vhost's address are not its to get."""
    server, other = (vips(), vip6s()), vips()
    proc = reap(start_py(DUAL_STACK_ECHO.format(port=7045, who="server"), ip=list(server), backend=backend))
    wait_fact(proc)
    wait_fact(reap(start_py("fact(ready=1); time.sleep(60)", ip=other, backend=backend)))
    real = maps.udp_ports()[(server[1], 7045)]
    assert maps.udp_ports()[(server[0], 7045)] == real
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for address in ("127.0.0.1", other):
        stray.sendto(b"stray", (address, real))
    stray.close()
    code, facts, err = run_py(_ask(server[0], 7045, True), ip=vips(), backend=backend)
    assert code == 0, err
    assert wait_fact(proc) == {"data": "?"}  # the first to arrive
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while {(server[0], 7045), (server[1], 7045)} & set(maps.udp_ports()):
        assert time.monotonic() < deadline, "the dual-stack socket's ports outlived it"
        time.sleep(0.05)

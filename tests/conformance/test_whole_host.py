"""A vhost is a whole host: its own 127.0.0.1, a port space of its own next
to the machine's listeners, dual-stack listeners, and the isolation probes
that must fail for the attacker."""
import errno
import os
import socket

import pytest

import vaddr
from vaddr import loader

from tests.lab import run_py, start_py, wait_fact

LOCAL_ECHO = """
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{bind}", {port})); s.listen(); fact(ready=s.getsockname())
    while True:
        c, peer = s.accept(); c.sendall(json.dumps([os.environ.get("WHO"), peer[0], c.getsockname()[0]]).encode()); c.close()
"""


@pytest.fixture
def echo(backend, reap):
    """echo(ip, bind, port): a server in vhost ip that answers each connection
    with [its vhost, the peer it saw, its own address]; ended after the test."""
    def start(ip, bind, port):
        server = reap(start_py(LOCAL_ECHO.format(bind=bind, port=port), ip=ip, backend=backend,
                               env=dict(os.environ, WHO=ip)))
        return wait_fact(server)["ready"]
    return start


@pytest.fixture
def machine_socket():
    """machine_socket(): a TCP socket of the machine's, outside any vhost, closed after the test."""
    made = []

    def make():
        made.append(socket.socket())
        made[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return made[-1]
    yield make
    for sock in made:
        sock.close()


def _ask(host, port, family=socket.AF_INET):
    return f"""
        c = socket.socket({family}); c.connect(("{host}", {port})); fact(got=json.loads(c.recv(200)), me=c.getsockname()[0])
    """


@pytest.mark.own_loopback
@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_localhost_reaches_the_vhosts_own_listener_only(backend, vips, echo, bind):
    """Two vhosts each listen on 127.0.0.1:7030 (or the wildcard); a client in
    each reaches its own, and both ends see 127.0.0.1."""
    ips = [vips(), vips()]
    for ip in ips:
        assert echo(ip, bind, 7030)[1] == 7030
    for ip in ips:
        code, facts, err = run_py(_ask("127.0.0.1", 7030), ip=ip, backend=backend)
        assert code == 0, err
        assert facts == [{"got": [ip, "127.0.0.1", "127.0.0.1"], "me": "127.0.0.1"}]


@pytest.mark.own_loopback
def test_ipv6_localhost_reaches_the_vhosts_ipv4_loopback_listener(backend, vips, echo):
    """`localhost` tried as ::1 first (psql, curl): carried to the vhost's own
    loopback, never to the machine's ::1."""
    ip = vips()
    echo(ip, "127.0.0.1", 7031)
    code, facts, err = run_py(_ask("::1", 7031, "socket.AF_INET6"), ip=ip, backend=backend)
    assert code == 0, err
    assert facts[0]["got"][0] == ip


BOUND_FIRST = """
    kind = socket.SOCK_{kind}
    srv = socket.socket(socket.AF_INET, kind); srv.bind(("127.0.0.1", {port}))
    c = socket.socket(socket.AF_INET, kind); c.bind(("0.0.0.0", 0))
    if kind == socket.SOCK_STREAM:
        srv.listen(); c.connect(("127.0.0.1", {port})); a, peer = srv.accept()
        fact(client=[c.getsockname()[0], c.getpeername()[0]], server=[a.getsockname()[0], peer[0]])
    else:
        c.sendto(b"?", ("127.0.0.1", {port})); data, peer = srv.recvfrom(10); srv.sendto(b"!", peer)
        c.settimeout(3); reply, frm = c.recvfrom(10)
        fact(client=[frm[0], reply.decode()], server=[peer[0], data.decode()])
"""


@pytest.mark.own_loopback
@pytest.mark.parametrize("kind", ["STREAM", "DGRAM"], ids=["tcp", "udp"])
def test_a_client_that_binds_0_0_0_0_first_reaches_its_own_localhost_server(backend, vips, kind):
    """rndc (BIND's control tool) and dig +tcp bind 0.0.0.0:0 before they
    connect to 127.0.0.1: bound so, a client sits on the vIP (it must leave
    from there for other hosts), and still reaches its own vhost's
    loopback server, each end seeing the other as 127.0.0.1."""
    code, facts, err = run_py(BOUND_FIRST.format(kind=kind, port=7060), ip=vips(), backend=backend)
    assert code == 0, err
    if kind == "STREAM":
        assert facts == [{"client": ["127.0.0.1", "127.0.0.1"], "server": ["127.0.0.1", "127.0.0.1"]}]
    else:
        assert facts == [{"client": ["127.0.0.1", "!"], "server": ["127.0.0.1", "?"]}]


UNCONNECTED_LOCAL = """
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {port}))
    if {pktinfo}:
        u.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO: answer from where the query went
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(3)
    if {bound_first}:
        c.bind(("0.0.0.0", 0))  # as kdig and dig do
    c.sendto(b"?", ("127.0.0.1", {port}))
    data, ancillary, flags, peer = u.recvmsg(10, 1024)
    u.sendmsg([b"!"], ancillary if {pktinfo} else [], 0, peer)
    reply, frm = c.recvfrom(10)
    fact(client_heard_from=list(frm), server_heard_from=peer[0])
"""


@pytest.mark.own_loopback
@pytest.mark.parametrize("pktinfo", [False, True], ids=["plain", "pktinfo"])
@pytest.mark.parametrize("bound_first", [False, True], ids=["unbound", "bound-first"])
def test_an_unconnected_udp_client_of_localhost_hears_its_answer_from_localhost(backend, vips, pktinfo,
                                                                                 bound_first):
    """kdig and dig send to 127.0.0.1:53 without connecting and drop an
    answer from any other address ("unexpected reply source").  The server
    sits on the wildcard, as knot and dnsmasq do (which answer with
    IP_PKTINFO set to the address the query came to)."""
    ip = vips()
    code, facts, err = run_py(UNCONNECTED_LOCAL.format(port=7061, pktinfo=pktinfo, bound_first=bound_first),
                              ip=ip, backend=backend)
    assert code == 0, err
    # A client bound first sits on the vIP (it must leave from there for
    # other hosts), and the server sees it there.
    assert facts == [{"client_heard_from": ["127.0.0.1", 7061],
                      "server_heard_from": ip if bound_first else "127.0.0.1"}]


@pytest.mark.own_loopback
def test_a_client_bound_to_its_vip_reaches_no_other_vhosts_loopback(backend, vips, echo):
    """The way in above is for the loopback's own vhost: another vhost's
    client on its vIP finds nothing at 127.0.0.1 but its own."""
    ip, other = vips(), vips()
    echo(ip, "127.0.0.1", 7061)
    assert _connect_from("0.0.0.0", "127.0.0.1", 7061, other, backend) == [{"errno": errno.ECONNREFUSED}]


def _connect_from(bind, host, port, ip, backend):
    """What a client in vhost ip that binds (bind, 0) before it connects to
    (host, port) finds: [{"reached": True}] or [{"errno": N}]."""
    code, facts, err = run_py(f"""
        c = socket.socket(); c.bind(("{bind}", 0))
        try:
            c.connect(("{host}", {port})); fact(reached=True)
        except OSError as e:
            fact(errno=e.errno)
    """, ip=ip, backend=backend)
    assert code == 0, err
    return facts


@pytest.mark.own_loopback
@pytest.mark.parametrize("machine_bind", ["127.0.0.1", "0.0.0.0"])
def test_the_machines_loopback_services_are_not_reached_from_a_vhost(backend, vips, machine_socket, machine_bind):
    machine = machine_socket()
    machine.bind((machine_bind, 0))
    machine.listen()
    code, facts, err = run_py(f"""
        try:
            socket.create_connection(("127.0.0.1", {machine.getsockname()[1]}), timeout=3); fact(reached=True)
        except OSError as e:
            fact(errno=e.errno)
    """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"errno": errno.ECONNREFUSED}]


def test_host_loopback_option_reaches_the_machines_loopback(backend, vips, machine_socket):
    machine = machine_socket()
    machine.bind(("127.0.0.1", 0))
    machine.listen()
    code, facts, err = run_py(f"""
        c = socket.create_connection(("127.0.0.1", {machine.getsockname()[1]})); fact(me=c.getsockname()[0])
    """, ip=vips(), backend=backend, host_loopback=True)
    assert code == 0, err
    assert facts == [{"me": "127.0.0.1"}]
    machine.accept()[0].close()


@pytest.mark.own_ports
@pytest.mark.parametrize("machine_first", [True, False], ids=["machine-first", "vhost-first"])
def test_a_vhost_listens_on_a_port_the_machine_holds_on_the_wildcard(backend, vips, echo, machine_socket,
                                                                     machine_first):
    """The machine's sshd on 0.0.0.0:22 and a vhost's sshd on :22 coexist:
    the vIP reaches the vhost, 127.0.0.1 the machine, whichever bound first."""
    server_ip, client_ip = vips(), vips()
    # A port the machine can bind now: connections a vhost closed first
    # leave TIME_WAIT sockets that keep the machine's wildcard bind of their
    # port out for 60 s, even with SO_REUSEADDR (README, Limits).
    machine = machine_socket()
    machine.bind(("0.0.0.0", 0))
    port = machine.getsockname()[1]
    if machine_first:
        machine.listen()
    assert echo(server_ip, "0.0.0.0", port) == [server_ip, port]
    if not machine_first:
        machine.listen()
    code, facts, err = run_py(_ask(server_ip, port), ip=client_ip, backend=backend)
    assert code == 0, err
    assert facts == [{"got": [server_ip, client_ip, server_ip], "me": client_ip}]
    c = socket.create_connection(("127.0.0.1", port))
    machine.accept()[0].close()
    c.close()


@pytest.mark.own_ports
@pytest.mark.ipv6
def test_a_vip_without_a_listener_refuses_the_machines_clients(backend, vips, vip6s, reap):
    """Until the vhost listens on P, a client on the machine connecting to its
    vIP:P is refused, as by a host of its own, rather than served by the
    machine's own [::]:P (a lab's readiness probe on that port passed at
    once); 127.0.0.1:P still reaches the machine, and the vIPs reach the
    vhost once it listens."""
    ips = [vips(), vip6s()]
    machine = socket.socket(socket.AF_INET6)
    machine.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    machine.bind(("::", 0))
    machine.listen()
    port = machine.getsockname()[1]
    try:
        server = reap(start_py(f"""
            fact(up=True); sys.stdin.readline()
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", {port})); s.listen(); fact(listening=True)
            while True:
                c, _ = s.accept(); c.sendall(b"vhost"); c.close()
        """, ip=ips, backend=backend, stdin=vaddr.PIPE))
        wait_fact(server)
        for ip in ips:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((ip, port), timeout=5)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        machine.accept()[0].close()
        server.stdin.write(b"listen\n")
        server.stdin.flush()
        wait_fact(server)
        for ip in ips:
            with socket.create_connection((ip, port), timeout=5) as c:
                assert c.recv(10) == b"vhost"
    finally:
        machine.close()


@pytest.mark.own_ports
def test_a_second_listener_on_a_vhosts_port_fails_with_eaddrinuse(backend, vips):
    code, facts, err = run_py("""
        a = socket.socket(); a.bind(("0.0.0.0", 7033)); a.listen()
        try:
            b = socket.socket(); b.bind(("0.0.0.0", 7033)); b.listen(); fact(second="listening")
        except OSError as e:
            fact(errno=e.errno)
    """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"errno": errno.EADDRINUSE}]


@pytest.mark.ipv6
@pytest.mark.both_families_one_socket
def test_a_dual_stack_listener_answers_on_both_vips(backend, vips, vip6s, reap):
    """[::] without IPV6_V6ONLY, as Node and Python servers bind."""
    server = (vips(), vip6s())
    client = (vips(), vip6s())
    proc = reap(start_py("""
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 7034)); s.listen(); fact(ready=1)
        while True:
            c, peer = s.accept(); c.sendall(json.dumps([peer[0], c.getsockname()[0]]).encode()); c.close()
    """, ip=list(server), backend=backend))
    wait_fact(proc)
    code, facts, err = run_py(f"""
        for host, fam in (("{server[0]}", socket.AF_INET), ("{server[1]}", socket.AF_INET6)):
            c = socket.socket(fam); c.connect((host, 7034)); fact(got=json.loads(c.recv(200)))
    """, ip=list(client), backend=backend)
    assert code == 0, err
    assert facts == [{"got": [f"::ffff:{client[0]}", f"::ffff:{server[0]}"]},
                     {"got": [client[1], server[1]]}]


@pytest.mark.ipv6
@pytest.mark.both_families_one_socket
def test_a_dual_stack_client_bound_to_port_0_leaves_from_the_ipv6_vip(backend, vips, vip6s, reap):
    """Python's create_connection(source_address=("", 0)) to an IPv6 peer."""
    server_ip, client = vip6s(), (vips(), vip6s())
    proc = reap(start_py("""
        s = socket.socket(socket.AF_INET6); s.bind(("::", 7035)); s.listen(); fact(ready=1)
        fact(peer=s.accept()[1][0])
    """, ip=server_ip, backend=backend))
    wait_fact(proc)
    code, facts, err = run_py(f"""
        c = socket.create_connection(("{server_ip}", 7035), source_address=("", 0)); fact(me=c.getsockname()[0])
    """, ip=list(client), backend=backend)
    assert code == 0, err
    assert facts == [{"me": client[1]}]
    assert wait_fact(proc) == {"peer": client[1]}


def test_a_v4_mapped_wildcard_bind_stays_on_the_vip(backend, vips):
    """[::ffff:0.0.0.0]:P would listen on every IPv4 address of the machine."""
    ip = vips()
    code, facts, err = run_py("""
        s = socket.socket(socket.AF_INET6); s.bind(("::ffff:0.0.0.0", 7036)); s.listen()
        fact(name=s.getsockname()[0])
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts == [{"name": f"::ffff:{ip}"}]


def test_a_udp_source_of_another_vhost_set_by_ip_pktinfo_is_refused(backend, vips, reap):
    victim, attacker, target = vips(), vips(), vips()
    # The victim runs: the kernel itself refuses a source no vhost holds.
    wait_fact(reap(start_py("fact(ready=1); time.sleep(30)", ip=victim, backend=backend)))
    server = reap(start_py("""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7037)); u.settimeout(3); fact(ready=1)
        try:
            fact(peer=u.recvfrom(10)[1][0])
        except socket.timeout:
            fact(peer=None)
    """, ip=target, backend=backend))
    wait_fact(server)
    code, facts, err = run_py(f"""
        import struct
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 0))
        info = struct.pack("I4s4s", 0, socket.inet_aton("{victim}"), socket.inet_aton("{victim}"))
        try:
            u.sendmsg([b"x"], [(socket.IPPROTO_IP, 8, info)], 0, ("{target}", 7037)); fact(sent=True)
        except OSError as e:
            fact(errno=e.errno)
    """, ip=attacker, backend=backend)
    assert code == 0, err
    assert facts and "errno" in facts[0], facts
    assert wait_fact(server) == {"peer": None}


@pytest.mark.own_loopback
def test_a_socket_bound_to_localhost_cannot_reach_another_vhost(backend, vips, echo):
    """It would reach it as "the machine", past that link's settings."""
    server_ip = vips()
    echo(server_ip, "0.0.0.0", 7038)
    facts = _connect_from("127.0.0.1", server_ip, 7038, vips(), backend)
    assert facts and "errno" in facts[0], facts


@pytest.mark.own_loopback
def test_a_descriptor_that_served_localhost_then_reaches_another_vhost(backend, vips, echo):
    """A client that talked to its own 127.0.0.1 closes the socket; the next
    socket takes the same descriptor number and connects to another vhost,
    which it reaches from its vIP (the loopback rule goes with the socket)."""
    ip, other = vips(), vips()
    echo(ip, "127.0.0.1", 7039)
    echo(other, "0.0.0.0", 7039)
    code, facts, err = run_py(f"""
        a = socket.create_connection(("127.0.0.1", 7039)); a.recv(200); n = a.fileno(); a.close()
        b = socket.socket(); fact(same=b.fileno() == n); b.connect(("{other}", 7039)); fact(got=json.loads(b.recv(200)))
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts == [{"same": True}, {"got": [other, ip, other]}]


LOOSE_LISTENER = """
    s = socket.socket({family}); s.listen(); fact(port=s.getsockname()[1])
    while True:
        c, peer = s.accept(); c.sendall(json.dumps([os.environ.get("WHO"), peer[0], c.getsockname()[0]]).encode()); c.close()
"""


def _reaches(host, port):
    return f"""
        try:
            c = socket.create_connection(("{host}", {port}), timeout=3); fact(got=json.loads(c.recv(200)))
        except OSError as e:
            fact(errno=e.errno)
    """


@pytest.mark.own_ports
@pytest.mark.parametrize("family", ["socket.AF_INET", "socket.AF_INET6"], ids=["ipv4", "dual-stack"])
def test_listen_without_bind_answers_on_the_vhosts_own_addresses_only(backend, vips, reap, family):
    """The kernel binds such a socket to the wildcard at an ephemeral port:
    it must answer at its vhost's address and 127.0.0.1, not at another
    vhost's address or the machine's loopback (an isolation probe)."""
    owner, other, bystander = vips(), vips(), vips()
    wait_fact(reap(start_py("fact(ready=1); time.sleep(60)", ip=bystander, backend=backend)))
    server = reap(start_py(LOOSE_LISTENER.format(family=family), ip=owner, backend=backend,
                           env=dict(os.environ, WHO=owner)))
    port = wait_fact(server)["port"]
    # Where sockops cannot read the cgroup id (6.1), the listener is left to
    # be what the kernel made, a wildcard one like the machine's, which every
    # vhost address refuses (README, Limits): refused then even at its own.
    confined = loader.loose_listeners() == "on"
    for target, want in ((owner, "reached" if confined else "refused"), (other, "refused"), (bystander, "refused"),
                         ("127.0.0.1", "refused")):
        code, facts, err = run_py(_reaches(target, port), ip=other, backend=backend)
        assert code == 0, err
        assert ("got" in facts[0]) == (want == "reached"), (target, facts)
    code, facts, err = run_py(_reaches("127.0.0.1", port), ip=owner, backend=backend)
    assert code == 0, err
    if not confined:
        assert facts[0] == {"errno": errno.ECONNREFUSED}, facts
        return
    assert facts[0]["got"][0] == owner, facts
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=3)

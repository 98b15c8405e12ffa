"""The address semantics of a vhost, case by case, with real sockets."""
import errno
import socket

import pytest

from tests.lab import run_py, start_py, wait_fact


def test_wildcard_bind_lands_on_vip(backend, vips):
    ip = vips()
    code, facts, err = run_py("""
        s = socket.socket(); s.bind(("0.0.0.0", 7001)); fact(name=s.getsockname()[0])
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7001)); fact(name=u.getsockname()[0])
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert [f["name"] for f in facts] == [ip, ip]


def test_same_port_listens_on_many_vhosts(backend, vips):
    ips = [vips() for _ in range(3)]
    servers = [start_py("""
        s = socket.socket(); s.bind(("0.0.0.0", 7002)); s.listen(); fact(bound=s.getsockname()[0])
        time.sleep(30)
    """, ip=ip, backend=backend) for ip in ips]
    try:
        assert sorted(wait_fact(s)["bound"] for s in servers) == sorted(ips)
    finally:
        for s in servers:
            s.kill()
            s.wait()


def test_tcp_peers_see_each_others_vips(backend, vips, reap):
    server_ip, client_ip = vips(), vips()
    server = reap(start_py("""
        s = socket.socket(); s.bind(("", 7003)); s.listen(); fact(ready=1)
        c, peer = s.accept(); fact(accept=peer[0], getpeername=c.getpeername()[0], getsockname=c.getsockname()[0])
    """, ip=server_ip, backend=backend))
    wait_fact(server)
    code, facts, err = run_py(f"""
        c = socket.create_connection(("{server_ip}", 7003)); fact(me=c.getsockname()[0], peer=c.getpeername()[0])
    """, ip=client_ip, backend=backend)
    assert code == 0, err
    assert facts == [{"me": client_ip, "peer": server_ip}]
    assert wait_fact(server) == {"accept": client_ip, "getpeername": client_ip, "getsockname": server_ip}


@pytest.mark.parametrize("connected", [False, True], ids=["sendto", "connected"])
def test_udp_datagrams_come_from_vip(backend, vips, connected, reap):
    server_ip, client_ip = vips(), vips()
    server = reap(start_py("""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7004)); fact(ready=1)
        data, peer = u.recvfrom(100); fact(recvfrom=peer[0]); u.sendto(b"pong", peer)
    """, ip=server_ip, backend=backend))
    wait_fact(server)
    send = (f'u.connect(("{server_ip}", 7004)); u.send(b"ping"); fact(me=u.getsockname()[0])'
            if connected else f'u.sendto(b"ping", ("{server_ip}", 7004))')
    code, facts, err = run_py(f"""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
        {send}
        data, peer = u.recvfrom(100); fact(reply_from=peer[0], data=data.decode())
    """, ip=client_ip, backend=backend)
    assert code == 0, err
    assert facts[-1] == {"reply_from": server_ip, "data": "pong"}
    if connected:
        assert facts[0] == {"me": client_ip}
    assert wait_fact(server) == {"recvfrom": client_ip}


def test_binding_another_vhosts_address_is_refused(backend, vips):
    owner_ip, other_ip = vips(), vips()
    owner = start_py("fact(ready=1); time.sleep(30)", ip=owner_ip, backend=backend)
    try:
        wait_fact(owner)
        code, facts, err = run_py(f"""
            s = socket.socket()
            try:
                s.bind(("{owner_ip}", 7005)); fact(errno=0)
            except OSError as e:
                fact(errno=e.errno)
        """, ip=other_ip, backend=backend)
        assert code == 0, err
        from vaddr import loader
        # The kernel's answer when the hooks were loaded, not a guess from its version.
        want = errno.EADDRNOTAVAIL if backend == "preload" else getattr(errno, loader.bind_refusal())
        assert facts == [{"errno": want}]
    finally:
        owner.kill()
        owner.wait()


def test_own_address_binds_explicitly(backend, vips):
    ip = vips()
    code, facts, err = run_py(f"""
        s = socket.socket(); s.bind(("{ip}", 7006)); fact(name=s.getsockname()[0])
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts == [{"name": ip}]


def test_loopback_behaves_as_on_the_host_with_host_loopback(backend, vips):
    """With --host-loopback (the shim's only way), 127.0.0.1 is the host's: a
    vhost reaches host services there, with the kernel's usual source, and
    may bind it itself."""
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = host.getsockname()[1]
    try:
        code, facts, err = run_py(f"""
            c = socket.create_connection(("127.0.0.1", {port})); fact(me=c.getsockname()[0])
            s = socket.socket(); s.bind(("127.0.0.1", 0)); fact(bound=s.getsockname()[0])
        """, ip=vips(), backend=backend, host_loopback=True)
        assert code == 0, err
        assert facts == [{"me": "127.0.0.1"}, {"bound": "127.0.0.1"}]
        conn, peer = host.accept()
        assert peer[0] == "127.0.0.1"
        conn.close()
    finally:
        host.close()


def test_host_connects_to_vhost_from_its_lab_address(backend, vips, reap):
    """A process outside any vhost is seen as the host's lab address, never as
    the destination's own address."""
    ip = vips()
    server = reap(start_py("""
        s = socket.socket(); s.bind(("", 7007)); s.listen(); fact(ready=1)
        c, peer = s.accept(); fact(peer=peer[0])
    """, ip=ip, backend=backend))
    wait_fact(server)
    if backend == "ebpf":
        with socket.create_connection((ip, 7007), timeout=5) as c:
            me = c.getsockname()[0]
    else:
        # Under the shim, a host process reaches vIPs as a client of the
        # lab (vaddr exec --client): the real addresses stay hidden.
        import sys, vaddr
        client = vaddr.spawn_client([sys.executable, "-c", f"import socket; c = socket.create_connection(('{ip}', 7007)); print(c.getsockname()[0], c.getpeername()[0])"],
                                    stdout=vaddr.PIPE)
        me, peer = client.stdout.read().decode().split()
        assert client.wait() == 0 and peer == ip
    assert me == "127.0.0.1" and wait_fact(server) == {"peer": "127.0.0.1"}


def test_children_threads_and_exec_stay_in_the_vhost(backend, vips):
    ip = vips()
    code, facts, err = run_py("""
        import subprocess, threading
        out = subprocess.run(["/bin/sh", "-c", "exec " + sys.executable + " -c 'import socket; s=socket.socket(); s.bind((\\"\\", 7008)); print(s.getsockname()[0])'"],
                             capture_output=True, text=True).stdout.strip()
        fact(child=out)
        names = []
        def bind():
            s = socket.socket(); s.bind(("", 0)); s.listen(); c = socket.socket(); s2 = socket.socket(); s2.bind(("", 7009)); names.append(s2.getsockname()[0])
        t = threading.Thread(target=bind); t.start(); t.join(); fact(thread=names[0])
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts == [{"child": ip}, {"thread": ip}]


def _v6_acceptor(reap, ip, port, backend):
    """A server in vhost ip on [::]:port that reports the peer of its one connection."""
    server = reap(start_py(f"""
        s = socket.socket(socket.AF_INET6); s.bind(("::", {port})); s.listen(); fact(ready=1)
        c, peer = s.accept(); fact(peer=peer[0])
    """, ip=ip, backend=backend))
    wait_fact(server)
    return server


@pytest.mark.ipv6
class TestIPv6:
    def test_wildcard_v6_bind_lands_on_vip6(self, backend, vips, vip6s):
        ip6 = vip6s()
        code, facts, err = run_py("""
            s = socket.socket(socket.AF_INET6); s.bind(("::", 7010)); fact(name=s.getsockname()[0])
        """, ip=[ip6], backend=backend)
        assert code == 0, err
        assert facts == [{"name": ip6}]

    def test_tcp_v6_peers_see_vip6(self, backend, vip6s, reap):
        server_ip, client_ip = vip6s(), vip6s()
        server = _v6_acceptor(reap, server_ip, 7011, backend)
        code, facts, err = run_py(f"""
            c = socket.create_connection(("{server_ip}", 7011)); fact(me=c.getsockname()[0])
        """, ip=client_ip, backend=backend)
        assert code == 0, err
        assert facts == [{"me": client_ip}] and wait_fact(server) == {"peer": client_ip}

    def test_udp_v6_sendto_comes_from_vip6(self, backend, vip6s, reap):
        server_ip, client_ip = vip6s(), vip6s()
        server = reap(start_py("""
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::", 7012)); fact(ready=1)
            data, peer = u.recvfrom(100); fact(peer=peer[0])
        """, ip=server_ip, backend=backend))
        wait_fact(server)
        code, _, err = run_py(f"""
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.sendto(b"x", ("{server_ip}", 7012))
        """, ip=client_ip, backend=backend)
        assert code == 0, err
        assert wait_fact(server) == {"peer": client_ip}

    def test_host_reaches_vip6_from_its_lab_address(self, backend, vip6s, reap):
        ip6 = vip6s()
        server = _v6_acceptor(reap, ip6, 7013, backend)
        if backend == "ebpf":
            with socket.create_connection((ip6, 7013), timeout=5) as c:
                me, peer = c.getsockname()[0], c.getpeername()[0]
        else:  # a host process reaches a shim lab as its client (vaddr exec --client)
            import sys, vaddr
            client = vaddr.spawn_client([sys.executable, "-c", f"import socket; c = socket.create_connection(('{ip6}', 7013)); print(c.getsockname()[0], c.getpeername()[0])"],
                                        stdout=vaddr.PIPE)
            me, peer = client.stdout.read().decode().split()
            assert client.wait() == 0
        assert (me, peer) == ("::1", ip6) and wait_fact(server) == {"peer": "::1"}

    def test_client_bound_to_wildcard_v6_port_0_leaves_from_vip6(self, backend, vip6s, reap):
        server_ip, client_ip = vip6s(), vip6s()
        server = _v6_acceptor(reap, server_ip, 7021, backend)
        code, facts, err = run_py(f"""
            c = socket.socket(socket.AF_INET6); c.bind(("::", 0)); c.connect(("{server_ip}", 7021))
            fact(me=c.getsockname()[0])
        """, ip=client_ip, backend=backend)
        assert code == 0, err
        assert facts == [{"me": client_ip}] and wait_fact(server) == {"peer": client_ip}

    def test_dual_stack_wildcard_in_a_two_family_vhost_takes_the_ipv4_vip(self, backend, vips, vip6s):
        """The documented limit (README): [::] without IPV6_V6ONLY lands on
        ::ffff:IPv4 vIP, so IPv4 clients reach it."""
        ip4, ip6 = vips(), vip6s()
        code, facts, err = run_py("""
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 7022)); fact(name=s.getsockname()[0])
        """, ip=[ip4, ip6], backend=backend)
        assert code == 0, err
        assert facts == [{"name": f"::ffff:{ip4}"}]

    def test_vhost_with_both_families(self, backend, vips, vip6s):
        ip4, ip6 = vips(), vip6s()
        code, facts, err = run_py("""
            a = socket.socket(); a.bind(("0.0.0.0", 7014))
            b = socket.socket(socket.AF_INET6); b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); b.bind(("::", 7014))
            fact(v4=a.getsockname()[0], v6=b.getsockname()[0])
        """, ip=[ip4, ip6], backend=backend)
        assert code == 0, err
        assert facts == [{"v4": ip4, "v6": ip6}]


class TestDualStack:
    def test_dual_stack_wildcard_accepts_ipv4_at_the_vip(self, backend, vips, reap):
        server_ip, client_ip = vips(), vips()
        server = reap(start_py("""
            s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 7015)); s.listen(); fact(bound=s.getsockname()[0])
            c, peer = s.accept(); fact(peer=peer[0])
        """, ip=server_ip, backend=backend))
        assert wait_fact(server) == {"bound": f"::ffff:{server_ip}"}
        code, _, err = run_py(f'socket.create_connection(("{server_ip}", 7015))', ip=client_ip, backend=backend)
        assert code == 0, err
        assert wait_fact(server) == {"peer": f"::ffff:{client_ip}"}

    def test_v6only_wildcard_in_ipv4_vhosts_binds_beside_the_ipv4_socket(self, backend, vips):
        """The daemon pattern: 0.0.0.0:P plus [::]:P with IPV6_V6ONLY, in
        several IPv4-only vhosts at once.  Every bind succeeds; the IPv4
        socket lands on the vIP and the IPv6 one on ::1:P, as on a host
        whose only IPv6 address is ::1 (what reaches it:
        test_ipv6_loopback.py)."""
        ips = [vips(), vips()]
        servers = [start_py("""
            a = socket.socket(); a.bind(("0.0.0.0", 7016)); a.listen()
            b = socket.socket(socket.AF_INET6); b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            b.bind(("::", 7016)); b.listen()
            fact(v4=a.getsockname()[0], v6=b.getsockname()[0], v6port=b.getsockname()[1]); time.sleep(30)
        """, ip=ip, backend=backend) for ip in ips]
        try:
            facts = [wait_fact(s) for s in servers]
        finally:
            for s in servers:
                s.kill()
                s.wait()
        assert [f["v4"] for f in facts] == ips
        # held at the vhost's own ::1, shown as bound
        assert [(f["v6"], f["v6port"]) for f in facts] == [("::", 7016), ("::", 7016)]


@pytest.mark.parametrize("kind", ["tcp", "udp-connected", "udp-sendto"])
def test_client_bound_to_wildcard_port_0_before_connect_leaves_from_vip(backend, vips, kind, reap):
    """bind(0.0.0.0:0) then connect or sendto, as dig, host and Java clients
    do: the server sees the client's vIP, and the client's socket shows it."""
    server_ip, client_ip = vips(), vips()
    udp = kind != "tcp"
    server = reap(start_py(f"""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if {udp} else socket.SOCK_STREAM)
        s.bind(("", 7020)); {"" if udp else "s.listen();"} fact(ready=1)
        peer = s.recvfrom(10)[1] if {udp} else s.accept()[1]
        fact(peer=peer[0])
    """, ip=server_ip, backend=backend))
    wait_fact(server)
    send = {"tcp": f'c.connect(("{server_ip}", 7020))',
            "udp-connected": f'c.connect(("{server_ip}", 7020)); c.send(b"x")',
            "udp-sendto": f'c.sendto(b"x", ("{server_ip}", 7020))'}[kind]
    code, facts, err = run_py(f"""
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if {udp} else socket.SOCK_STREAM)
        c.bind(("0.0.0.0", 0)); fact(bound=c.getsockname()[0])
        {send}
    """, ip=client_ip, backend=backend)
    assert code == 0, err
    assert facts == [{"bound": client_ip}]
    assert wait_fact(server) == {"peer": client_ip}


def test_connections_to_non_lab_addresses_keep_the_kernels_source(backend, vips):
    """A host service on a loopback address that is no vhost's (127.0.0.2)
    sees the kernel's usual source, not the vIP."""
    host = socket.socket()
    host.bind(("127.0.0.2", 0))
    host.listen()
    try:
        code, facts, err = run_py(f"""
            c = socket.create_connection(("127.0.0.2", {host.getsockname()[1]})); fact(me=c.getsockname()[0])
        """, ip=vips(), backend=backend)
        assert code == 0, err
        conn, peer = host.accept()
        conn.close()
        assert facts == [{"me": "127.0.0.1"}] and peer[0] == "127.0.0.1"
    finally:
        host.close()

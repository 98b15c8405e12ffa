"""`ss` inside a vhost lists the vhost's own sockets, at the addresses and
ports its programs asked for, as on a host of its own: not the real,
ephemeral ports the hooks hold them at, and none of the machine's or another
vhost's.  Scripts wait on that listing (Galera's state transfer waits until
`ss` shows its rsync on the port it chose)."""
import errno
import socket
import subprocess

import pytest

from tests.conftest import need
from tests.lab import run_in, run_py, start_py, wait_fact

SERVE = """
    made = []
    for kind, host, port in {sockets}:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((host, port))
        if kind == "tcp":
            s.listen()
        made.append(s)
    fact(ready=True)
    time.sleep(300)
"""


@pytest.fixture
def serve(backend, reap):
    """serve(ip, [(kind, host, port)]): sockets held in vhost ip until the test ends."""
    def start(ip, sockets):
        wait_fact(reap(start_py(SERVE.format(sockets=sockets), ip=ip, backend=backend)))
    return start


def ss(ip, *args, backend, **kwargs):
    """(local, peer) address columns of `ss -Hn ARGS` run in vhost ip."""
    need("ss")
    code, out, err = run_in(ip, ["ss", "-Hn", *args], backend=backend, **kwargs)
    assert code == 0, err
    return [tuple(line.split()[-2:]) for line in out.splitlines() if line.strip()]


@pytest.fixture
def machine_listener():
    """A TCP listener of the machine's, outside any vhost, on 0.0.0.0:PORT."""
    made = []

    def make(port):
        made.append(socket.socket())
        made[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        made[-1].bind(("0.0.0.0", port))
        made[-1].listen()
    yield make
    for sock in made:
        sock.close()


@pytest.mark.own_sockets
def test_ss_lists_the_vhosts_listeners_at_their_ports_and_nothing_else(backend, vips, serve, machine_listener):
    """The machine and a second vhost listen on the same port: the vhost's
    `ss -ltn` shows its own two listeners, wildcard and loopback, and no one else's."""
    ip, other = vips(), vips()
    machine_listener(7140)
    serve(ip, [("tcp", "0.0.0.0", 7140), ("tcp", "127.0.0.1", 7141)])
    serve(other, [("tcp", "0.0.0.0", 7140), ("tcp", "0.0.0.0", 7142)])
    assert sorted(ss(ip, "-lt", backend=backend)) == [("0.0.0.0:7140", "0.0.0.0:*"), ("127.0.0.1:7141", "0.0.0.0:*")]
    assert sorted(ss(other, "-lt", backend=backend)) == [("0.0.0.0:7140", "0.0.0.0:*"), ("0.0.0.0:7142", "0.0.0.0:*")]


@pytest.mark.own_sockets
def test_an_ss_filter_matches_the_port_asked_for_not_the_one_held(backend, vips, serve):
    """`ss "( sport = :P )"` runs the filter on the listing the vhost sees; the
    real, ephemeral port the socket holds is found by no filter in the vhost."""
    ip = vips()
    serve(ip, [("tcp", "0.0.0.0", 7143)])
    assert ss(ip, "-lt", "( sport = :7143 )", backend=backend) == [("0.0.0.0:7143", "0.0.0.0:*")]
    real = subprocess.run(["ss", "-Hltn", f"src {ip}"], capture_output=True, text=True).stdout.split()[3]
    real_port = int(real.rsplit(":", 1)[1])
    assert real_port != 7143
    assert ss(ip, "-lt", f"( sport = :{real_port} )", backend=backend) == []
    assert ss(ip, "-lt", "( sport >= :7000 and sport <= :7200 )", backend=backend) == [("0.0.0.0:7143", "0.0.0.0:*")]


@pytest.mark.own_sockets
@pytest.mark.ipv6
def test_ss_shows_udp_sockets_and_dual_stack_listeners_at_their_ports(backend, vips, vip6s, serve):
    ip4, ip6 = vips(), vip6s()
    serve([ip4, ip6], [("udp", ip4, 7144), ("udp", "::", 7145), ("tcp", "::", 7146)])
    assert sorted(ss([ip4, ip6], "-lu", backend=backend)) == [("*:7145", "*:*"), (f"{ip4}:7144", "0.0.0.0:*")]
    assert ss([ip4, ip6], "-lt", backend=backend) == [("*:7146", "*:*")]


@pytest.mark.own_sockets
def test_ss_shows_udp_sockets_bound_to_the_wildcard_as_bound(backend, vips, serve):
    """A UDP socket on 0.0.0.0 (Consul's serf, a DNS forwarder), and a
    dual-stack one on [::] in an IPv4-only vhost, held on its vIP: listed as
    the program bound it, next to one bound to the vIP itself."""
    ip = vips()
    serve(ip, [("udp", "0.0.0.0", 7147), ("udp", ip, 7148), ("udp", "::", 7149)])
    assert sorted(ss(ip, "-lu", backend=backend)) == [("*:7149", "*:*"), ("0.0.0.0:7147", "0.0.0.0:*"),
                                                      (f"{ip}:7148", "0.0.0.0:*")]


@pytest.mark.own_sockets
def test_ss_lists_a_tcp_listener_once_not_again_as_mptcp(backend, vips, serve):
    """`ss -a` asks for MPTCP sockets too, naming the protocol (262) in an
    attribute: the vhost's TCP listener is not one, as on the machine."""
    ip = vips()
    serve(ip, [("tcp", "0.0.0.0", 7150)])
    code, out, err = run_in(ip, ["ss", "-Hna"], backend=backend)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines() if ":7150 " in line] == ["tcp"]


@pytest.mark.own_sockets
def test_ss_shows_a_local_connection_between_loopback_addresses(backend, vips, serve):
    """A client in the vhost connected to its own 127.0.0.1:P: both ends at
    127.0.0.1, the server's at P, as on a host."""
    ip = vips()
    serve(ip, [("tcp", "127.0.0.1", 7147)])
    code, facts, err = run_py("""
        import subprocess
        c = socket.create_connection(("127.0.0.1", 7147))
        out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True).stdout
        fact(rows=[line.split()[-2:] for line in out.splitlines()], me=c.getsockname()[1])
    """, ip=ip, backend=backend)
    assert code == 0, err
    client = f"127.0.0.1:{facts[0]['me']}"
    assert sorted(facts[0]["rows"]) == sorted([[client, "127.0.0.1:7147"], ["127.0.0.1:7147", client]])


@pytest.mark.own_sockets
def test_an_unprivileged_user_in_the_vhost_sees_the_same_listing(backend, vips, serve, test_user):
    ip = vips()
    serve(ip, [("tcp", "0.0.0.0", 7148)])
    assert ss(ip, "-lt", backend=backend, user=test_user.name) == [("0.0.0.0:7148", "0.0.0.0:*")]


@pytest.mark.own_sockets
def test_ordinary_sockets_at_the_listing_descriptors_work_unchanged(backend, vips):
    """The filter stops sends and receives on descriptors 1020-1023 (where
    listings are served): a program that keeps its own sockets there (one
    with many connections) still sends and receives as usual."""
    ip = vips()
    code, facts, err = run_py("""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        os.dup2(a.fileno(), 1020); os.dup2(b.fileno(), 1023)
        x, y = socket.socket(fileno=1020), socket.socket(fileno=1023)
        x.send(b"one"); x.sendmsg([b"two"])  # sendto and sendmsg
        fact(got=[y.recv(10).decode(), y.recvmsg(10)[0].decode()])  # recvfrom and recvmsg
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts == [{"got": ["one", "two"]}]


@pytest.mark.own_sockets
def test_a_listing_received_into_a_bad_buffer_fails_with_efault_not_a_hang(backend, vips):
    """The answer is vaddr's to give: a receive it cannot write fails as the
    kernel's would, rather than waiting on a socket that holds nothing."""
    code, facts, err = run_py("""
        import ctypes, struct
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
        s.bind((0, 0))
        body = struct.pack("=BBBxI48s", socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFFFFF, bytes(48))
        s.send(struct.pack("=IHHII", 16 + len(body), 20, 0x301, 1, 0) + body)
        libc = ctypes.CDLL(None, use_errno=True)
        got = libc.recvfrom(s.fileno(), ctypes.c_void_p(8), 4096, 0, None, None)
        fact(fd=s.fileno(), got=got, errno=ctypes.get_errno())
    """, ip=vips(), backend=backend, timeout=10)
    assert code == 0, err
    assert facts == [{"fd": 1023, "got": -1, "errno": errno.EFAULT}]

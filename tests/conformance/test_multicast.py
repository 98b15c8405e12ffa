"""IPv4 multicast between vhosts, as on one network segment of their own:
the discovery of mDNS, corosync's udp transport, JGroups and Hazelcast.
A group's datagram reaches every member vhost, from the sender's vIP, and
neither leaves the machine nor reaches the machine's own sockets.

The suite guards the groups used here with unreachable routes in the main
table (tests/conftest.py), so a datagram that took the machine's route for
224/4 (off the machine, through eth0) fails with ENETUNREACH instead."""
import errno
import socket

import pytest

from tests.lab import run_py, start_py, wait_fact

GROUP = "239.255.76.1"

# A receiver as most programs write one: the wildcard at the group's port,
# joined on "any" interface.  family AF_INET6 is Java's dual-stack socket,
# which joins an IPv4 group at the IPv4 level.
RECEIVE = """
    family = socket.{family}
    r = socket.socket(family, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    r.bind(("{bind}", {port}))
    mreq = socket.inet_aton("{group}") + socket.inet_aton("0.0.0.0") + b"\\0" * 4
    r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    fact(ready=1)
    r.settimeout({wait})
    got = []
    try:
        while True:
            data, peer = r.recvfrom(100)
            got.append([data.decode(), peer[0].replace("::ffff:", "")])
    except socket.timeout:
        pass
    fact(got=got)
"""

SEND = """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    {setup}
    try:
        for port in {ports}:
            s.sendto(b"{text}", ("{group}", port))
        fact(sent=1)
    except OSError as e:
        fact(errno=e.errno)
"""


def _receiver(reap, ip, backend, port, bind="", family="AF_INET", wait=2.5):
    proc = reap(start_py(RECEIVE.format(family=family, bind=bind, port=port, group=GROUP, wait=wait),
                         ip=ip, backend=backend))
    assert wait_fact(proc) == {"ready": 1}
    return proc


def _send(ip, backend, ports, text="hello", setup=""):
    code, facts, err = run_py(SEND.format(setup=setup, ports=list(ports), text=text, group=GROUP),
                              ip=ip, backend=backend)
    assert code == 0 and facts, err
    return facts[0]


def _machine_member(port):
    """The machine's own socket on the port, joined to the group on lo."""
    m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    m.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    m.bind(("", port))
    m.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(GROUP) + socket.inet_aton("0.0.0.0") + (1).to_bytes(4, "little"))
    m.settimeout(0.5)
    return m


@pytest.mark.own_segment
def test_a_datagram_to_a_group_reaches_every_member_vhost_from_the_senders_vip(backend, vips, reap):
    """Two member vhosts and the sender's own (a host hears its own group
    traffic, IP_MULTICAST_LOOP); the machine's member on the port hears none."""
    port = 7170
    a, b, sender = vips(), vips(), vips()
    receivers = [_receiver(reap, ip, backend, port) for ip in (a, b)]
    own = _receiver(reap, sender, backend, port)
    with _machine_member(port) as machine:
        assert _send(sender, backend, [port]) == {"sent": 1}
        for proc in receivers + [own]:
            assert wait_fact(proc, timeout=8) == {"got": [["hello", sender]]}
        with pytest.raises(socket.timeout):
            machine.recvfrom(100)


@pytest.mark.own_segment
@pytest.mark.parametrize("setup", [
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(MY_IP))",
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('0.0.0.0') * 2 + (2).to_bytes(4, 'little'))",
    "s.bind((MY_IP, 0))",
    "s.connect(('239.255.76.1', 1))",
    "s.setsockopt(socket.IPPROTO_IP, 11, 1)",  # IP_RECVERR: a send reports what the device did with it
], ids=["multicast-if-address", "multicast-if-index", "bound", "connected", "recverr"])
def test_a_group_datagram_leaves_by_lo_whatever_interface_the_sender_names(backend, vips, reap, setup):
    """IP_MULTICAST_IF naming the vIP or the machine's second interface, a
    socket bound first, a connected one: each datagram reaches the member.
    With IP_RECVERR the send succeeds, as a send to a group does on a host."""
    port, member, sender = 7171, vips(), vips()
    proc = _receiver(reap, member, backend, port)
    assert _send(sender, backend, [port], setup=setup.replace("MY_IP", repr(sender))) == {"sent": 1}
    assert wait_fact(proc, timeout=8) == {"got": [["hello", sender]]}


@pytest.mark.own_segment
def test_a_dual_stack_socket_joined_to_an_ipv4_group_hears_it(backend, vips, reap):
    """Java's MulticastSocket: an AF_INET6 socket on [::] joining at the IPv4 level."""
    port, member, sender = 7172, vips(), vips()
    proc = _receiver(reap, member, backend, port, bind="::", family="AF_INET6")
    assert _send(sender, backend, [port]) == {"sent": 1}
    assert wait_fact(proc, timeout=8) == {"got": [["hello", sender]]}


@pytest.mark.own_segment
@pytest.mark.parametrize("family,bound", [("AF_INET", GROUP), ("AF_INET6", "::ffff:" + GROUP)], ids=["ipv4", "dual-stack"])
def test_a_socket_bound_to_the_group_hears_the_group_at_its_port_and_no_unicast(backend, vips, reap, family, bound):
    """corosync and JGroups bind the receiving socket to the group address
    (JGroups on Java's dual-stack socket), and another socket of theirs to
    the same port on the host's address."""
    port, member, sender = 7173, vips(), vips()
    proc = reap(start_py(f"""
        g = socket.socket(socket.{family}, socket.SOCK_DGRAM)
        g.bind(("{bound}", {port}))
        g.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("{GROUP}") + socket.inet_aton("0.0.0.0"))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("", {port}))
        fact(names=[list(g.getsockname()[:2]), list(u.getsockname())])
        g.settimeout(2.5); u.settimeout(0.3)
        heard = {{"group": [], "unicast": []}}
        for name, sock in (("group", g), ("unicast", u)):
            try:
                while True:
                    heard[name].append(sock.recv(100).decode())
            except socket.timeout:
                pass
        fact(**heard)
    """, ip=member, backend=backend))
    assert wait_fact(proc) == {"names": [[bound, port], [member, port]]}
    assert _send(sender, backend, [port, port + 1], text="group") == {"sent": 1}
    code, facts, err = run_py(f"""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"unicast", ("{member}", {port}))
    """, ip=sender, backend=backend)
    assert code == 0, err
    assert wait_fact(proc, timeout=8) == {"group": ["group"], "unicast": ["unicast"]}


@pytest.mark.own_segment
def test_joining_a_group_on_each_interface_is_one_membership_that_the_last_leave_ends(backend, vips, reap):
    """avahi and zeroconf join on every interface they see; in a vhost they
    are all lo, and the joins and leaves still succeed as on a host."""
    port, member, sender = 7174, vips(), vips()
    proc = reap(start_py(f"""
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("", {port})); r.settimeout(1.5)
        mreqs = [socket.inet_aton("{GROUP}") + socket.inet_aton(a) for a in ("127.0.0.1", "{member}")]
        for m in mreqs:
            r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, m)
        r.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqs[0])
        fact(ready=1)
        def heard():
            try:
                return r.recv(100).decode()
            except socket.timeout:
                return None
        fact(one_left=heard())
        r.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqs[1])
        fact(ready=2)
        fact(none_left=heard())
        try:
            r.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqs[1])
        except OSError as e:
            fact(third_leave=e.errno)
    """, ip=member, backend=backend))
    assert wait_fact(proc) == {"ready": 1}
    _send(sender, backend, [port], text="first")
    assert wait_fact(proc, timeout=5) == {"one_left": "first"}
    assert wait_fact(proc) == {"ready": 2}
    _send(sender, backend, [port], text="second")
    assert wait_fact(proc, timeout=5) == {"none_left": None}
    assert wait_fact(proc) == {"third_leave": errno.EADDRNOTAVAIL}


@pytest.mark.own_segment
def test_a_partition_cuts_a_group_between_the_hosts_it_separates(backend, cli, vips, reap):
    port, cut, kept, sender = 7175, vips(), vips(), vips()
    # Cut first: the first partition may compile and attach the shaping
    # program, which on a slow machine (a minute in an emulated guest)
    # outlasts the receivers' wait.
    assert cli("partition", cut, f"{kept},{sender}", timeout=180).returncode == 0
    try:
        receivers = {ip: _receiver(reap, ip, backend, port) for ip in (cut, kept)}
        assert _send(sender, backend, [port]) == {"sent": 1}
        assert wait_fact(receivers[cut], timeout=8) == {"got": []}
        assert wait_fact(receivers[kept], timeout=8) == {"got": [["hello", sender]]}
    finally:
        assert cli("heal").returncode == 0

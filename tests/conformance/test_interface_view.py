"""A vhost's view of itself: programs that discover their address (getifaddrs,
`hostname -I`, netlink dumps, Go's net.Interfaces) find the vhost's, on an
eth0 next to lo, and changes made through that view stay in it."""
import json
import os
import subprocess

import pytest

from tests.conftest import need
from tests.lab import run_in, run_py

ADDRS = """
    import psutil  # getifaddrs(3)
    fact(ifs={name: sorted(a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
              for name, addrs in psutil.net_if_addrs().items()})
"""


def _machine_interfaces():
    import psutil
    return set(psutil.net_if_addrs())


@pytest.mark.own_interfaces
def test_getifaddrs_lists_lo_and_an_eth0_with_the_vhosts_address(backend, vips):
    ip = vips()
    code, facts, err = run_py(ADDRS, ip=ip, backend=backend)
    assert code == 0, err
    assert facts[0]["ifs"] == {"lo": ["127.0.0.1", "::1"], "eth0": [ip]}


@pytest.mark.own_interfaces
@pytest.mark.ipv6
def test_a_dual_stack_vhost_shows_both_addresses_on_eth0(backend, vips, vip6s):
    ip4, ip6 = vips(), vip6s()
    code, facts, err = run_py(ADDRS, ip=[ip4, ip6], backend=backend)
    assert code == 0, err
    assert facts[0]["ifs"]["eth0"] == sorted([ip4, ip6])


@pytest.mark.own_interfaces
def test_hostname_I_prints_the_vhosts_address(backend, vips):
    """NATS and many start scripts take `hostname -I`'s first word as "my address"."""
    need("hostname")
    ip = vips()
    code, out, err = run_in(ip, ["hostname", "-I"], backend=backend)
    assert (code, out.split()) == (0, [ip]), err


@pytest.mark.own_interfaces
def test_netlink_dumps_show_a_subnet_and_a_default_route_through_eth0(backend, vips):
    """`ip` reads netlink directly: addresses with their prefix (programs that
    serve only "local" clients compare against it) and routes."""
    need("ip")
    ip = vips()
    code, out, err = run_in(ip, ["ip", "-j", "-4", "addr", "show"], backend=backend)
    assert code == 0, err
    assert {(a["ifname"], i["local"], i["prefixlen"]) for a in json.loads(out) for i in a["addr_info"]} == \
        {("lo", "127.0.0.1", 8), ("eth0", ip, 24)}
    code, out, err = run_in(ip, ["ip", "-j", "-4", "route", "show"], backend=backend)
    assert code == 0, err
    assert {"dst": "default", "dev": "eth0"}.items() <= next(r for r in json.loads(out) if r["dst"] == "default").items()


@pytest.mark.own_interfaces
def test_route_changes_in_a_vhost_stay_in_its_view(backend, vips):
    """A program that adds a route (a routing daemon, a test's set-up) changes
    its view, never the machine's table."""
    ip, probe = vips(), "198.18.251.0/24"
    code, out, err = run_in(ip, ["sh", "-c", f"ip route add {probe} dev eth0 && ip -4 route show {probe}"],
                            backend=backend)
    assert code == 0, err
    assert probe.split("/")[0] in out
    machine = subprocess.run(["ip", "-4", "route", "show", probe], capture_output=True, text=True).stdout
    assert machine == ""


@pytest.mark.own_interfaces
def test_an_unprivileged_process_cannot_change_interfaces_through_its_view(backend, vips, test_user):
    """The view's netlink socket is handed over by a root daemon; a user
    still may not add links through it (into the machine's namespace or the view)."""
    ip = vips()
    code, out, err = run_in(ip, ["ip", "link", "add", "vaddrprobe0", "netns", "1", "type", "veth",
                                 "peer", "name", "vaddrprobe1"], backend=backend, user=test_user.name)
    assert code != 0 and "Operation not permitted" in err
    assert subprocess.run(["ip", "link", "show", "vaddrprobe0"], capture_output=True).returncode != 0
    code, out, err = run_in(ip, ["hostname", "-I"], backend=backend, user=test_user.name)
    assert (code, out.split()) == (0, [ip]), err  # reading is allowed


def test_host_interfaces_shows_the_machines_interfaces(backend, vips):
    """The way out, for a program that must see or change the machine's routing."""
    code, facts, err = run_py(ADDRS, ip=vips(), backend=backend, host_interfaces=True)
    assert code == 0, err
    assert set(facts[0]["ifs"]) == _machine_interfaces()


@pytest.mark.own_interfaces
def test_a_netlink_socket_opened_many_times_keeps_working(backend, vips):
    """Each socket() is answered by the view daemon: a process that opens
    hundreds (a monitoring loop) gets every one, and no descriptor leaks."""
    ip = vips()
    code, facts, err = run_py("""
        import psutil
        for _ in range(300):
            psutil.net_if_addrs()
        fact(fds=len(os.listdir("/proc/self/fd")), names=sorted(psutil.net_if_addrs()))
    """, ip=ip, backend=backend)
    assert code == 0, err
    assert facts[0]["names"] == ["eth0", "lo"] and facts[0]["fds"] < 10


SOCKET_NAMESPACES = """
    import fcntl
    def ns(sock):  # SIOCGSKNS: the network namespace a socket lives in
        fd = fcntl.ioctl(sock.fileno(), 0x894C)
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    fact(route=ns(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
         generic=ns(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)),
         tcp=ns(socket.socket()), mine=os.readlink("/proc/self/ns/net"))
"""


@pytest.mark.own_interfaces
def test_only_route_netlink_sockets_come_from_the_view(backend, vips):
    """The vhost's processes, their TCP sockets and every other netlink family
    stay in the machine's namespace: traffic never passes through the view."""
    code, facts, err = run_py(SOCKET_NAMESPACES, ip=vips(), backend=backend)
    assert code == 0, err
    machine = os.readlink("/proc/self/ns/net")
    assert facts[0]["mine"] == facts[0]["tcp"] == facts[0]["generic"] == machine
    assert facts[0]["route"] != machine


IOCTLS = """
    import array, fcntl, struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    room = array.array("B", bytes(40 * 16))
    out = fcntl.ioctl(s, 0x8912, struct.pack("=i4xQ", len(room), room.buffer_info()[0]))  # SIOCGIFCONF
    used = struct.unpack("=i4xQ", out)[0]
    listed = room.tobytes()[:used]
    ifconf = sorted([listed[i:i + 16].split(b"\\0")[0].decode(), socket.inet_ntoa(listed[i + 20:i + 24])]
                    for i in range(0, used, 40))
    asked = fcntl.ioctl(s, 0x8915, struct.pack("16s24x", b"eth0"))  # SIOCGIFADDR
    mask = fcntl.ioctl(s, 0x891B, struct.pack("16s24x", b"eth0"))  # SIOCGIFNETMASK
    try:
        fcntl.ioctl(sys.stdout.fileno(), 0x8912, struct.pack("=i4xQ", 0, 0)); not_a_socket = 0
    except OSError as e:
        not_a_socket = e.errno
    fact(ifconf=ifconf, eth0=socket.inet_ntoa(asked[20:24]), mask=socket.inet_ntoa(mask[20:24]),
         index=socket.if_nametoindex("eth0"), not_a_socket=not_a_socket)
"""


@pytest.mark.own_interfaces
def test_interface_ioctls_answer_from_the_vhosts_view(backend, vips):
    """ifconfig, busybox, if_nametoindex and Java's NetworkInterface ask with
    SIOCGIFCONF and SIOCGIF* ioctls, not netlink; on anything but a socket
    the kernel still refuses them."""
    import errno
    ip = vips()
    code, facts, err = run_py(IOCTLS, ip=ip, backend=backend)
    assert code == 0, err
    index = facts[0].pop("index")
    assert facts == [{"ifconf": [["eth0", ip], ["lo", "127.0.0.1"]], "eth0": ip, "mask": "255.255.255.0",
                      "not_a_socket": errno.ENOTTY}]
    code, out, err = run_in(ip, ["ip", "-j", "link", "show", "eth0"], backend=backend)
    assert json.loads(out)[0]["ifindex"] == index


JAVA_INTERFACES = """
import java.net.*;
import java.util.*;
public class Interfaces {
    public static void main(String[] args) throws Exception {
        for (NetworkInterface ni : Collections.list(NetworkInterface.getNetworkInterfaces()))
            for (InetAddress a : Collections.list(ni.getInetAddresses()))
                System.out.println(ni.getName() + " " + a.getHostAddress());
    }
}
"""


def _java_interfaces(ips, backend, tmp_path):
    """(interface, address) pairs Java's NetworkInterface lists in vhost ips."""
    import ipaddress
    java = need("java")
    (tmp_path / "Interfaces.java").write_text(JAVA_INTERFACES)
    code, out, err = run_in(ips, [java, str(tmp_path / "Interfaces.java")], backend=backend, timeout=60)
    assert code == 0, err
    return sorted((name, str(ipaddress.ip_address(addr.split("%")[0])))
                  for name, addr in (line.split() for line in out.splitlines()))


@pytest.mark.own_interfaces
def test_javas_network_interfaces_list_the_vhosts_addresses_only(backend, vips, tmp_path):
    """Java enumerates IPv4 addresses with SIOCGIFCONF and IPv6 ones from
    /proc/net/if_inet6 (the view's, through procview): the machine's IPv6
    addresses are not offered as the vhost's own."""
    ip = vips()
    assert _java_interfaces(ip, backend, tmp_path) == [("eth0", ip), ("lo", "127.0.0.1"), ("lo", "::1")]


@pytest.mark.own_interfaces
@pytest.mark.ipv6
def test_javas_network_interfaces_show_a_dual_stack_vhosts_ipv6_address_on_eth0(backend, vips, vip6s, tmp_path):
    ip, ip6 = vips(), vip6s()
    assert _java_interfaces([ip, ip6], backend, tmp_path) == sorted(
        [("eth0", ip), ("eth0", ip6), ("lo", "127.0.0.1"), ("lo", "::1")])

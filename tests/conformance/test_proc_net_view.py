"""/proc/net inside a vhost is the vhost's own: `netstat` and `lsof -i` read
its sockets at the ports its programs asked for from /proc/net/tcp and udp
(and their v6 twins), in the kernel's layout; `ifconfig`, `route` and
Java's IPv6 addresses read /proc/net/dev, route and if_inet6 from its view
(lo and eth0).  Served to dynamically linked programs (preload/procview.c)."""
import os
import socket

import pytest

from tests.lab import run_py

# The sockets a vhost holds, and the /proc/net/tcp rows it reads back, by inode.
HOLD_AND_READ = """
    a = socket.socket(); a.bind(("0.0.0.0", 7150)); a.listen()
    b = socket.socket(); b.bind(("127.0.0.1", 7151)); b.listen()
    c = socket.create_connection(("127.0.0.1", 7151)); d, _ = b.accept()
    inodes = {{os.fstat(s.fileno()).st_ino: n for n, s in (("a", a), ("b", b), ("c", c), ("d", d))}}
    for path in ("/proc/net/tcp", "/proc/self/net/tcp", f"/proc/{{os.getpid()}}/net/tcp"):
        lines = open(path).read().split("\\n")
        rows = {{}}
        for line in lines[1:-1]:
            f = line.split()
            rows[int(f[9])] = [f[1], f[2], f[3]]
        mine = {{inodes[i]: row for i, row in rows.items() if i in inodes}}
        fact(path=path, head=lines[0], widths=sorted({{len(l) for l in lines[:-1]}}), mine=mine,
             others=len(rows) - len(mine))
"""


def _hex4(ip, port):
    return f"{int.from_bytes(socket.inet_aton(ip), 'little'):08X}:{port:04X}"


@pytest.mark.own_sockets
def test_proc_net_tcp_lists_the_vhosts_sockets_at_their_ports_in_the_kernels_layout(backend, vips):
    """With the machine on 0.0.0.0:7150 too, the vhost's file lists its own
    four sockets only: listeners at the ports asked for (not the ephemeral
    ones held), loopback as 127.0.0.1, the inode of each (lsof and netstat
    -p find the process by it), under the kernel's header and line width."""
    machine = socket.socket()
    machine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    machine.bind(("0.0.0.0", 7150))
    machine.listen()
    try:
        code, facts, err = run_py(HOLD_AND_READ.format(), ip=vips(), backend=backend)
    finally:
        machine.close()
    assert code == 0, err
    with open("/proc/net/tcp") as f:
        kernel_head = f.readline().rstrip("\n")
    assert [f["path"] for f in facts] == ["/proc/net/tcp", "/proc/self/net/tcp", facts[2]["path"]]
    for got in facts:
        assert got["head"] == kernel_head
        assert got["widths"] == [len(kernel_head)]
        assert got["others"] == 0
        mine = got["mine"]
        client_port = mine["c"][0].split(":")[1]
        assert mine["a"] == [_hex4("0.0.0.0", 7150), _hex4("0.0.0.0", 0), "0A"]
        assert mine["b"] == [_hex4("127.0.0.1", 7151), _hex4("0.0.0.0", 0), "0A"]
        assert mine["c"][1:] == [_hex4("127.0.0.1", 7151), "01"] and mine["c"][0].startswith("0100007F:")
        assert mine["d"] == [_hex4("127.0.0.1", 7151), f"0100007F:{client_port}", "01"]


@pytest.mark.own_sockets
@pytest.mark.ipv6
def test_proc_net_udp6_and_tcp6_list_dual_stack_sockets_at_their_ports(backend, vips, vip6s):
    code, facts, err = run_py("""
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u.bind(("::", 7152))
        t = socket.socket(socket.AF_INET6); t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        t.bind(("::", 7153)); t.listen()
        for name in ("udp6", "tcp6"):
            rows = [line.split() for line in open(f"/proc/net/{name}").read().splitlines()[1:]]
            fact(name=name, rows=[r[1:4] for r in rows])
    """, ip=[vips(), vip6s()], backend=backend)
    assert code == 0, err
    wildcard = "0" * 32
    assert facts == [{"name": "udp6", "rows": [[f"{wildcard}:{7152:04X}", f"{wildcard}:0000", "07"]]},
                     {"name": "tcp6", "rows": [[f"{wildcard}:{7153:04X}", f"{wildcard}:0000", "0A"]]}]


@pytest.mark.own_interfaces
@pytest.mark.ipv6
def test_proc_net_interface_files_show_the_vhosts_view(backend, vips, vip6s):
    """if_inet6 (Java's IPv6 addresses), dev (ifconfig's list) and route
    (route -n) hold lo and eth0 with the vhost's addresses, not the machine's."""
    ip, ip6 = vips(), vip6s()
    code, facts, err = run_py("""
        fact(inet6=sorted((l.split()[0], l.split()[5]) for l in open("/proc/net/if_inet6")),
             dev=sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
             route=sorted(l.split()[0] for l in open("/proc/net/route").readlines()[1:]))
    """, ip=[ip, ip6], backend=backend)
    assert code == 0, err
    assert facts == [{"inet6": [["0" * 31 + "1", "lo"], [socket.inet_pton(socket.AF_INET6, ip6).hex(), "eth0"]],
                      "dev": ["eth0", "lo"], "route": ["eth0", "eth0"]}]


@pytest.mark.own_sockets
def test_an_unprivileged_user_reads_the_same_tables(backend, vips, test_user):
    code, facts, err = run_py("""
        s = socket.socket(); s.bind(("0.0.0.0", 7154)); s.listen()
        fact(rows=[l.split()[1] for l in open("/proc/net/tcp").read().splitlines()[1:]])
    """, ip=vips(), backend=backend, user=test_user.name)
    assert code == 0, err
    assert facts == [{"rows": [_hex4("0.0.0.0", 7154)]}]


def test_host_interfaces_reads_the_machines_proc_net(backend, vips):
    """--host-interfaces keeps the machine's view, /proc/net included."""
    code, facts, err = run_py("""
        fact(dev=sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
    """, ip=vips(), backend=backend, host_interfaces=True)
    assert code == 0, err
    with open("/proc/net/dev") as f:
        assert facts == [{"dev": sorted(l.split(":")[0].strip() for l in f.readlines()[2:])}]


@pytest.mark.own_sockets
def test_a_file_named_like_a_served_one_elsewhere_opens_as_it_is(backend, vips, tmp_path):
    """Only /proc/net paths are routed to the view."""
    (tmp_path / "tcp").write_text("mine\n")
    os.chmod(tmp_path, 0o755)
    code, facts, err = run_py(f"fact(elsewhere=open('{tmp_path}/tcp').read())", ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"elsewhere": "mine\n"}]


@pytest.mark.own_unix_names
def test_proc_net_unix_lists_the_vhosts_own_unix_sockets_not_the_machines(backend, vips):
    """netstat -x and lsof -U read /proc/net/unix: a vhost's Unix sockets
    live in its view (their abstract names are its own), so it is read there."""
    name = f"vaddr-procnet-{os.getpid()}"
    machine = socket.socket(socket.AF_UNIX)
    with machine:
        machine.bind(f"\0{name}-machine")
        code, facts, err = run_py(f"""
            u = socket.socket(socket.AF_UNIX); u.bind("\\0{name}-vhost")
            text = open("/proc/net/unix").read()
            fact(mine="@{name}-vhost" in text, machines="@{name}-machine" in text)
        """, ip=vips(), backend=backend)
    assert code == 0, err
    assert facts == [{"mine": True, "machines": False}]

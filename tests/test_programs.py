"""Unmodified third-party programs from Debian's packages, as servers and
clients in vhosts: C programs through libc, a static binary, and Go programs,
which make their own system calls."""
import json
import subprocess
import time

import pytest

import vaddr
from vaddr import maps
from tests.conftest import need
from tests.lab import etcd_argv, run_in, start_py, wait_fact, wait_listening

pytestmark = pytest.mark.kernel


def test_nginx_and_curl_on_the_same_port_in_three_vhosts(tmp_path, vips, reap):
    """Three nginx servers on port 8080 (IPv4 and IPV6_V6ONLY [::], as its
    default config does); curl in a fourth vhost reaches each, and each
    server's access log names the client's vIP."""
    nginx, curl = need("nginx"), need("curl")
    servers = [vips() for _ in range(3)]
    client = vips()
    from tests.lab import nginx_site
    for i, ip in enumerate(servers):
        conf = nginx_site(tmp_path / f"n{i}", f"server {i}\n", listen="listen 8080; listen [::]:8080;")
        reap(vaddr.spawn([nginx, "-c", str(conf), "-p", str(conf.parent)], ip=ip))
    for ip in servers:
        wait_listening(ip, 8080)
    for i, ip in enumerate(servers):
        code, out, err = run_in(client, [curl, "-sS", f"http://{ip}:8080/"])
        assert (code, out) == (0, f"server {i}\n"), err
        log = (tmp_path / f"n{i}" / "access.log").read_text()
        assert log.split()[0] == client


def test_socat_udp_echo_sees_vips(vips, reap):
    socat = need("socat")
    server, client = vips(), vips()
    reap(vaddr.spawn([socat, "UDP-RECVFROM:7200,fork", "SYSTEM:echo $SOCAT_PEERADDR"], ip=server))
    wait_listening(server, 7200, udp=True)
    code, out, err = run_in(client, [socat, "-T1", "-", f"UDP:{server}:7200"], input="hello\n")
    assert out.strip() == client, err


def test_static_busybox_nc_is_served_by_the_kernel_hooks(vips, reap):
    """A static binary: two servers on one port in two vhosts, and a client
    whose connection arrives from its vIP."""
    busybox = need("/bin/busybox")
    out = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout
    assert "statically linked" in out, "busybox-static should provide a static /bin/busybox"
    a, b, client = vips(), vips(), vips()
    for ip in (a, b):
        reap(vaddr.spawn([busybox, "nc", "-l", "-p", "7201"], ip=ip, stdout=vaddr.DEVNULL))
        wait_listening(ip, 7201)
    peer_reporter = start_py("""
        s = socket.socket(); s.bind(("", 7203)); s.listen(); fact(ready=1)
        c, peer = s.accept(); fact(peer=peer[0])
    """, ip=b)
    reap(peer_reporter)
    wait_fact(peer_reporter)
    proc = vaddr.spawn([busybox, "nc", b, "7203"], ip=client, stdin=vaddr.DEVNULL, stdout=vaddr.DEVNULL)
    reap(proc)
    assert wait_fact(peer_reporter) == {"peer": client}


def test_iperf3_between_vhosts_reports_vips(vips, reap):
    iperf3 = need("iperf3")
    server, client = vips(), vips()
    srv = vaddr.spawn([iperf3, "-s", "-1", "-J", "-p", "7202"], ip=server, stdout=vaddr.PIPE)
    reap(srv)
    wait_listening(server, 7202)
    code, out, err = run_in(client, [iperf3, "-c", server, "-p", "7202", "-t", "1", "-J"], timeout=30)
    assert code == 0, err
    report = json.loads(out)
    conn = report["start"]["connected"][0]
    assert (conn["local_host"], conn["remote_host"]) == (client, server)
    from tests.lab import communicate
    server_report = json.loads(communicate(srv, 15)[0])
    assert server_report["start"]["connected"][0]["remote_host"] == client


def test_three_member_etcd_cluster_in_go(tmp_path, vips, reap):
    """etcd and etcdctl are Go programs: no libc in their socket path, so only
    kernel hooks can give them addresses.  All members use the same ports."""
    etcd, etcdctl = need("etcd"), need("etcdctl")
    members = {f"n{i}": vips() for i in range(3)}
    for name, ip in members.items():
        reap(vaddr.spawn(etcd_argv(etcd, name, ip, members, tmp_path / name), ip=ip,
                         stdout=vaddr.DEVNULL, stderr=vaddr.DEVNULL))
    client = vips()
    ips = list(members.values())
    endpoints = ",".join(f"http://{ip}:2379" for ip in ips)
    deadline = time.monotonic() + 30
    while True:
        code, out, err = run_in(client, [etcdctl, f"--endpoints={endpoints}", "endpoint", "health"])
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert code == 0, err
    assert run_in(client, [etcdctl, f"--endpoints=http://{ips[0]}:2379", "put", "greeting", "hi"])[0] == 0
    code, out, err = run_in(client, [etcdctl, f"--endpoints=http://{ips[2]}:2379", "get", "greeting",
                                     "--print-value-only"])
    assert (code, out.strip()) == (0, "hi"), err
    # What the members saw of each other's connections, not what we told
    # them to advertise: each member's peer and client sockets, by ss, are
    # on its own vIP, and its established peer links come from the others'.
    # (Go listens dual-stack: ss shows [::ffff:vIP], at the real ports of
    # remapped listeners; vaddr's listeners map names the ports they serve.)
    steered = maps.steered_listeners()
    for name, ip in members.items():
        listening = _plain(subprocess.run(["ss", "-Hltn", "src", ip], capture_output=True, text=True).stdout)
        assert len(listening.splitlines()) == 2, listening
        assert {(ip, 2379), (ip, 2380)} <= steered, steered
    peers = _plain(subprocess.run(["ss", "-Htn", "state", "established", "dst", f"{ips[0]}:2380"],
                                  capture_output=True, text=True).stdout)
    sources = {line.split()[-2].rsplit(":", 1)[0] for line in peers.splitlines()}
    assert sources == {ips[1], ips[2]}, peers


def _plain(ss_output):
    """ss's v4-mapped [::ffff:a.b.c.d]:p as a.b.c.d:p."""
    return ss_output.replace("[::ffff:", "").replace("]:", ":")


@pytest.mark.parametrize("backend", ["ebpf", "preload"])
def test_redis_servers_share_a_port_and_see_the_client(vips, reap, backend):
    """Two redis-servers on 6379 in two vhosts; redis-cli in a third.  In
    protected mode Redis refuses the client (it is another host, not
    loopback); with it off, CLIENT LIST names the client's vIP."""
    server_bin, cli_bin = need("redis-server"), need("redis-cli")
    a, b, client = vips(), vips(), vips()
    reap(vaddr.spawn([server_bin, "--save", "", "--port", "6379"], ip=a, backend=backend, stdout=vaddr.DEVNULL))
    reap(vaddr.spawn([server_bin, "--save", "", "--port", "6379", "--protected-mode", "no"], ip=b, backend=backend,
                     stdout=vaddr.DEVNULL))
    deadline = time.monotonic() + 15
    while True:  # under the shim the listener is on a real address ss cannot name: ask instead
        code, out, err = run_in(client, [cli_bin, "-h", a, "ping"], backend=backend)
        if out.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "DENIED" in out, out + err
    while run_in(client, [cli_bin, "-h", b, "ping"], backend=backend)[1].strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not answer"
        time.sleep(0.1)
    code, out, err = run_in(client, [cli_bin, "-h", b, "client", "list"], backend=backend)
    assert code == 0 and f"addr={client}:" in out and f"laddr={b}:6379" in out, out + err

"""Unmodified third-party programs from Debian's packages, as servers and
clients in vhosts: C programs through libc, a static binary, and Go programs,
which make their own system calls."""
import json
import os
import subprocess
import time

import pytest

import vaddr
from tests.conftest import need

pytestmark = pytest.mark.kernel


def wait_port(ip, port, timeout=15):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {ip}:{port}")


def wait_listening(ip, port, timeout=15):
    """Until a socket listens on ip:port, seen by ss without connecting to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hlntu", "src", f"{ip}:{port}"], capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {ip}:{port}")


def run_in(ip, *argv, timeout=30):
    proc = vaddr.spawn(list(argv), ip=ip, stdout=vaddr.PIPE, stderr=vaddr.PIPE)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    return proc.wait(timeout=timeout), out, err


@pytest.fixture
def stop():
    procs = []
    yield procs.append
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_nginx_and_curl_on_the_same_port_in_three_vhosts(tmp_path, vips, stop):
    """Three nginx servers on port 8080 (IPv4 and IPV6_V6ONLY [::], as its
    default config does); curl in a fourth vhost reaches each, and each
    server's access log names the client's vIP."""
    nginx, curl = need("nginx"), need("curl")
    servers = [vips() for _ in range(3)]
    client = vips()
    from tests.lab import nginx_site
    for i, ip in enumerate(servers):
        conf = nginx_site(tmp_path / f"n{i}", f"server {i}\n", listen="listen 8080; listen [::]:8080;")
        stop(vaddr.spawn([nginx, "-c", str(conf), "-p", str(conf.parent)], ip=ip))
    for ip in servers:
        wait_port(ip, 8080)
    for i, ip in enumerate(servers):
        code, out, err = run_in(client, curl, "-sS", f"http://{ip}:8080/")
        assert (code, out) == (0, f"server {i}\n"), err
        log = (tmp_path / f"n{i}" / "access.log").read_text()
        assert log.split()[0] == client


def test_socat_udp_echo_sees_vips(vips, stop):
    socat = need("socat")
    server, client = vips(), vips()
    stop(vaddr.spawn([socat, "UDP-RECVFROM:7200,fork", "SYSTEM:echo $SOCAT_PEERADDR"], ip=server))
    wait_listening(server, 7200)
    proc = vaddr.spawn([socat, "-T2", "-", f"UDP:{server}:7200"], ip=client,
                       stdin=vaddr.PIPE, stdout=vaddr.PIPE, stderr=vaddr.PIPE)
    proc.stdin.write(b"hello\n")
    proc.stdin.close()
    assert proc.stdout.readline().decode().strip() == client
    proc.kill()
    proc.wait()


def test_static_busybox_nc_is_served_by_the_kernel_hooks(vips, stop):
    """A static binary: two servers on one port in two vhosts, and a client
    whose connection arrives from its vIP."""
    busybox = need("/bin/busybox")
    out = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout
    assert "statically linked" in out, "busybox-static should provide a static /bin/busybox"
    from tests.lab import start_py, wait_fact
    a, b, client = vips(), vips(), vips()
    for ip in (a, b):
        stop(vaddr.spawn([busybox, "nc", "-l", "-p", "7201"], ip=ip, stdout=vaddr.DEVNULL))
        wait_listening(ip, 7201)
    peer_reporter = start_py("""
        s = socket.socket(); s.bind(("", 7203)); s.listen(); fact(ready=1)
        c, peer = s.accept(); fact(peer=peer[0])
    """, ip=b)
    stop(peer_reporter)
    wait_fact(peer_reporter)
    proc = vaddr.spawn([busybox, "nc", b, "7203"], ip=client, stdin=vaddr.DEVNULL, stdout=vaddr.DEVNULL)
    stop(proc)
    assert wait_fact(peer_reporter) == {"peer": client}


def test_iperf3_between_vhosts_reports_vips(vips, stop):
    iperf3 = need("iperf3")
    server, client = vips(), vips()
    srv = vaddr.spawn([iperf3, "-s", "-1", "-J", "-p", "7202"], ip=server, stdout=vaddr.PIPE)
    stop(srv)
    wait_listening(server, 7202)
    code, out, err = run_in(client, iperf3, "-c", server, "-p", "7202", "-t", "1", "-J", timeout=30)
    assert code == 0, err
    report = json.loads(out)
    conn = report["start"]["connected"][0]
    assert (conn["local_host"], conn["remote_host"]) == (client, server)
    server_report = json.loads(srv.stdout.read().decode())
    assert server_report["start"]["connected"][0]["remote_host"] == client


def test_three_member_etcd_cluster_in_go(tmp_path, vips, stop):
    """etcd and etcdctl are Go programs: no libc in their socket path, so only
    kernel hooks can give them addresses.  All members use the same ports."""
    etcd, etcdctl = need("etcd"), need("etcdctl")
    ips = [vips() for _ in range(3)]
    cluster = ",".join(f"n{i}=http://{ip}:2380" for i, ip in enumerate(ips))
    for i, ip in enumerate(ips):
        stop(vaddr.spawn([etcd, "--name", f"n{i}", "--data-dir", str(tmp_path / f"n{i}"),
                          "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", f"http://{ip}:2379",
                          "--listen-peer-urls", "http://0.0.0.0:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                          "--initial-cluster", cluster, "--initial-cluster-state", "new",
                          "--heartbeat-interval", "50", "--election-timeout", "500"],
                         ip=ip, stdout=vaddr.DEVNULL, stderr=vaddr.DEVNULL))
    client = vips()
    endpoints = ",".join(f"http://{ip}:2379" for ip in ips)
    deadline = time.monotonic() + 30
    while True:
        code, out, err = run_in(client, etcdctl, f"--endpoints={endpoints}", "endpoint", "health")
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert code == 0, err
    assert run_in(client, etcdctl, f"--endpoints=http://{ips[0]}:2379", "put", "greeting", "hi")[0] == 0
    code, out, err = run_in(client, etcdctl, f"--endpoints=http://{ips[2]}:2379", "get", "greeting", "--print-value-only")
    assert (code, out.strip()) == (0, "hi"), err
    code, out, err = run_in(client, etcdctl, f"--endpoints=http://{ips[1]}:2379", "member", "list", "-w", "json")
    peers = sorted(m["peerURLs"][0] for m in json.loads(out)["members"])
    assert peers == sorted(f"http://{ip}:2380" for ip in ips)


@pytest.mark.parametrize("backend", ["ebpf", "preload"])
def test_redis_servers_share_a_port_and_see_the_client(vips, stop, backend):
    """Two redis-servers on 6379 in two vhosts; redis-cli in a third.  In
    protected mode Redis refuses the client (it is another host, not
    loopback); with it off, CLIENT LIST names the client's vIP."""
    server_bin, cli_bin = need("redis-server"), need("redis-cli")
    a, b, client = vips(), vips(), vips()
    stop(vaddr.spawn([server_bin, "--save", "", "--port", "6379"], ip=a, backend=backend, stdout=vaddr.DEVNULL))
    stop(vaddr.spawn([server_bin, "--save", "", "--port", "6379", "--protected-mode", "no"], ip=b, backend=backend,
                     stdout=vaddr.DEVNULL))
    deadline = time.monotonic() + 15
    while True:  # under the shim the listener is on a real address ss cannot name: ask instead
        code, out, err = run_in_backend(client, backend, cli_bin, "-h", a, "ping")
        if out.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "DENIED" in out, out + err
    while run_in_backend(client, backend, cli_bin, "-h", b, "ping")[1].strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not answer"
        time.sleep(0.1)
    code, out, err = run_in_backend(client, backend, cli_bin, "-h", b, "client", "list")
    assert code == 0 and f"addr={client}:" in out and f"laddr={b}:6379" in out, out + err


def run_in_backend(ip, backend, *argv):
    proc = vaddr.spawn(list(argv), ip=ip, backend=backend, stdout=vaddr.PIPE, stderr=vaddr.PIPE)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    return proc.wait(timeout=30), out, err

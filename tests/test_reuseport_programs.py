"""Real servers that set SO_REUSEPORT by default (HAProxy on every listener,
unbound with more than one thread), in vhosts on a port that the machine's own
server holds on 0.0.0.0, as a laptop's sshd or dev server holds its port."""
import re
import socket

import pytest

import vaddr
from tests.conftest import need
from tests.lab import run_in, until

pytestmark = pytest.mark.kernel


@pytest.fixture
def machine_port():
    """A port the machine's own servers hold on 0.0.0.0, TCP and UDP."""
    tcp = socket.socket()
    tcp.bind(("0.0.0.0", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("0.0.0.0", port))
    except OSError:
        udp.close()
        tcp.close()
        pytest.skip(f"UDP port {port} is taken on this machine")
    yield port, tcp
    tcp.close()
    udp.close()


HAPROXY_CFG = """
global
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend web
    bind *:{port}
    http-request return status 200 content-type text/plain string "{text}"
"""


def test_haproxy_serves_and_reloads_on_a_port_the_machine_holds(tmp_path, vips, reap, machine_port):
    """HAProxy binds with SO_REUSEPORT, and a reload (-sf) binds the port
    again while the old process still holds it; a client in another vhost
    gets the new answer, logged from its vIP, and the machine's loopback
    still reaches the machine's server."""
    haproxy, curl = need("haproxy"), need("curl")
    port, machine = machine_port
    server_ip, client_ip = vips(), vips()
    for version in ("v1", "v2"):
        (tmp_path / f"{version}.cfg").write_text(HAPROXY_CFG.format(port=port, text=version))
    log = open(tmp_path / "haproxy.log", "wb")
    old = reap(vaddr.spawn([haproxy, "-db", "-f", str(tmp_path / "v1.cfg")], ip=server_ip, stdout=log,
                           stderr=vaddr.STDOUT))

    def answer():
        code, out, _ = run_in(client_ip, [curl, "-s", "-m", "2", f"http://{server_ip}:{port}/"])
        return code == 0 and out.strip()
    assert until(answer, "haproxy did not answer") == "v1"
    new = reap(vaddr.spawn([haproxy, "-db", "-f", str(tmp_path / "v2.cfg"), "-sf", str(old.pid)], ip=server_ip,
                           stdout=log, stderr=vaddr.STDOUT))
    until(lambda: answer() == "v2", "the reloaded haproxy did not answer")
    old.wait(timeout=10)
    assert new.poll() is None
    assert answer() == "v2"
    clients = set(re.findall(r"^(\S+):\d+ \[", (tmp_path / "haproxy.log").read_text(), re.M))
    assert clients == {client_ip}, clients
    c = socket.create_connection(("127.0.0.1", port), timeout=3)
    machine.accept()[0].close()
    c.close()


UNBOUND_CONF = """
server:
    interface: 0.0.0.0
    port: {port}
    num-threads: 2
    access-control: 0.0.0.0/0 allow
    do-daemonize: no
    username: ""
    chroot: ""
    pidfile: ""
    use-syslog: no
    logfile: "{log}"
    log-queries: yes
    local-zone: "lab.test." static
    local-data: "web.lab.test. A 198.18.0.77"
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unbound_with_two_threads_answers_on_a_port_the_machine_holds(tmp_path, vips, reap, machine_port,
                                                                    transport):
    """unbound opens a SO_REUSEPORT socket per thread: both must start next
    to the machine's 0.0.0.0 sockets on the port, and log the client's vIP."""
    unbound, dig = need("unbound"), need("dig")
    port, _ = machine_port
    server_ip, client_ip = vips(), vips()
    log = tmp_path / "unbound.log"
    conf = tmp_path / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(port=port, log=log))
    server = reap(vaddr.spawn([unbound, "-d", "-c", str(conf)], ip=server_ip, stderr=vaddr.DEVNULL))
    query = [dig, f"@{server_ip}", "-p", str(port), "web.lab.test", "+short", "+time=1", "+tries=1"]
    query += ["+tcp"] if transport == "tcp" else []

    def answer():
        code, out, _ = run_in(client_ip, query)
        return code == 0 and out.strip()
    assert until(answer, "unbound did not answer") == "198.18.0.77"
    assert server.poll() is None
    logged = set(re.findall(r"info: (\S+) web\.lab\.test\. A IN", log.read_text()))
    assert logged == {client_ip}, log.read_text()[-800:]

"""Real programs that take a vhost for a whole host: clients with no address
given (they dial localhost), servers on 127.0.0.1, clients that bind before
they connect, and a database stopped the way an operator stops it."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys

import psutil
import pytest

import vaddr
from tests.conftest import need
from tests.lab import run_in, until, run_py

pytestmark = pytest.mark.kernel


def test_redis_cli_with_no_arguments_reaches_its_own_vhosts_redis(vips, reap):
    """Debian's redis.conf binds 127.0.0.1 and ::1 with protected mode on;
    redis-cli with no -h dials 127.0.0.1:6379.  Two such vhosts: each client
    reaches its own server, which sees it as a local client."""
    server, cli = need("redis-server"), need("redis-cli")
    ips = [vips(), vips()]
    for ip in ips:
        reap(vaddr.spawn([server, "--save", "", "--bind", "127.0.0.1", "-::1"], ip=ip, stdout=vaddr.DEVNULL))
    for ip in ips:
        until(lambda: run_in(ip, [cli, "ping"])[1].strip() == "PONG", f"redis in {ip} did not answer")
        assert run_in(ip, [cli, "set", "who", ip])[1].strip() == "OK"
    for ip in ips:
        assert run_in(ip, [cli, "get", "who"])[1].strip() == ip
        clients = run_in(ip, [cli, "client", "list"])[1]
        assert "addr=127.0.0.1:" in clients and "laddr=127.0.0.1:6379" in clients, clients


def _pg_bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return need(found[-1] if found else name)


def _initdb(tmp_path, name):
    data = tmp_path / name
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    data.chmod(0o700)
    subprocess.run(["runuser", "-u", "postgres", "--", _pg_bin("initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True)
    return data


def _postgres(data, ip, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # listen_addresses='localhost' is the packaged default: 127.0.0.1 and ::1 where
        # /etc/hosts names both localhost (not on every CI image: so both, by address).
        return vaddr.spawn([_pg_bin("postgres"), "-D", str(data), "-k", str(data), "-c",
                            "listen_addresses=127.0.0.1,::1"],
                           ip=ip, user="postgres", stdout=fd, stderr=fd)
    finally:
        os.close(fd)


def _psql(ip, sql, host="localhost"):
    return run_in(ip, [_pg_bin("psql"), "-h", host, "-U", "postgres", "-At", "-c", sql], user="postgres")


def test_two_postgresql_servers_each_on_localhost_5432(shared_dir, vips, cli):
    tmp_path = shared_dir
    need("runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (make setup installs postgresql)")
    ips = [vips(), vips()]
    procs = []
    try:
        for n, ip in enumerate(ips):
            data = _initdb(tmp_path, f"pg{n}")
            procs.append(_postgres(data, ip, tmp_path / f"pg{n}.log"))
        for n, ip in enumerate(ips):
            until(lambda: _psql(ip, "select 1")[0] == 0, f"postgres in {ip} did not answer")
            code, out, err = _psql(ip, "select current_setting('data_directory'), inet_client_addr(), "
                                       "inet_server_addr()")
            assert code == 0, err
            assert out.strip() == f"{tmp_path / f'pg{n}'}|127.0.0.1|127.0.0.1", out
            # Its IPV6_V6ONLY socket on ::1 (listen_addresses=localhost) is its own too.
            code, out, err = _psql(ip, "select current_setting('data_directory'), inet_client_addr(), "
                                       "inet_server_addr()", host="::1")
            assert code == 0, err
            assert out.strip() == f"{tmp_path / f'pg{n}'}|::1|::1", out
    finally:
        for ip, proc in zip(ips, procs):
            cli("rm", ip)  # postgres and its children: the whole vhost
            proc.wait()


def test_vaddr_rm_stops_postgresql_cleanly(shared_dir, vips, cli):
    """SIGTERM first, as an operator would: the next start needs no crash recovery."""
    need("runuser")
    ip = vips()
    data = _initdb(shared_dir, "pg")
    log = shared_dir / "pg.log"
    _postgres(data, ip, log)
    until(lambda: _psql(ip, "select 1")[0] == 0, "postgres did not answer")
    assert _psql(ip, "create table t (x int); insert into t values (42)")[0] == 0
    rm = cli("rm", ip)
    assert rm.returncode == 0 and "SIGKILL" not in rm.stdout, rm.stdout + rm.stderr
    assert "database system is shut down" in log.read_text()
    proc = _postgres(data, ip, log)
    try:
        until(lambda: _psql(ip, "select x from t")[1].strip() == "42", "postgres did not come back")
        assert "not properly shut down" not in log.read_text()
    finally:
        cli("rm", ip)
        proc.wait()


@pytest.fixture
def machine_dns():
    """The machine's own DNS ports held on the wildcard, UDP and TCP, as a
    laptop's resolver or a CI runner's dnsmasq holds them (already held: so
    much the better)."""
    import socket
    held = []
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", 53))
        except OSError:
            s.close()
            continue
        if kind == socket.SOCK_STREAM:
            s.listen()
        held.append(s)
    yield
    for s in held:
        s.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dig_against_dnsmasq_is_logged_from_the_clients_vip(tmp_path, vips, reap, machine_dns, transport):
    """dig binds its socket before it sends: the query must still come from
    the client's vIP, not 127.0.0.1.  Over TCP, dnsmasq in its default
    wildcard mode answers only clients on one of its interfaces' subnets:
    it must find the vhost's eth0 (it read the machine's and closed every
    connection before the interface view).  All on port 53, which the
    machine holds on 0.0.0.0 too; dig from the machine gets an answer."""
    dnsmasq, dig = need("dnsmasq"), need("dig")
    server_ip, client_ip = vips(), vips()
    while client_ip.rsplit(".", 1)[0] != server_ip.rsplit(".", 1)[0]:  # neighbours on one /24
        server_ip, client_ip = client_ip, vips()  # (drawing only the client never ended past a /24's last)
    log = tmp_path / "dnsmasq.log"
    reap(vaddr.spawn([dnsmasq, "-k", "--no-resolv", "--no-hosts", "--address=/lab.test/198.18.0.99", "--log-queries",
                      f"--log-facility={log}", "--user=root"], ip=server_ip, stderr=vaddr.DEVNULL))
    query = [dig, f"@{server_ip}", "lab.test", "+short", "+time=1", "+tries=1"] + (["+tcp"] if transport == "tcp" else [])
    def answer():
        code, out, _ = run_in(client_ip, query)
        return code == 0 and out.strip()
    out = until(answer, "dnsmasq did not answer")
    assert out == "198.18.0.99"
    assert f"query[A] lab.test from {client_ip}" in log.read_text()
    from_machine = subprocess.run(query, capture_output=True, text=True, timeout=10)
    assert (from_machine.returncode, from_machine.stdout.strip()) == (0, "198.18.0.99"), from_machine


def test_a_nats_cluster_with_default_settings_advertises_vips(tmp_path, vips, reap):
    """NATS listens on 0.0.0.0 and tells clients where its peers are from its
    interfaces' addresses (Go's net.Interfaces, raw netlink): every address it
    advertises, and every peer it logs, must be a vIP."""
    nats = need("nats-server")
    ips = [vips() for _ in range(3)]
    routes = ",".join(f"nats://{ip}:6222" for ip in ips)
    logs = [tmp_path / f"n{i}.log" for i in range(3)]
    for i, ip in enumerate(ips):
        reap(vaddr.spawn([nats, "-n", f"n{i}", "--cluster", "nats://0.0.0.0:6222", "--routes", routes,
                          "-l", str(logs[i])], ip=ip, stderr=vaddr.DEVNULL))

    def info():
        code, facts, err = run_py(f"""
            c = socket.create_connection(("{ips[0]}", 4222)); line = c.makefile().readline()
            fact(info=json.loads(line.split(" ", 1)[1]))
        """, ip=vips())
        urls = facts[0]["info"].get("connect_urls", []) if code == 0 and facts else []
        return urls if len(urls) == 3 else None
    urls = until(info, "the NATS cluster did not form")
    assert sorted(urls) == sorted(f"{ip}:4222" for ip in ips)
    machine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs} - {"127.0.0.1", "::1"}
    text = "".join(log.read_text() for log in logs)
    assert "Route connection created" in text
    assert not [m for m in machine if m and m in text], "a machine address in the NATS logs"


def test_netstat_lsof_and_ifconfig_in_a_vhost_see_the_vhost(vips, reap):
    """The machine listens on 0.0.0.0:6379 as well: inside the vhost,
    `netstat -tlnp` and `lsof -i` list its Redis at 6379 (the port it asked
    for, not the one it holds) and nothing of the machine's, and `ifconfig`
    lists lo and eth0 with the vhost's address."""
    server = need("redis-server")
    netstat, lsof, ifconfig = need("netstat"), need("lsof"), need("ifconfig")
    ip = vips()
    machine = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                "s.bind(('0.0.0.0', 6379)); s.listen(); print(1, flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE)
    try:
        machine.stdout.readline()
        redis = reap(vaddr.spawn([server, "--save", "", "--bind", "0.0.0.0", "--protected-mode", "no"], ip=ip,
                                 stdout=vaddr.DEVNULL))
        until(lambda: ":6379" in run_in(ip, [netstat, "-tln"])[1], "redis did not listen")
        listed = [line.split() for line in run_in(ip, [netstat, "-tlnp"])[1].splitlines()[2:]]
        assert [(f[3], f[5], f[6].split("/")[0]) for f in listed] == [("0.0.0.0:6379", "LISTEN", str(redis.pid))]
        code, out, err = run_in(ip, [lsof, "-nP", "-i"])
        rows = [line.split() for line in out.splitlines()[1:]]
        assert [(r[0], r[1], r[8], r[9]) for r in rows] == [("redis-ser", str(redis.pid), "*:6379", "(LISTEN)")], out
        interfaces = run_in(ip, [ifconfig, "-a"])[1]
        assert sorted(b.split(":")[0] for b in interfaces.split("\n\n") if b.strip()) == ["eth0", "lo"]
        assert f"inet {ip} " in interfaces
    finally:
        machine.kill()
        machine.wait()


BIND_ZONE = """$TTL 60
@ IN SOA ns1.lab.test. admin.lab.test. {serial} 60 60 600 60
@ IN NS ns1.lab.test.
@ IN NS ns2.lab.test.
ns1 IN A {primary}
ns2 IN A {secondary}
www IN A {www}
"""


def test_a_bind_primary_notifies_its_secondary_and_rndc_reaches_its_own_named(shared_dir, vips, reap, machine_dns):
    """BIND with its defaults (listening on every interface it finds, the
    command channel on 127.0.0.1:953 in both vhosts) while the machine holds
    53: the secondary transfers the zone from the primary's vIP; `rndc
    reload` in the primary reaches its own named (rndc binds 0.0.0.0:0
    before it connects), whose NOTIFY from its vIP makes the secondary take
    the new serial; `dig @::1` in each vhost reaches its own named (whose
    ::1 sockets are IPV6_V6ONLY); the logs name vIPs only."""
    named, rndc, dig = need("named"), need("rndc"), need("dig")
    primary, secondary = vips(), vips()
    bind_user = pwd.getpwnam("bind")
    zone = {"primary": primary, "secondary": secondary}
    for role, ip in zone.items():
        d = shared_dir / role
        d.mkdir()
        body = ('type primary; file "{d}/lab.test.zone"; notify yes;' if role == "primary"
                else 'type secondary; file "{d}/lab.test.zone"; primaries {{ ' + primary + '; }};').format(d=d)
        (d / "named.conf").write_text(f'options {{ directory "{d}"; pid-file none; dnssec-validation no; '
                                      f'recursion no; allow-transfer {{ any; }}; }};\n'
                                      f'zone "lab.test" {{ {body} }};\n')
        os.chown(d, bind_user.pw_uid, bind_user.pw_gid)
    (shared_dir / "primary" / "lab.test.zone").write_text(
        BIND_ZONE.format(serial=1, primary=primary, secondary=secondary, www="198.18.0.80"))
    logs = {}
    for role, ip in zone.items():
        logs[role] = open(shared_dir / f"{role}.log", "wb")
        reap(vaddr.spawn([named, "-g", "-u", "bind", "-c", str(shared_dir / role / "named.conf")], ip=ip,
                         name=f"bind-{role}", stdout=logs[role], stderr=subprocess.STDOUT))

    def www():
        code, out, _ = run_in(vips(), [dig, f"@{secondary}", "www.lab.test", "+short", "+time=1", "+tries=1"])
        return code == 0 and out.strip()
    assert until(www, "the secondary did not serve the zone") == "198.18.0.80"
    (shared_dir / "primary" / "lab.test.zone").write_text(
        BIND_ZONE.format(serial=2, primary=primary, secondary=secondary, www="198.18.0.81"))
    code, out, err = run_in(primary, [rndc, "reload", "lab.test"])
    assert code == 0, out + err
    until(lambda: www() == "198.18.0.81", "the secondary did not take the new serial")
    for role, ip in zone.items():  # each vhost's rndc reaches its own named on 127.0.0.1:953
        code, out, err = run_in(ip, [rndc, "zonestatus", "lab.test"])
        assert code == 0 and f"type: {role}" in out, out + err
        for transport in ("+notcp", "+tcp"):  # and dig its own named's IPV6_V6ONLY sockets on ::1
            code, out, err = run_in(ip, [dig, "@::1", "www.lab.test", "+short", "+time=2", "+tries=1", transport])
            assert (code, out.strip()) == (0, "198.18.0.81"), out + err
    text = {role: (shared_dir / f"{role}.log").read_text() for role in zone}
    assert f"transfer of 'lab.test/IN' from {primary}#53: Transfer completed" in text["secondary"]
    assert "received notify for zone 'lab.test'" in text["secondary"], text["secondary"]
    assert "client @" in text["primary"] and f"{secondary}#" in text["primary"]
    machine = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family in (socket.AF_INET, socket.AF_INET6) and not a.address.startswith(("127.", "::1"))]
    for role in zone:
        assert not [a for a in machine if f"{a.split('%')[0]}#" in text[role]], text[role]

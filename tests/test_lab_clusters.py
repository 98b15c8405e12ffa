"""Clusters as a user starts them: a lab file, the distribution's daemon
with its packaged defaults (only names, addresses and the shared secret set),
on a machine that holds the same ports on its wildcard addresses.  And what
such daemons need of a lab: private folders they can write after dropping
to their own user."""
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest

from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel


def test_a_private_folder_is_an_empty_copy_of_the_folder_it_covers(cli, tmp_path, test_user):
    """/var/lib/NAME belongs to the daemon's user: each host's private one
    does too (same owner and mode, empty), so a daemon that starts as root and
    drops to its user writes there; a folder that did not exist is the
    host's user's."""
    covered, fresh = "/run/vaddr-test-covered", "/run/vaddr-test-fresh"
    os.mkdir(covered, 0o750)
    os.chown(covered, test_user.uid, test_user.gid)
    (open(os.path.join(covered, "machine-file"), "w")).close()
    lab = tmp_path / "own.toml"
    lab.write_text(f'[hosts.d]\nip = "198.19.250.81"\nprivate = ["{covered}", "{fresh}"]\nuser = "{test_user.name}"\n'
                   f'cmd = ["sh", "-c", "echo mine > {covered}/f && echo mine > {fresh}/f && sleep infinity"]\n'
                   f'ready = {{ cmd = "test -s {fresh}/f" }}\n')
    try:
        up = cli("up", "-d", "-f", str(lab), timeout=60)
        assert up.returncode == 0, up.stderr
        seen = cli("exec", "d", "--", "stat", "-c", "%U %a", covered, fresh).stdout.split("\n")
        assert seen[:2] == [f"{test_user.name} 750", f"{test_user.name} 755"]
        assert cli("exec", "d", "--", "ls", covered).stdout.split() == ["f"]
    finally:
        cli("down", timeout=60)
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], "own"), ignore_errors=True)  # a failed up's logs
        os.unlink(os.path.join(covered, "machine-file"))
        os.rmdir(covered)
    assert not os.path.exists(fresh)


def test_a_private_path_that_is_a_file_is_refused_before_anything_starts(cli, tmp_path):
    lab = tmp_path / "file.toml"
    lab.write_text('[hosts.f]\nip = "198.19.250.85"\nprivate = ["/etc/hostname"]\n')
    up = cli("up", "-d", "-f", str(lab), timeout=60)
    assert (up.returncode, up.stderr.count("\n")) == (1, 1), up.stderr
    assert "private: /etc/hostname is not a folder" in up.stderr and "Traceback" not in up.stderr
    assert not os.path.exists(os.path.join(os.environ["VADDR_LAB_DIR"], "file"))


@pytest.fixture
def machine_holds():
    """machine_holds(*ports): the machine's own TCP listeners on 0.0.0.0, as a
    workstation's epmd or broker holds them; closed after the test."""
    held = []

    def hold(*ports):
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:  # already held by the machine: so much the better
                s.close()
                continue
            s.listen()
            held.append(s)
    yield hold
    for s in held:
        s.close()


RABBIT = """
[lab]
name = "rmq"

[hosts.rabbit]
count = 3
ip = "198.19.250.91"
private = ["/var/lib/rabbitmq", "/var/log/rabbitmq"]
# The packaged server, as root (it drops to rabbitmq), sharing one Erlang cookie.
cmd = ["sh", "-c", "printf %s vaddrtestcookie > /var/lib/rabbitmq/.erlang.cookie && chown rabbitmq: /var/lib/rabbitmq/.erlang.cookie && chmod 400 /var/lib/rabbitmq/.erlang.cookie && exec rabbitmq-server"]
ready = { cmd = "rabbitmqctl -q await_startup", timeout = "120s" }
"""


def test_a_rabbitmq_cluster_with_default_settings_joins_by_host_name(cli, tmp_path, lab_up, machine_holds):
    """Three nodes named rabbit@rabbitN (Erlang takes the name from
    `hostname`), each with its own epmd on its 127.0.0.1:4369, while the
    machine holds 4369, 5672 and 25672 on 0.0.0.0: two join the first by
    name, all three run as one cluster, AMQP at a vIP reaches that node, and
    the logs name no address but the nodes' and 127.0.0.1."""
    need("rabbitmq-server")
    need("/usr/lib/rabbitmq/bin/rabbitmqctl")
    machine_holds(4369, 5672, 25672)
    lab_up("rmq", RABBIT, timeout=240)
    for node in ("rabbit2", "rabbit3"):
        for step in (["stop_app"], ["join_cluster", "rabbit@rabbit1"], ["start_app"]):
            done = cli("exec", node, "--", "rabbitmqctl", "-q", *step, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
    status = cli("exec", "rabbit3", "--", "rabbitmqctl", "-q", "cluster_status", "--formatter", "json",
                 timeout=60)
    assert sorted(json.loads(status.stdout)["running_nodes"]) == ["rabbit@rabbit1", "rabbit@rabbit2",
                                                                 "rabbit@rabbit3"], status.stderr
    with socket.create_connection(("198.19.250.92", 5672), timeout=10) as amqp:
        amqp.sendall(b"AMQP\x00\x00\x09\x01")
        assert b"capabilities" in amqp.recv(4096)  # connection.start, from rabbit2
    [state] = json.loads(cli("status", "--json").stdout)
    folders = {h["name"]: os.path.dirname(h["log"]) for h in state["hosts"]}
    logs = ""
    for node, folder in folders.items():
        for path in [os.path.join(folder, "output.log")] + [
                os.path.join(d, f) for d, _, files in os.walk(os.path.join(folder, "private")) for f in files
                if f.endswith(".log")]:
            with open(path, errors="replace") as f:
                logs += f.read()
    addresses = set(re.findall(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", logs))
    assert addresses <= {"198.19.250.91", "198.19.250.92", "198.19.250.93", "127.0.0.1"}, addresses


def _held(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def lab_up(cli, tmp_path):
    """lab_up(name, text): the lab file written and up (-d); after the test,
    down and its folder (the hosts' logs) removed, pass or fail."""
    names = []

    def up(name, text, timeout=60):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        names.append(name)
        got = cli("up", "-d", str(path), timeout=timeout)
        assert got.returncode == 0, got.stderr
    yield up
    if names:
        cli("down", timeout=120)
    for name in names:
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], name), ignore_errors=True)


@pytest.fixture
def machine_daemon(tmp_path):
    """machine_daemon(argv, port): the machine's own instance of a daemon,
    started unless something of the machine already holds its port; ended
    after the test.  Returns whether this test started it."""
    started = []

    def start(argv, port):
        if _held(port):
            return False
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        until(lambda: _held(port) or proc.poll() is not None, f"{argv[0]} on the machine")
        assert proc.poll() is None, f"{argv[0]} on the machine exited {proc.returncode}"
        return True
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def _lab_logs(cli):
    """Every host's output of the one lab up."""
    [state] = json.loads(cli("status", "--json").stdout)
    text = ""
    for h in state["hosts"]:
        with open(h["log"], errors="replace") as f:
            text += f.read()
    return text


def _addresses(text):
    return set(re.findall(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", text))


SERF = """
[lab]
name = "gossip"

[hosts.seed]
ip = "198.19.250.101"
cmd = "serf agent -node={name}"
ready = { tcp = 7373 }         # serf's RPC port, on its own 127.0.0.1 only

[hosts.member]
count = 2
ip = "198.19.250.102"
cmd = "serf agent -node={name} -join=seed"
ready = { tcp = 7373 }
after = ["seed"]
"""


def test_a_serf_cluster_finds_its_addresses_and_sees_a_partition_come_and_go(cli, tmp_path, lab_up, machine_daemon):
    """serf (HashiCorp's gossip, as in Consul) with no address given binds
    0.0.0.0:7946 and advertises the address it finds on its interfaces; its
    CLI talks to the agent at 127.0.0.1:7373.  The machine runs its own serf
    on both ports.  Each member advertises its vIP, a partition marks the
    cut-off member failed and heal brings it back, and the machine's serf
    stays alone."""
    serf = need("serf")
    ours = machine_daemon([serf, "agent", "-node=machine"], 7373)

    def members(host):
        got = cli("exec", host, "--", serf, "members", "-format=json")
        return {m["name"]: (m["addr"], m["status"]) for m in json.loads(got.stdout or '{"members": []}')["members"]}
    lab_up("gossip", SERF)
    everyone = {"seed": ("198.19.250.101:7946", "alive"), "member1": ("198.19.250.102:7946", "alive"),
                "member2": ("198.19.250.103:7946", "alive")}
    until(lambda: members("member2") == everyone, "member2 to see all three alive", timeout=30)
    assert cli("partition", "seed,member1", "member2").returncode == 0
    until(lambda: members("seed")["member2"][1] == "failed", "seed to see member2 failed", timeout=60)
    assert cli("heal").returncode == 0
    until(lambda: members("seed") == everyone, "seed to see member2 alive again", timeout=60)
    if ours:
        alone = json.loads(subprocess.run([serf, "members", "-format=json"], capture_output=True,
                                          text=True, timeout=10).stdout)["members"]
        assert [m["name"] for m in alone] == ["machine"]
    assert _addresses(_lab_logs(cli)) <= {"198.19.250.101", "198.19.250.102", "198.19.250.103",
                                         "127.0.0.1", "0.0.0.0"}


ALERTMANAGER = """
[lab]
name = "alerts"

[hosts.am1]
ip = "198.19.250.111"
cmd = "prometheus-alertmanager --config.file=/etc/prometheus/alertmanager.yml --storage.path={dir}"
ready = { tcp = 9093 }

[hosts.peer]
count = 2
ip = "198.19.250.112"
cmd = "prometheus-alertmanager --config.file=/etc/prometheus/alertmanager.yml --storage.path={dir} --cluster.peer=am1:9094"
ready = { tcp = 9093 }
after = ["am1"]
"""


def test_an_alertmanager_cluster_gossips_at_the_addresses_its_interfaces_show(cli, tmp_path, lab_up, machine_daemon):
    """Debian's Alertmanager (Go, memberlist) with its packaged config:
    only the first peer is named.  It binds 0.0.0.0:9094, TCP and UDP, and
    advertises the private address it finds on its interfaces; the machine
    runs its own on 9093 and 9094.  Each node lists the three vIPs as peers, a
    silence made at one is served by another, and the machine's stays alone."""
    am = need("prometheus-alertmanager")
    ours = machine_daemon([am, "--config.file=/etc/prometheus/alertmanager.yml", f"--storage.path={tmp_path}"], 9093)
    vips = ["198.19.250.111", "198.19.250.112", "198.19.250.113"]

    def api(ip, path, body=None):
        req = urllib.request.Request(f"http://{ip}:9093/api/v2/{path}", data=body and json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    lab_up("alerts", ALERTMANAGER)
    for ip in vips:
        until(lambda: sorted(p["address"] for p in api(ip, "status")["cluster"]["peers"])
              == [f"{v}:9094" for v in vips], f"{ip} to list the three peers", timeout=30)
    made = api(vips[0], "silences", {"matchers": [{"name": "job", "value": "vaddr", "isRegex": False}],
                                     "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
                                     "createdBy": "test", "comment": "gossiped"})["silenceID"]
    until(lambda: made in [s["id"] for s in api(vips[2], "silences")], "the silence to reach peer2", timeout=30)
    if ours:
        assert len(api("127.0.0.1", "status")["cluster"]["peers"]) == 1
    assert _addresses(_lab_logs(cli)) <= set(vips) | {"127.0.0.1", "0.0.0.0"}


KNOT_ZONE = """$ORIGIN example.test.
$TTL 300
@ SOA ns1 hostmaster {serial} 3600 900 604800 300
@ NS ns1
ns1 A 198.19.250.121
www A 198.19.250.80
"""

# Debian's knot.conf with what a primary and its secondaries must add: where
# to listen and who the peers are.  The run directory (control socket, pid
# file) sits in the host's private /var/lib/knot, so each knotc talks to its
# own knotd.
KNOT_CONF = """
server:
    rundir: "/var/lib/knot"
    user: knot:knot
    automatic-acl: on
    listen: [ 0.0.0.0@53, ::@53 ]
log:
  - target: stderr
    any: info
database:
    storage: "/var/lib/knot"
remote:
{remotes}
template:
  - id: default
    storage: "/var/lib/knot"
    file: "%s.zone"
zone:
  - domain: example.test
    {role}
"""

KNOT_LAB = """
[lab]
name = "dns"

[hosts.ns1]
ip = "198.19.250.121"
cmd = "sh -c 'cp {tmp}/example.test.zone /var/lib/knot/ && exec knotd -c {tmp}/primary.conf'"
private = ["/var/lib/knot"]
ready = { tcp = 53 }

[hosts.sec]
count = 2
ip = "198.19.250.122"
cmd = "knotd -c {tmp}/secondary.conf"
private = ["/var/lib/knot"]
ready = { tcp = 53 }
after = ["ns1"]

[hosts.evil]
ip = "198.19.250.129"
cmd = "sleep infinity"
"""


def test_a_knot_primary_notifies_its_secondaries_and_refuses_a_stranger(cli, tmp_path, lab_up, machine_daemon):
    """Knot DNS with Debian's configuration plus peers: the primary NOTIFYs
    its two secondaries, which transfer the zone (AXFR) from its vIP; the
    automatic ACL refuses the same transfer to another vhost; kdig with no
    address but 127.0.0.1 inside a secondary gets its answer from 127.0.0.1
    (it drops any other); the machine, running its own knotd on 0.0.0.0:53,
    reaches each vIP and keeps its own 127.0.0.1."""
    knotd, kdig = need("knotd"), need("kdig")
    (tmp_path / "example.test.zone").write_text(KNOT_ZONE.format(serial=1))
    peer = "  - id: {0}\n    address: {1}\n"
    (tmp_path / "primary.conf").write_text(KNOT_CONF.format(
        remotes=peer.format("sec1", "198.19.250.122") + peer.format("sec2", "198.19.250.123"),
        role="notify: [ sec1, sec2 ]"))
    (tmp_path / "secondary.conf").write_text(KNOT_CONF.format(remotes=peer.format("ns1", "198.19.250.121"),
                                                              role="master: ns1"))
    (tmp_path / "machine.conf").write_text(f'server:\n    rundir: "{tmp_path}"\n    listen: [ 0.0.0.0@53, ::@53 ]\n'
                                           f'database:\n    storage: "{tmp_path}"\n')
    ours = machine_daemon([knotd, "-c", str(tmp_path / "machine.conf")], 53)

    def ask(host, server, name="www.example.test", *extra):
        argv = [kdig, "+short", "+timeout=2", "+retry=1", f"@{server}", name, *extra]
        got = cli("exec", host, "--", *argv) if host else subprocess.run(argv, capture_output=True, text=True)
        return got.stdout.strip()
    lab_up("dns", KNOT_LAB.replace("{tmp}", str(tmp_path)))
    until(lambda: ask("sec2", "127.0.0.1") == "198.19.250.80", "sec2 to serve the zone at its 127.0.0.1")
    # A new serial: NOTIFY from the primary, a transfer from each secondary.
    zone = "/var/lib/knot/example.test.zone"
    bump = f"printf 'extra A 198.19.250.81\\n' >> {zone} && sed -i 's/ 1 3600/ 2 3600/' {zone} && knotc -c {tmp_path}/primary.conf zone-reload"
    assert cli("exec", "ns1", "--", "sh", "-c", bump).returncode == 0
    for sec in ("sec1", "sec2"):
        until(lambda: ask(sec, "127.0.0.1", "extra.example.test") == "198.19.250.81", f"{sec} to take serial 2")
        assert ask(None, {"sec1": "198.19.250.122", "sec2": "198.19.250.123"}[sec],
                   "extra.example.test") == "198.19.250.81"  # from the machine, unconnected
    stolen = cli("exec", "evil", "--", kdig, "@198.19.250.121", "example.test", "AXFR")
    assert "www.example.test" not in stolen.stdout
    mine = cli("exec", "sec1", "--", kdig, "@198.19.250.121", "example.test", "AXFR")
    assert "www.example.test" in mine.stdout
    if ours:  # the machine's knotd has no such zone
        assert "REFUSED" in subprocess.run([kdig, "@127.0.0.1", "example.test", "SOA"], capture_output=True,
                                           text=True).stdout
    logs = _lab_logs(cli)
    assert "AXFR, incoming, remote 198.19.250.121@53" in logs
    assert _addresses(logs) <= {"198.19.250.121", "198.19.250.122", "198.19.250.123", "198.19.250.129",
                                "127.0.0.1", "0.0.0.0"}


COROSYNC_LAB = """
[lab]
name = "quorum"

[hosts.c]
count = 3
ip = "198.19.250.141"
cmd = "corosync -f -c {tmp}/corosync.conf"
# Its pid file sits directly in /run, its ring ids in /var/lib/corosync.
private = ["/run", "/var/lib/corosync", "/var/log/corosync"]
ready = { log = "Completed service synchronization" }
"""


def _corosync_conf(nodes):
    """Debian's /etc/corosync/corosync.conf with its nodelist replaced, and
    without realtime scheduling: more SCHED_RR nodes than cores starve each
    other (a node spins at priority 99 on libqb's log lock while the thread
    that holds it waits for a core), as nodes on machines of their own do
    not (README, "Realtime daemons")."""
    with open("/etc/corosync/corosync.conf") as f:
        packaged = f.read()
    listed = "".join(f"\tnode {{\n\t\tname: {name}\n\t\tnodeid: {i}\n\t\tring0_addr: {ip}\n\t}}\n"
                     for i, (name, ip) in enumerate(nodes, 1))
    conf, n = re.subn(r"(?ms)^nodelist \{.*", f"nodelist {{\n{listed}}}\nsystem {{\n\tsched_rr: no\n}}\n", packaged)
    assert n == 1, "Debian's corosync.conf ends with its nodelist"
    return conf


def _quorum(out):
    """(votes, this node's name, quorate) from corosync-quorumtool -s."""
    votes = re.search(r"Total votes:\s+(\d+)", out)
    local = re.search(r"^\s+\d+\s+\d+\s+(\S+) \(local\)", out, re.M)
    return (int(votes.group(1)) if votes else 0, local and local.group(1),
            bool(re.search(r"Quorate:\s+Yes", out)))


def test_a_corosync_cluster_keeps_quorum_with_the_machines_own_corosync_beside_it(cli, tmp_path, lab_up):
    """Corosync 3 (knet) with Debian's configuration and a nodelist of vIPs.
    Its tools reach the daemon through libqb's abstract Unix sockets, which
    every node binds under the same names, as does the machine's own
    corosync (Debian's untouched nodelist: node1 at 127.0.0.1): each
    corosync-quorumtool reaches its own node's, a partition takes quorum
    from the cut-off node and heal gives it back."""
    corosync, tool = need("corosync"), need("corosync-quorumtool")
    nodes = [("c1", "198.19.250.141"), ("c2", "198.19.250.142"), ("c3", "198.19.250.143")]
    (tmp_path / "corosync.conf").write_text(_corosync_conf(nodes))
    (tmp_path / "machine.conf").write_text(_corosync_conf([("node1", "127.0.0.1")]).replace(
        "to_logfile: yes", "to_logfile: no"))
    ours = None
    def machines():
        return _quorum(subprocess.run([tool, "-s"], capture_output=True, text=True, timeout=20).stdout)
    if machines()[0] == 0:  # no corosync of the machine's yet
        ours = subprocess.Popen([corosync, "-f", "-c", str(tmp_path / "machine.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: machines()[1] == "node1", "the machine's corosync to answer")

    def quorum(host):
        return _quorum(cli("exec", host, "--", tool, "-s").stdout)
    try:  # the machine's corosync ends, whatever fails
        lab_up("quorum", COROSYNC_LAB.replace("{tmp}", str(tmp_path)))
        for name, _ in nodes:
            until(lambda: quorum(name) == (3, name, True), f"{name} to see three votes from its own corosync")
        assert cli("partition", "c1", "c2,c3").returncode == 0
        until(lambda: quorum("c1") == (1, "c1", False), "c1 to lose quorum", timeout=60)
        assert quorum("c2") == (2, "c2", True)
        assert cli("heal").returncode == 0
        until(lambda: quorum("c1") == (3, "c1", True), "c1 to rejoin", timeout=60)
        if ours:
            assert machines() == (1, "node1", True)
        assert _addresses(_lab_logs(cli)) <= {ip for _, ip in nodes} | {"127.0.0.1", "0.0.0.0"}
    finally:
        if ours:
            ours.terminate()
            ours.wait(20)


SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
pidfile /run/slapd/slapd.pid
{server_ids}
database mdb
suffix "dc=example,dc=test"
rootdn "cn=admin,dc=example,dc=test"
rootpw secret
directory {directory}
index entryCSN,entryUUID eq
overlay syncprov
{syncrepl}
"""

SLAPD_LAB = """
[lab]
name = "directory"

[hosts.ldap]
count = 2
ip = "198.19.250.151"
# slapd finds its own serverID by the exact URL it listens on.
cmd = "slapd -d stats,sync -f {tmp}/slapd.conf -h 'ldap://{ip} ldapi:///'"
private = ["/run/slapd", "/var/lib/ldap"]   # ldapi's socket, the database
ready = { tcp = 389 }
"""

ALICE = """dn: dc=example,dc=test
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: cn=alice,dc=example,dc=test
objectClass: inetOrgPerson
cn: alice
sn: {sn}
"""


def test_two_openldap_providers_replicate_both_ways_and_catch_up_after_a_partition(cli, tmp_path, lab_up,
                                                                                   machine_daemon):
    """OpenLDAP 2.5 multi-provider (syncrepl, refreshAndPersist) between two
    vIPs, each server with its own ldapi socket in /run/slapd; the machine
    runs its own slapd on 0.0.0.0:389.  A write at one is read at the other
    through its own ldapi socket and its own localhost; a write during a
    partition arrives after heal; the logs name only vIPs and loopback."""
    slapd, ldapsearch = need("slapd"), need("ldapsearch")
    vips = ["198.19.250.151", "198.19.250.152"]
    (tmp_path / "slapd.conf").write_text(SLAPD_CONF.format(
        server_ids="\n".join(f"serverID {i} ldap://{ip}" for i, ip in enumerate(vips, 1)),
        directory="/var/lib/ldap",
        syncrepl="\n".join(f'syncrepl rid={i:03} provider=ldap://{ip} bindmethod=simple '
                           f'binddn="cn=admin,dc=example,dc=test" credentials=secret '
                           f'searchbase="dc=example,dc=test" type=refreshAndPersist retry="1 +"'
                           for i, ip in enumerate(vips, 1)) + "\nmultiprovider on"))
    (tmp_path / "mdb").mkdir()
    (tmp_path / "machine.conf").write_text(SLAPD_CONF.format(server_ids="", directory=tmp_path / "mdb",
                                                             syncrepl="").replace("/run/slapd/", f"{tmp_path}/"))
    ours = machine_daemon([slapd, "-d", "0", "-f", str(tmp_path / "machine.conf"), "-h", "ldap:///"], 389)
    admin = ["-x", "-D", "cn=admin,dc=example,dc=test", "-w", "secret"]

    def sn(host, uri="ldapi:///"):
        got = cli("exec", host, "--", ldapsearch, "-x", "-H", uri, "-b", "cn=alice,dc=example,dc=test", "-LLL", "sn")
        return re.findall(r"^sn: (.*)$", got.stdout, re.M)
    lab_up("directory", SLAPD_LAB.replace("{tmp}", str(tmp_path)))
    added = cli("exec", "ldap1", "--", "ldapadd", "-H", "ldapi:///", *admin, input=ALICE.format(sn="A"))
    assert added.returncode == 0, added.stderr
    until(lambda: sn("ldap2") == ["A"], "ldap2 to hold alice")
    assert sn("ldap2", "ldap://localhost") == ["A"]
    assert cli("partition", "ldap1", "ldap2").returncode == 0
    change = "dn: cn=alice,dc=example,dc=test\nchangetype: modify\nreplace: sn\nsn: B\n"
    assert cli("exec", "ldap2", "--", "ldapmodify", "-H", "ldapi:///", *admin, input=change).returncode == 0
    assert sn("ldap1") == ["A"]
    assert cli("heal").returncode == 0
    until(lambda: sn("ldap1") == ["B"], "ldap1 to catch up after heal", timeout=60)
    if ours:  # the machine's slapd holds no such entry
        mine = subprocess.run([ldapsearch, "-x", "-H", "ldap://127.0.0.1", "-b", "dc=example,dc=test"],
                              capture_output=True, text=True, timeout=10)
        assert "alice" not in mine.stdout
    assert _addresses(_lab_logs(cli)) <= set(vips) | {"127.0.0.1", "0.0.0.0"}

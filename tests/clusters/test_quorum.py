"""Clusters that elect and fence: quorum and leadership seen to move with
partitions, as a user starts them, beside the machine's own instances."""
import glob
import json
import os
import re
import subprocess
import urllib.request

import pytest

from tests.clusters.logs import addresses, lab_logs
from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel


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


# Corosync's transports: knet (unicast, the default) and udp, which finds
# and keeps its members by IPv4 multicast (a group the suite guards).
TRANSPORTS = {"knet": "", "udp": "\ttransport: udp\n\tmcastaddr: 239.255.76.20\n"}


def _corosync_conf(nodes, transport="knet"):
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
    conf, n = re.subn(r"(?m)^(\tcluster_name: .*\n)", lambda m: m.group(1) + TRANSPORTS[transport], conf)
    assert n == 1, "Debian's corosync.conf names its cluster"
    return conf


def _quorum(out):
    """(votes, this node's name, quorate) from corosync-quorumtool -s."""
    votes = re.search(r"Total votes:\s+(\d+)", out)
    local = re.search(r"^\s+\d+\s+\d+\s+(\S+) \(local\)", out, re.M)
    return (int(votes.group(1)) if votes else 0, local and local.group(1),
            bool(re.search(r"Quorate:\s+Yes", out)))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_corosync_cluster_keeps_quorum_with_the_machines_own_corosync_beside_it(cli, tmp_path, lab_up, transport):
    """Corosync 3 with Debian's configuration and a nodelist of vIPs, over
    knet and over udp (multicast: each node binds the group's address and
    joins it, as on hosts of their own on one segment).  Its tools reach the
    daemon through libqb's abstract Unix sockets, which every node binds
    under the same names, as does the machine's own corosync (Debian's
    untouched nodelist: node1 at 127.0.0.1): each corosync-quorumtool
    reaches its own node's, a partition takes quorum from the cut-off node
    and heal gives it back."""
    corosync, tool = need("corosync"), need("corosync-quorumtool")
    nodes = [("c1", "198.19.250.141"), ("c2", "198.19.250.142"), ("c3", "198.19.250.143")]
    (tmp_path / "corosync.conf").write_text(_corosync_conf(nodes, transport))
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
        logs = lab_logs(cli)
        assert transport != "udp" or "UDP/IP Multicast" in logs
        assert addresses(logs) <= {ip for _, ip in nodes} | {"127.0.0.1", "0.0.0.0", "239.255.76.20"}
    finally:
        if ours:
            ours.terminate()
            ours.wait(20)


PATRONI = """
scope: vaddr-test
namespace: /service/
name: {name}
restapi:
  listen: 0.0.0.0:8008
  connect_address: {name}:8008
etcd3:
  hosts: e1:2379,e2:2379,e3:2379
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    postgresql:
      use_pg_rewind: true
postgresql:
  listen: 0.0.0.0:5432
  connect_address: {name}:5432
  data_dir: {dir}/data
  bin_dir: BIN_DIR
  authentication:
    replication:
      username: replicator
      password: rep
    superuser:
      username: postgres
      password: pg
    rewind:
      username: rewinder
      password: rw
  pg_hba:
    - local all all trust
    - host replication replicator 0.0.0.0/0 md5
    - host all all 0.0.0.0/0 md5
"""

PATRONI_LAB = """
[lab]
name = "ha"

[hosts.e]
count = 3
ip = "198.19.250.161"
cmd = "etcd --name {name} --data-dir {dir} --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://{name}:2379 --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://{name}:2380 --initial-cluster e1=http://e1:2380,e2=http://e2:2380,e3=http://e3:2380"
ready = { tcp = 2379 }

[hosts.pg]
count = 3
ip = "198.19.250.171"
user = "postgres"
cmd = "patroni"
private = ["/var/run/postgresql"]
ready = { tcp = 8008 }
after = ["e1", "e2", "e3"]

[hosts.pg.env]
PATRONI_CONFIGURATION = '''PATRONI_YAML'''
"""

PG_HOSTS = {"pg1": "198.19.250.171", "pg2": "198.19.250.172", "pg3": "198.19.250.173"}


def _members(ip):
    """{name: (role, state, timeline)} of the cluster as the Patroni at ip
    reports it (its REST API, from the machine, no proxy); {} if it cannot."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{ip}:8008/cluster", timeout=3) as got:
            members = json.load(got)["members"]
    except (OSError, ValueError):
        return {}
    return {m["name"]: (m["role"], m["state"], m.get("timeline")) for m in members}


def _healthy(view):
    """The leader's name when view has one running leader and two replicas
    following it on its timeline; else None."""
    leaders = [n for n, (role, state, _) in view.items() if role == "leader" and state == "running"]
    if len(view) != 3 or len(leaders) != 1:
        return None
    timeline = view[leaders[0]][2]
    following = [n for n, (role, state, tl) in view.items()
                 if role == "replica" and state in ("running", "streaming") and tl == timeline]
    return leaders[0] if len(following) == 2 else None


def _taken_over(view, old):
    """The running leader of view other than old, or None."""
    led = [n for n, (role, state, _) in view.items() if role == "leader" and state == "running" and n != old]
    return led[0] if led else None


def test_a_patroni_cluster_fails_over_when_its_leader_is_cut_off_and_takes_it_back_after_heal(
        cli, lab_up, machine_holds):
    """Patroni (PostgreSQL HA) on a three-member etcd, as its documentation
    sets it up, with the machine holding 2379, 2380, 5432 and 8008 on its
    wildcard addresses.  etcd's gRPC gateway dials its own listen address,
    0.0.0.0:2379: that is the vhost's own loopback, not the machine's (before,
    every Patroni waited on etcd).  Patroni runs as postgres with postgres's
    HOME (~/.pgpass).  Cut the leader off: a replica takes over with the row
    written before; heal: the old leader follows the new one."""
    need("patroni")
    need("etcd")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not bins:
        pytest.skip("PostgreSQL's server is not installed (make setup installs it)")
    config = PATRONI.replace("BIN_DIR", os.path.dirname(bins[-1]))
    machine_holds(2379, 2380, 5432, 8008)
    lab_up("ha", PATRONI_LAB.replace("PATRONI_YAML", config), timeout=120)
    ask = lambda: _healthy(_members(PG_HOSTS["pg2"]))  # noqa: E731
    until(ask, "one leader and two replicas following it", timeout=90)
    leader = ask()
    sql = ["env", "PGPASSWORD=pg", "psql", "-h", "localhost", "-U", "postgres", "-Atc"]
    assert cli("exec", leader, "--", *sql, "create table t (x int); insert into t values (42)").returncode == 0
    others = [h for h in PG_HOSTS if h != leader]
    # Replication is asynchronous, as Patroni's default: a failover may lose
    # what the replicas had not replayed yet, on hosts of their own too.
    until(lambda: all(cli("exec", h, "--", *sql, "select x from t").stdout.split() == ["42"] for h in others),
          "the row to reach both replicas")
    assert cli("partition", leader, ",".join(["e1", "e2", "e3", *others])).returncode == 0
    try:
        until(lambda: _taken_over(_members(PG_HOSTS[others[0]]), leader), "a replica to take over", timeout=60)
        new = _taken_over(_members(PG_HOSTS[others[0]]), leader)
        assert cli("exec", new, "--", *sql, "select x from t").stdout.split() == ["42"]
    finally:
        assert cli("heal").returncode == 0
    until(lambda: _healthy(_members(PG_HOSTS[new])) == new, f"{leader} to follow {new}", timeout=90)
    assert addresses(lab_logs(cli)) <= set(PG_HOSTS.values()) | {
        "198.19.250.161", "198.19.250.162", "198.19.250.163", "127.0.0.1", "0.0.0.0"}

"""Brokers and gossip clusters as a user starts them: the distribution's
daemon with its packaged defaults (only names, addresses and the shared
secret set), on a machine that holds the same ports on its wildcard
addresses."""
import json
import os
import re
import socket
import subprocess
import urllib.request

import pytest

from tests.clusters.logs import addresses, lab_logs
from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel


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
    assert addresses(lab_logs(cli)) <= {"198.19.250.101", "198.19.250.102", "198.19.250.103",
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
    assert addresses(lab_logs(cli)) <= set(vips) | {"127.0.0.1", "0.0.0.0"}

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

import pytest

from tests.conftest import need

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


def test_a_rabbitmq_cluster_with_default_settings_joins_by_host_name(cli, tmp_path, machine_holds):
    """Three nodes named rabbit@rabbitN (Erlang takes the name from
    `hostname`), each with its own epmd on its 127.0.0.1:4369, while the
    machine holds 4369, 5672 and 25672 on 0.0.0.0: two join the first by
    name, all three run as one cluster, AMQP at a vIP reaches that node, and
    the logs name no address but the nodes' and 127.0.0.1."""
    need("rabbitmq-server")
    need("/usr/lib/rabbitmq/bin/rabbitmqctl")
    machine_holds(4369, 5672, 25672)
    lab = tmp_path / "rmq.toml"
    lab.write_text(RABBIT)
    try:
        up = cli("up", "-d", "-f", str(lab), timeout=240)
        assert up.returncode == 0, up.stderr
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
    finally:
        cli("down", timeout=120)
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], "rmq"), ignore_errors=True)  # a failed up's logs

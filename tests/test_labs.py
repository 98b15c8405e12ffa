"""Labs against the real kernel, through the CLI as a user would type it:
up/status/logs/down, node faults seen by the cluster, names every program
resolves, private folders, `vaddr run`, `save`, and failures during up.
The leak check around every test sees lab state files, work folders and
/etc/hosts blocks, so "down leaves nothing" is checked by every test."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import need, vaddr_cli

pytestmark = pytest.mark.kernel

ETCD_FAST = "--heartbeat-interval 50 --election-timeout 500"


def etcd_lab(tmp_path, name="kv"):
    """Three etcd members that name each other by host name only."""
    members = ",".join(f"n{i}=http://n{i}:2380" for i in (1, 2, 3))
    text = f'[lab]\nname = "{name}"\n'
    for i in (1, 2, 3):
        text += f"""
[hosts.n{i}]
ip = "198.19.250.{i}"
cmd = "etcd --name {{name}} --data-dir {{dir}} --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://{{name}}:2379 --listen-peer-urls http://{{ip}}:2380 --initial-advertise-peer-urls http://{{name}}:2380 --initial-cluster {members} {ETCD_FAST}"
env = {{ ETCD_LOG_LEVEL = "warn" }}
ready = {{ tcp = 2379, timeout = "30s" }}
"""
    path = tmp_path / "kv.toml"
    path.write_text(text)
    return path


def health(cli, host):
    """{endpoint: healthy} for every member, asked from inside host."""
    out = cli("exec", host, "--", "etcdctl", "--endpoints", f"{host}:2379", "--dial-timeout", "1s",
              "--command-timeout", "2s", "endpoint", "health", "--cluster", "-w", "json", timeout=30)
    return {e["endpoint"]: e["health"] for e in json.loads(out.stdout or "[]")}


def wait_for(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.2)


def test_etcd_lab_by_host_names_survives_stop_start_pause_kill(cli, tmp_path):
    need("etcd")
    need("etcdctl")
    lab = etcd_lab(tmp_path)
    up = cli("up", "-d", "-f", str(lab), timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        assert "n3 ready (198.19.250.3)" in up.stderr and "ready" in up.stdout
        status = json.loads(cli("status", "--json", check=True).stdout)[0]
        assert [h["state"] for h in status["hosts"]] == ["ready"] * 3 and all(h["pids"] for h in status["hosts"])
        members = cli("exec", "n1", "--", "etcdctl", "--endpoints", "n1:2379", "member", "list", check=True).stdout
        assert all(f"n{i}, http://n{i}:2380" in members for i in (1, 2, 3)), members
        wait_for(lambda: list(health(cli, "n1").values()) == [True] * 3, what="a healthy cluster")

        assert cli("stop", "n3", check=True).stdout.startswith("stopped n3")
        assert health(cli, "n1").get("http://n3:2379") is not True
        assert json.loads(cli("status", "kv", "--json").stdout)[0]["hosts"][2]["state"] == "stopped"
        cli("start", "n3", check=True, timeout=60)
        wait_for(lambda: health(cli, "n1").get("http://n3:2379") is True, what="n3 back in the cluster")

        cli("pause", "n2", check=True)
        assert health(cli, "n1").get("http://n2:2379") is not True  # frozen: answers nothing
        cli("resume", "n2", check=True)
        wait_for(lambda: health(cli, "n1").get("http://n2:2379") is True, what="n2 thawed")

        cli("kill", "n1", check=True)
        wait_for(lambda: json.loads(cli("status", "--json").stdout)[0]["hosts"][0]["state"] == "exited",
                 what="n1 seen as exited")
        assert json.loads(cli("status", "--json").stdout)[0]["hosts"][0]["exit_code"] == -9
        assert "exited (-9)" in cli("status").stdout
        assert "starting" in cli("logs", "n1", "-n", "50").stdout

        typo = cli("stop", "n2", "n9")  # every name is checked before any host is touched
        assert typo.returncode == 1 and "n9" in typo.stderr and typo.stderr.count("\n") == 1, typo.stderr
        assert json.loads(cli("status", "--json").stdout)[0]["hosts"][1]["state"] == "ready"
        assert cli("restart", "n1", "n2", check=True, timeout=120).stdout.splitlines() == ["restarted n1",
                                                                                          "restarted n2"]
        wait_for(lambda: list(health(cli, "n3").values()) == [True] * 3, what="a healthy cluster again")
    finally:
        down = cli("down", "kv", timeout=60)
    assert down.returncode == 0 and "lab kv is down" in down.stdout, down.stderr
    assert "vaddr lab kv" not in open("/etc/hosts").read()
    assert cli("status").stdout.startswith("no lab is up")


JAVA_NAMES = """
import java.net.InetAddress;
public class Names {
    public static void main(String[] a) throws Exception {
        System.out.println(InetAddress.getByName(a[0]).getHostAddress());
        System.out.println(InetAddress.getLocalHost().getHostName() + " " + InetAddress.getLocalHost().getHostAddress());
    }
}
"""


def test_names_resolve_for_glibc_java_and_static_programs_and_hostname_names_the_host(cli, tmp_path):
    lab = tmp_path / "names.toml"
    lab.write_text("""
[hosts.web]
ip = "198.19.250.11"
cmd = "python3 -m http.server 8000"
ready = { tcp = 8000 }
[hosts.client]
ip = "198.19.250.12"
""")
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    try:
        assert cli("exec", "client", "--", "hostname").stdout.strip() == "client"
        assert cli("exec", "web", "--", "hostname").stdout.strip() == "web"
        assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() not in ("web", "client")
        assert cli("exec", "client", "--", "getent", "hosts", "web").stdout.split()[0] == "198.19.250.11"
        assert cli("exec", "client", "--", "getent", "hosts", "client").stdout.split()[0] == "198.19.250.12"
        # The machine's own shell resolves lab names too.
        assert subprocess.run(["getent", "hosts", "web"], capture_output=True, text=True).stdout.startswith("198.19.250.11")
        got = cli("exec", "client", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8000/")
        assert got.stdout == "200"
        busybox = need("busybox")
        assert "statically linked" in subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout
        got = cli("exec", "client", "--", busybox, "wget", "-q", "-O", "-", "http://web:8000/")
        assert "Directory listing" in got.stdout, got.stderr
        java = need("java")
        (tmp_path / "Names.java").write_text(JAVA_NAMES)
        got = cli("exec", "client", "--", java, str(tmp_path / "Names.java"), "web", timeout=60)
        assert got.stdout.split("\n")[:2] == ["198.19.250.11", "client 198.19.250.12"], got.stderr
    finally:
        cli("down", timeout=60)


def test_count_expands_to_50_hosts_up_and_down_leaving_nothing_and_ls_shows_their_command(cli, tmp_path):
    lab = tmp_path / "fifty.toml"
    lab.write_text('[hosts.w]\ncount = 50\nip = "198.19.251.1"\ncmd = "sleep infinity"\n')
    start = time.monotonic()
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    took = time.monotonic() - start
    try:
        hosts = {h["name"]: h for h in json.loads(cli("ls", "--json").stdout)}
        assert sorted(hosts) == sorted(f"w{i}" for i in range(1, 51))
        assert hosts["w50"]["ip4"] == "198.19.251.50"
        # The host's command, not the sh or unshare that starts it.
        assert {h["command"] for h in hosts.values()} == {"sleep infinity"}
    finally:
        assert cli("down", "fifty", timeout=60).returncode == 0
    print(f"50-host lab up in {took:.2f}s")


def test_host_crashing_or_missing_its_ready_timeout_stops_up_and_names_it(cli, tmp_path):
    crash = tmp_path / "crash.toml"
    crash.write_text("""
[hosts.ok]
ip = "198.19.250.21"
[hosts.bad]
ip = "198.19.250.22"
cmd = ["sh", "-c", "echo booting; echo 'fatal: no config' >&2; exit 3"]
ready = { tcp = 80 }
after = ["ok"]
""")
    log = os.path.join(os.environ["VADDR_LAB_DIR"], "crash", "bad", "output.log")
    try:
        got = cli("up", "-d", "-f", str(crash), timeout=60)
        assert got.returncode == 1 and "Traceback" not in got.stderr
        assert "host bad exited before it was ready (exit status 3)" in got.stderr
        assert "bad | fatal: no config" in got.stderr
        assert "fatal: no config" in open(log).read()  # the whole output stays to read
        assert sorted(os.listdir(os.path.dirname(log))) == ["output.log"]  # its work folder does not
    finally:
        shutil.rmtree(os.path.dirname(os.path.dirname(log)), ignore_errors=True)

    slow = tmp_path / "slow.toml"
    slow.write_text('[hosts.slow]\nip = "198.19.250.23"\ncmd = "sleep 60"\nready = { tcp = 80, timeout = "1s" }\n')
    start = time.monotonic()
    try:
        got = cli("up", "-f", str(slow), timeout=60)
        assert got.returncode == 1 and time.monotonic() - start < 10
        assert "host slow was not ready after 1s (waiting for TCP port 80)" in got.stderr
    finally:
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], "slow"), ignore_errors=True)
    assert cli("ls").stdout.startswith("no vhosts")


def test_a_ready_port_open_only_on_the_hosts_own_loopback_counts(cli, tmp_path):
    """serf's RPC and many admin ports listen on 127.0.0.1 only: `ready = {
    tcp = P }` is tried at the host's address and, from inside, at its own
    127.0.0.1 (the machine's 127.0.0.1:P, held here, does not count).  The
    lab file may be given as an argument, to up and to down."""
    machine = socket.socket()
    machine.bind(("127.0.0.1", 0))
    machine.listen()
    port = machine.getsockname()[1]
    quiet, local = tmp_path / "quiet.toml", tmp_path / "local.toml"
    quiet.write_text(f'[hosts.quiet]\nip = "198.19.250.24"\nready = {{ tcp = {port}, timeout = "2s" }}\n')
    local.write_text(f'[hosts.local]\nip = "198.19.250.25"\nready = {{ tcp = {port}, timeout = "20s" }}\n'
                     f'cmd = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]\n')
    try:
        got = cli("up", "-d", str(quiet), timeout=60)
        assert got.returncode == 1 and "host quiet was not ready after 2s" in got.stderr, got.stderr
        got = cli("up", "-d", str(local), timeout=60)
        assert got.returncode == 0 and "local ready (198.19.250.25)" in got.stderr, got.stderr
    finally:
        down = cli("down", str(local), timeout=60)
        machine.close()
        for name in ("quiet", "local"):
            shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], name), ignore_errors=True)
    assert down.stdout == "lab local is down\n", down.stderr


def test_up_refuses_an_address_a_running_vhost_holds_before_starting_anything(cli, tmp_path, sleeper):
    sleeper(ip="198.19.250.32", name="squatter")
    lab = tmp_path / "clash.toml"
    lab.write_text('[hosts.a]\nip = "198.19.250.31"\n[hosts.b]\nip = "198.19.250.32"\n')
    got = cli("up", "-d", "-f", str(lab))
    assert got.returncode == 1
    assert got.stderr.strip() == ("vaddr: lab clash: host b: 198.19.250.32 is taken by running vhost 'squatter' "
                                  "(fix: vaddr rm squatter, or rename the host / change its address)")
    assert [h["name"] for h in json.loads(cli("ls", "--json").stdout)] == ["squatter"]


def test_run_exits_with_cmd_status_and_takes_the_lab_down_on_sigterm_and_ctrl_c(cli, tmp_path):
    lab = tmp_path / "wrap.toml"
    lab.write_text('[hosts.web]\nip = "198.19.250.41"\ncmd = "python3 -m http.server 8000"\nready = { tcp = 8000 }\n'
                   '[hosts.db-1]\nip = "198.19.250.42"\n')
    got = cli("run", "-f", str(lab), "--", "sh", "-c",
              'echo "$VADDR_LAB $VADDR_HOST_WEB $VADDR_HOST_DB_1"; curl -sf -o /dev/null http://web:8000/ && exit 7',
              timeout=60)
    assert got.returncode == 7, got.stderr
    assert got.stdout.strip() == "wrap 198.19.250.41 198.19.250.42"
    assert cli("status").stdout.startswith("no lab is up")
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        marker = tmp_path / f"started-{sig}"
        proc = subprocess.Popen([*vaddr_cli(), "run", "-f", str(lab), "--", "sh", "-c", f"touch {marker}; sleep 60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        wait_for(marker.exists, what="the wrapped command")
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)  # Ctrl-C hits the whole group
        assert proc.wait(30) == code, proc.stderr.read()
        assert cli("status").stdout.startswith("no lab is up") and cli("ls").stdout.startswith("no vhosts")


def test_save_then_up_reproduces_the_lab_and_its_links(cli, tmp_path):
    lab = tmp_path / "orig.toml"
    lab.write_text('[lab]\nname = "snap"\n[hosts.a]\nip = "198.19.250.51"\ncmd = "sleep infinity"\n'
                   '[hosts.b]\ncount = 2\nip = "198.19.250.52"\ncmd = ["sh", "-c", "echo id {index}; sleep infinity"]\n'
                   'ready = { log = "id" }\n[[links]]\nbetween = ["a", "b1"]\ndelay = "5ms"\n')
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    cli("link", "set", "a", "b2", "--loss", "2%", "--oneway", check=True)
    saved = tmp_path / "saved.toml"
    assert cli("save", str(saved), check=True).stdout.startswith(f"wrote {saved}: 3 hosts")
    before = json.loads(cli("status", "--json").stdout)[0]
    assert cli("down", check=True)
    assert cli("up", "-d", "-f", str(saved), timeout=60).returncode == 0
    try:
        after = json.loads(cli("status", "--json").stdout)[0]
        assert [(h["name"], h["ip4"], h["state"]) for h in after["hosts"]] == \
            [(h["name"], h["ip4"], h["state"]) for h in before["hosts"]]
        links = {(l["src_name"], l["dst_name"]): l for l in after["links"]}
        assert links[("a", "b1")]["delay_us"] == 5000 and links[("b1", "a")]["delay_us"] == 5000
        assert links[("a", "b2")]["loss"] == pytest.approx(0.02) and ("b2", "a") not in links
        assert "id 2" in cli("logs", "b2").stdout
    finally:
        cli("down", timeout=60)


def test_private_folders_are_each_hosts_own_and_go_with_the_lab(cli, tmp_path):
    private = "/run/vaddr-test-private"
    assert not os.path.exists(private)
    lab = tmp_path / "priv.toml"
    lab.write_text(f'[hosts.p]\ncount = 2\nip = "198.19.250.61"\nprivate = ["{private}"]\n'
                   f'cmd = ["sh", "-c", "echo {{name}} > {private}/who; sleep infinity"]\n')
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    try:
        wait_for(lambda: cli("exec", "p2", "--", "cat", f"{private}/who").stdout == "p2\n", what="p2's file")
        assert cli("exec", "p1", "--", "cat", f"{private}/who").stdout == "p1\n"
        assert os.listdir(private) == []  # the machine's own view: an empty mount point
    finally:
        cli("down", timeout=60)
    assert not os.path.exists(private)


def test_a_hosts_user_gets_its_own_home_and_names_as_runuser_l_gives_them(cli, tmp_path, test_user):
    """Patroni, run as postgres, keeps ~/.pgpass: HOME must be the user's,
    not root's; a HOME in the host's env wins."""
    import pwd
    home = pwd.getpwnam(test_user.name).pw_dir
    lab = tmp_path / "who.toml"
    show = 'cmd = ["sh", "-c", "echo $HOME $USER $LOGNAME $SHELL > {dir}/env; sleep infinity"]\n'
    lab.write_text(f'[hosts.u]\nip = "198.19.250.64"\nuser = "{test_user.name}"\n{show}'
                   f'[hosts.h]\nip = "198.19.250.65"\nuser = "{test_user.name}"\nenv = {{ HOME = "/tmp" }}\n{show}')
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    try:
        [state] = json.loads(cli("status", "--json").stdout)
        dirs = {h["name"]: os.path.join(os.path.dirname(h["log"]), "work", "env") for h in state["hosts"]}
        wait_for(lambda: all(os.path.exists(d) and open(d).read() for d in dirs.values()), what="the hosts' env")
        shell = pwd.getpwnam(test_user.name).pw_shell
        assert open(dirs["u"]).read().split() == [home, test_user.name, test_user.name, shell]
        assert open(dirs["h"]).read().split()[0] == "/tmp"
    finally:
        cli("down", timeout=60)


def test_a_host_whose_user_cannot_enter_the_lab_folder_runs_in_its_work_folder(cli, tmp_path, test_user):
    """A lab file in root's own folder, a host run as another user: started
    there, it would fail at its first getcwd, far from the cause (initdb:
    "could not change directory").  It starts in its work folder instead, as
    `runuser -l` starts in the user's home, and says so in its log; a cwd
    named in the file that the user cannot enter is refused before anything starts."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    lab = closed / "closed.toml"
    host = f'ip = "198.19.250.66"\nuser = "{test_user.name}"\ncmd = ["sh", "-c", "pwd > where; sleep 60"]\n'
    lab.write_text(f"[hosts.c]\n{host}")
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    try:
        [state] = json.loads(cli("status", "--json").stdout)
        work = os.path.join(os.path.dirname(state["hosts"][0]["log"]), "work")
        wait_for(lambda: os.path.exists(os.path.join(work, "where")), what="the host's pwd")
        assert open(os.path.join(work, "where")).read().strip() == work
        assert f"cannot enter {closed}" in open(state["hosts"][0]["log"]).read()
    finally:
        cli("down", timeout=60)
    lab.write_text(f'[hosts.c]\n{host}cwd = "{closed}"\n')
    got = cli("up", "-d", "-f", str(lab), timeout=60)
    assert got.returncode != 0
    assert got.stderr.count("\n") == 1 and "cannot enter its cwd" in got.stderr, got.stderr
    assert json.loads(cli("status", "--json").stdout) == []


def test_foreground_up_prefixes_each_hosts_output_and_ctrl_c_takes_it_down(tmp_path, cli):
    lab = tmp_path / "fg.toml"
    lab.write_text('[hosts.talker]\nip = "198.19.250.71"\ncmd = ["sh", "-c", "echo hello from $(hostname); sleep 60"]\n'
                   'ready = { log = "hello" }\n')
    proc = subprocess.Popen([*vaddr_cli(), "up", "-f", str(lab)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("talker | hello"):
            line = proc.stdout.readline()
        assert line == "talker | hello from talker\n"
        assert [h["name"] for h in json.loads(cli("ls", "--json").stdout)] == ["talker"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(30) == 0
    assert "taking lab fg down" in proc.stderr.read()
    assert cli("ls").stdout.startswith("no vhosts")


def test_python_api_partition_and_links_act_on_the_lab(tmp_path):
    import socket

    import vaddr
    lab = vaddr.Lab("api")
    a = lab.add_host("a", ip="198.19.250.81", cmd=["python3", "-m", "http.server", "8000"], ready={"tcp": 8000})
    b = lab.add_host("b", ip="198.19.250.82")
    fetch = ["curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://a:8000/"]
    with lab:
        assert b.run(fetch).stdout == "200"
        with lab.partitioned(["a"], ["b"]):
            assert b.run(fetch).returncode == 28  # curl's timeout: nothing crosses
        assert b.run(fetch).stdout == "200"
        lab.link("a", "b").set(delay="100ms")
        start = time.monotonic()
        assert b.run(fetch).stdout == "200" and time.monotonic() - start > 0.4  # handshake + request: 2 RTTs
        assert a.pids() and b.ip == "198.19.250.82" and "GET /" in a.logs()
        a.stop()
        assert a.state == "stopped" and not a.pids()
        a.start()
        a.wait_ready()
        assert b.run(fetch).stdout == "200" and a.restarts == 1
    assert vaddr.find("a") is None and not lab.is_up
    with pytest.raises(KeyError):
        lab["c"]


def test_down_ends_the_partitions_and_links_set_on_its_hosts_from_the_command_line(cli, tmp_path):
    """`vaddr partition` and `vaddr link set` name a lab's hosts but are not
    the lab's own: after down they must not wait for the next lab on those
    addresses (a Patroni test left its leader cut off so, for the next one)."""
    lab_file = tmp_path / "vaddr.toml"
    lab_file.write_text('[lab]\nname = "cut"\n[hosts.a]\nip = "198.19.250.84"\ncmd = "sleep infinity"\n'
                        '[hosts.b]\nip = "198.19.250.85"\ncmd = "sleep infinity"\n')
    assert cli("up", "-d", str(lab_file)).returncode == 0
    try:
        assert cli("partition", "a", "b").returncode == 0
        assert cli("link", "set", "a", "host", "--delay", "5ms").returncode == 0
        assert len(json.loads(cli("link", "ls", "--json").stdout)) == 4
    finally:
        assert cli("down", "cut", timeout=60).returncode == 0
    assert json.loads(cli("link", "ls", "--json").stdout) == []


def test_lab_hosts_take_the_machines_loopback_or_interfaces_when_asked(tmp_path):
    """host_loopback and host_interfaces in a lab file, as --host-loopback and
    --host-interfaces on spawn: only the host that asks for them gets them."""
    import socket

    import vaddr
    machine = socket.socket()
    machine.bind(("127.0.0.1", 0))
    machine.listen()
    port = machine.getsockname()[1]
    lab_file = tmp_path / "ways_out.toml"
    lab_file.write_text(f"""
[lab]
name = "waysout"
[hosts.cache_user]
ip = "198.19.250.91"
host_loopback = true
[hosts.sees_machine]
ip = "198.19.250.92"
host_interfaces = true
[hosts.plain]
ip = "198.19.250.93"
""")
    reach = ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"]
    # glibc's if_nameindex asks netlink, as getifaddrs does.
    addresses = ["python3", "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"]
    try:
        with vaddr.Lab.from_file(str(lab_file)) as lab:
            assert lab["cache_user"].run(reach).returncode == 0
            assert lab["plain"].run(reach).returncode != 0
            machine_view = sorted(n for _, n in socket.if_nameindex())
            assert lab["sees_machine"].run(addresses).stdout.strip() == str(machine_view)
            assert lab["plain"].run(addresses).stdout.strip() == "['eth0', 'lo']"
    finally:
        machine.close()


def test_lab_as_a_user_runs_on_the_shim_and_refuses_what_it_cannot_do(test_user, user_folder):
    lab = user_folder / "shim.toml"
    lab.write_text('[hosts.web]\nip = "198.19.250.91"\ncmd = "python3 -m http.server 8000"\nready = { tcp = 8000 }\n'
                   '[hosts.peer]\nip = "198.19.250.92"\n')
    got = test_user.run("up", "-d", "-f", str(lab))
    assert got.returncode == 0, got.stderr
    try:
        status = json.loads(test_user.run("status", "--json").stdout)[0]
        assert [(h["name"], h["state"], h["backend"]) for h in status["hosts"]] == \
            [("web", "ready", "preload"), ("peer", "ready", "preload")]
        fetch = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8000/"]  # the shim's names
        assert test_user.run("exec", "peer", "--", *fetch).stdout == "200"
        assert test_user.run("exec", "peer", "--", "hostname").stdout == "peer\n"
        assert test_user.run("exec", "peer", "--", "getent", "hosts", "web").stdout.split() == ["198.19.250.91", "web"]
        own = test_user.run("exec", "peer", "--", "python3", "-c",
                            "import socket; print(socket.gethostbyname(socket.gethostname()))")
        assert own.stdout == "198.19.250.92\n"
        assert "web" not in open("/etc/hosts").read()  # a user's lab names stay the user's
        assert "198.19.250.92" in test_user.run("logs", "web").stdout  # the server saw the peer's vIP
        assert test_user.run("stop", "web").returncode == 0
        assert test_user.run("exec", "peer", "--", *fetch).stdout == "000"
        assert test_user.run("start", "web").returncode == 0
        assert test_user.run("exec", "peer", "--", *fetch).stdout == "200"
    finally:
        assert test_user.run("down").returncode == 0
    got = test_user.run("run", "-f", str(lab), "--", *fetch)  # CMD on the machine, a client of the shim lab
    assert (got.returncode, got.stdout) == (0, "200"), got.stderr
    for extra, says in (('private = ["/run/x"]\n', "private folders need the eBPF backend"),
                        ('[[links]]\nbetween = ["web", "peer"]\nloss = "1%"\n', "link settings need the eBPF backend")):
        lab.write_text(lab.read_text() + extra)
        got = test_user.run("up", "-d", "-f", str(lab))
        assert got.returncode == 1 and got.stderr.count("\n") == 1 and says in got.stderr, got.stderr
        lab.write_text(lab.read_text().replace(extra, ""))
    assert test_user.run("ls").stdout.startswith("no vhosts")


def test_down_names_the_processes_that_needed_sigkill(cli, tmp_path):
    lab = tmp_path / "stubborn.toml"
    lab.write_text('[lab]\nname = "stubborn"\ngrace = "0.5s"\n[hosts.mule]\nip = "198.19.250.101"\n'
                   """cmd = ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"]\n"""
                   'ready = { log = "up" }\n')
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    pids = json.loads(cli("status", "--json").stdout)[0]["hosts"][0]["pids"]
    start = time.monotonic()
    got = cli("down", "stubborn", timeout=60)
    assert got.returncode == 0 and time.monotonic() - start < 5
    line = next(l for l in got.stdout.splitlines() if l.startswith("mule: SIGKILL after the grace period for pid"))
    assert str(pids[0]) in line  # the shell that ignored SIGTERM


def test_reset_removes_a_lab_whose_owner_was_killed(cli, tmp_path):
    lab = tmp_path / "orphan.toml"
    lab.write_text('[lab]\nname = "orphan"\n[hosts.a]\nip = "198.19.250.111"\n[hosts.b]\nip = "198.19.250.112"\n')
    assert cli("up", "-d", "-f", str(lab), timeout=60).returncode == 0
    status = json.loads(cli("status", "--json").stdout)[0]
    from vaddr.lab import store
    os.kill(store.load("orphan")["owner"], signal.SIGKILL)
    wait_for(lambda: "its vaddr up is gone" in cli("status").stdout, what="the owner seen as gone")
    assert all(h["pids"] for h in status["hosts"])  # the hosts outlive their owner
    assert "vaddr lab orphan" in open("/etc/hosts").read()
    assert cli("reset", check=True).stdout.startswith("1 labs, 2 vhosts")
    assert "vaddr lab orphan" not in open("/etc/hosts").read()
    assert cli("status").stdout.startswith("no lab is up") and cli("ls").stdout.startswith("no vhosts")


def test_a_user_without_a_home_is_told_where_to_put_the_lab_not_shown_a_traceback(test_user, user_folder):
    """A system user (useradd --system) has no home for ~/.local/state."""
    lab = user_folder / "homeless.toml"
    lab.write_text('[hosts.web]\nip = "198.19.250.93"\n')
    env = dict(test_user.env, HOME="/nonexistent/home")
    del env["VADDR_LAB_DIR"]
    got = subprocess.run(test_user.argv("up", "-d", str(lab)), env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 1 and got.stderr.count("\n") == 1, got.stderr
    assert "/nonexistent/home/.local/state/vaddr/labs/homeless" in got.stderr and "VADDR_LAB_DIR" in got.stderr
    assert test_user.run("ls").stdout.startswith("no vhosts")
    assert test_user.run("status").stdout.startswith("no lab is up")

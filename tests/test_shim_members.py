"""LD_PRELOAD vhosts keep their processes whatever the programs do: daemons
that fork away, rename themselves, clear their environment and close every
descriptor stay listed, reachable and removable; and a vhost process never
falls back to the machine's own addresses (issue 8: membership, fail closed).
All as an unprivileged user, against the real kernel."""
import json
import os
import subprocess
import time

import pytest

from tests.conftest import need
from tests.lab import nginx_site

pytestmark = pytest.mark.kernel

# Everything a daemon may do to lose track of where it came from: double
# fork with setsid, close every descriptor, clear its environment (as
# setproctitle effectively does to /proc/PID/environ), rename itself, and
# exec a fresh image with an empty environment.  The final image serves
# "hello from <its address>" on port 7800.
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 7800)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(("hello from %s" % c.getsockname()[0]).encode()); c.close()
"""
DAEMON = f"""
import ctypes, os, sys
if os.fork(): sys.exit(0)
os.setsid()
if os.fork(): os._exit(0)
os.closerange(0, 65536)
libc = ctypes.CDLL(None)
libc.clearenv()
libc.prctl(15, b"renamed-daemon", 0, 0, 0)  # PR_SET_NAME
os.execve(sys.executable, [sys.executable, "-c", {SERVER!r}], {{}})
"""


def fetch(user, client_ip, server_ip, port=7800):
    code = (f"import socket; s = socket.create_connection(('{server_ip}', {port}), timeout=3); "
            "print(s.recv(100).decode(), s.getsockname()[0])")
    return user.run("spawn", "--ip", client_ip, "--", "python3", "-c", code)


def wait_serving(user, client_ip, server_ip, port=7800, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        got = fetch(user, client_ip, server_ip, port)
        if got.returncode == 0 or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def listed(user):
    proc = user.run("ls", "--json")
    assert proc.returncode == 0, proc.stderr
    return {h["name"]: h for h in json.loads(proc.stdout)}


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_daemon_that_forks_away_and_scrubs_itself_stays_in_its_vhost(test_user, vips):
    user, server, client = test_user, vips(), vips()
    try:
        started = user.run("spawn", "--ip", server, "--", "python3", "-c", DAEMON)
        assert started.returncode == 0, started.stderr  # the first process exits at once
        got = wait_serving(user, client, server)
        assert got.stdout.split() == ["hello", "from", server, client], got.stderr
        pids = listed(user)[server]["pids"]
        assert len(pids) == 1 and open(f"/proc/{pids[0]}/comm").read().strip() in ("renamed-daemon", "python3")
        for _ in range(5):  # ls and exec never decide it is dead
            assert user.run("exec", server, "--", "true").returncode == 0
            assert listed(user)[server]["pids"] == pids
            assert fetch(user, client, server).returncode == 0
        removed = user.run("rm", "--timeout", "2", server)
        assert removed.returncode == 0, removed.stderr
        assert not alive(pids[0])
        assert server not in listed(user)
    finally:
        user.run("reset")


def test_nginx_in_its_default_daemon_mode_is_listed_reachable_and_ended(test_user, vips, user_folder):
    nginx, curl = need("nginx"), need("curl")
    user, server, client = test_user, vips(), vips()
    conf = nginx_site(user_folder / "site", "daemonized\n", daemon=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user_folder)], check=True)
    try:
        started = user.run("spawn", "--ip", server, "--", nginx, "-c", str(conf), "-p", str(conf.parent))
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 10
        while True:
            got = user.run("spawn", "--ip", client, "--", curl, "-sS", f"http://{server}:8080/")
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.stdout == "daemonized\n", got.stderr
        assert (user_folder / "site" / "access.log").read_text().split()[0] == client
        pids = listed(user)[server]["pids"]
        titles = sorted(open(f"/proc/{p}/cmdline").read().split("\0")[0] for p in pids)
        assert titles[0].startswith("nginx: master process") and titles[1] == "nginx: worker process", titles
        assert user.run("reset").returncode == 0
        assert not [p for p in pids if alive(p)]
    finally:
        user.run("reset")


def test_a_process_whose_address_left_the_map_fails_closed(test_user, vips, user_folder):
    """What dropping a live vhost's address used to cause: a later wildcard
    bind got the machine's real wildcard.  Now binds and connects fail with
    EADDRNOTAVAIL and one line naming vaddr."""
    user, server = test_user, vips()
    flag = user_folder / "go"
    code = f"""
import os, socket, time
while not os.path.exists("{flag}"):
    time.sleep(0.02)
for what in ("bind", "connect"):
    s = socket.socket()
    try:
        s.bind(("", 7801)) if what == "bind" else s.connect(("127.0.0.1", 22))
        print(what, "worked", s.getsockname())
    except OSError as e:
        print(what, "failed", e.errno)
"""
    proc = user.popen("spawn", "--ip", server, "--", "python3", "-c", code, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    try:
        mapfile = os.path.join(user.run_dir, "preload.map")
        deadline = time.monotonic() + 10
        while not (os.path.exists(mapfile) and server in open(mapfile).read()) and time.monotonic() < deadline:
            time.sleep(0.02)
        kept = [line for line in open(mapfile) if not line.startswith(server + " ")]
        with open(mapfile + ".new", "w") as f:
            f.writelines(kept)
        os.rename(mapfile + ".new", mapfile)
        flag.touch()
        out, err = proc.communicate(timeout=10)
        assert out.splitlines() == ["bind failed 99", "connect failed 99"], (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vaddr: vhost address {server} is no longer in the map")
    finally:
        proc.kill()
        proc.wait()
        user.run("reset")


@pytest.mark.parametrize("program, kind", [("/bin/busybox", "a static binary"), ("/usr/bin/etcd", "a Go program")])
def test_a_static_or_go_program_started_inside_a_shim_vhost_is_refused(test_user, vips, program, kind):
    """`vaddr spawn` refuses them; so must a shell inside the vhost, which
    would otherwise run them on the machine's own addresses."""
    need(program)
    proc = test_user.run("spawn", "--ip", vips(), "--", "sh", "-c", f"{os.path.basename(program)} --version")
    assert proc.returncode == 126, (proc.stdout, proc.stderr)
    assert f"vaddr: {program} is {kind}: the LD_PRELOAD shim cannot give it an address" in proc.stderr
    assert "Permission denied" in proc.stderr  # the shell's own report of EACCES


def test_ls_finds_each_shim_vhosts_own_process_in_one_pass(vips, sleeper):
    """list_vhosts reads /proc once for all shim vhosts; each still gets
    exactly its own process, and the CLI shows the same."""
    import vaddr
    from tests.conftest import vaddr_cli
    procs = {ip: sleeper(ip=ip, backend="preload") for ip in [vips() for _ in range(30)]}
    listed = {h.ip4: h.pids() for h in vaddr.list_vhosts()}
    assert listed == {ip: [p.pid] for ip, p in procs.items()}
    shown = json.loads(subprocess.run([*vaddr_cli(), "ls", "--json"], capture_output=True, text=True).stdout)
    assert {h["ip4"]: h["pids"] for h in shown} == listed


def _pg_bin(name):
    import glob
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return need(found[-1] if found else name)


def test_a_users_daemonized_redis_and_postgresql_stay_listed_reachable_and_end(test_user, vips, user_folder):
    """The issue's daemons as a user: redis-server --daemonize yes (it sets
    its title) and PostgreSQL (a postmaster whose children rename
    themselves), each listed, reachable from another vhost while ls and exec
    run again and again, and ended, every process, by rm and reset."""
    redis, redis_cli = need("redis-server"), need("redis-cli")
    initdb, postgres, psql = _pg_bin("initdb"), _pg_bin("postgres"), _pg_bin("psql")
    user, kv, db, client = test_user, vips(), vips(), vips()
    data = user_folder / "pg"
    made = subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
         initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], env=user.env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with open(data / "pg_hba.conf", "a") as f:  # as an admin would: the client's address, and only it
        f.write(f"host all all {client}/32 trust\n")
    try:
        started = user.run("spawn", "--ip", kv, "--", redis, "--daemonize", "yes", "--save", "",
                           "--protected-mode", "no", "--dir", str(user_folder))
        assert started.returncode == 0, started.stderr
        with open(user_folder / "pg.log", "w") as log:
            pg = user.popen("spawn", "--ip", db, "--", postgres, "-D", str(data), "-k", str(data),
                            "-c", f"listen_addresses={db}", stdout=subprocess.DEVNULL, stderr=log)
        ask_redis = ("spawn", "--ip", client, "--", redis_cli, "-h", kv, "ping")
        ask_pg = ("spawn", "--ip", client, "--", psql, "-h", db, "-U", "postgres", "-Atc",
                  "select client_addr from pg_stat_activity where pid = pg_backend_pid()")
        deadline = time.monotonic() + 30
        while (user.run(*ask_redis).stdout.strip() != "PONG" or user.run(*ask_pg).returncode) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        first = listed(user)
        for _ in range(10):  # ls, exec and clients, again and again: nobody decides they are dead
            assert user.run(*ask_redis).stdout.strip() == "PONG"
            got = user.run(*ask_pg)
            assert got.stdout.strip() == client, got.stderr + (user_folder / "pg.log").read_text()[-800:]
            assert user.run("exec", kv, "--", "true").returncode == 0
            now = listed(user)
            assert now[kv]["pids"] == first[kv]["pids"] and now[db]["pids"] == first[db]["pids"]
        titles = [open(f"/proc/{p}/cmdline").read().split("\0")[0] for p in first[db]["pids"]]
        assert len(first[db]["pids"]) >= 4 and any(t.startswith("postgres: ") for t in titles), titles
        assert "*:6379" in open(f"/proc/{first[kv]['pids'][0]}/cmdline").read()  # its title, rewritten
        assert user.run("rm", "--timeout", "5", kv).returncode == 0
        assert not [p for p in first[kv]["pids"] if alive(p)]
        assert user.run("reset").returncode == 0
        assert not [p for p in first[db]["pids"] if alive(p)]
        pg.wait(timeout=10)
    finally:
        user.run("reset")

"""The LD_PRELOAD backend as its users meet it: without root, with real
programs, under threads, fork and exec, and refusing what it cannot serve."""
import glob
import json
import os
import shutil
import subprocess
import time

import pytest

import vaddr
from tests.conftest import need
from tests.lab import communicate, nginx_site, run_in, run_py, start_py, until, wait_fact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shim_pure_functions_pass_their_c_unit_tests():
    out = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "preload"), "test"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "translate: 0 failed" in out.stdout and "pure: 0 failed" in out.stdout


def test_non_root_spawn_picks_the_shim_and_says_so(test_user, vips):
    ip = vips()
    proc = test_user.run("spawn", "-v", "--ip", ip, "--", "python3", "-c",
                   "import socket, os; s = socket.socket(); s.bind(('', 8080)); print(s.getsockname()[0], os.getuid())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [ip, str(test_user.uid)]
    assert "backend preload (not root)" in proc.stderr


def test_nginx_and_curl_as_an_unprivileged_user(test_user, vips, user_folder):
    """nginx in two shim vhosts on one port; curl from a third vhost and as a
    --client; the access logs name the client's vIP and the host's address."""
    nginx, curl = need("nginx"), need("curl")
    tmp_path, user = user_folder, test_user
    servers, client = [vips(), vips()], vips()
    procs = []
    try:
        for i, ip in enumerate(servers):
            d = nginx_site(tmp_path / f"n{i}", f"server {i}\n", listen="listen 8080; listen [::]:8080;").parent
            subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(d)], check=True)
            procs.append(user.popen("spawn", "--ip", ip, "--", nginx, "-c", str(d / "nginx.conf"),
                                       "-p", str(d), stderr=subprocess.DEVNULL))
        for i, ip in enumerate(servers):
            deadline = time.monotonic() + 10
            while True:
                got = user.run("spawn", "--ip", client, "--", curl, "-sS", f"http://{ip}:8080/")
                if got.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert got.stdout == f"server {i}\n", got.stderr
            assert (tmp_path / f"n{i}" / "access.log").read_text().split()[0] == client
        got = user.run("exec", "--client", "--", curl, "-sS", f"http://{servers[0]}:8080/")
        assert got.stdout == "server 0\n", got.stderr
        assert (tmp_path / "n0" / "access.log").read_text().splitlines()[-1].split()[0] == "127.0.0.1"
        listed = json.loads(user.run("ls", "--json").stdout)
        assert sorted(h["ip4"] for h in listed) == sorted(servers)
        assert all(h["backend"] == "preload" for h in listed)
        assert user.run("rm", servers[1]).stdout == f"removed {servers[1]}\n"
        assert procs[1].wait(timeout=5) == 0  # nginx stops cleanly on SIGTERM, and its vaddr spawn ends
        got = user.run("spawn", "--ip", client, "--", curl, "-sS", "-m", "2", f"http://{servers[1]}:8080/")
        assert got.returncode != 0 and got.stdout == ""
        assert user.run("reset").returncode == 0
        assert json.loads(user.run("ls", "--json").stdout) == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_socat_between_shim_vhosts_as_user(test_user, vips):
    socat = need("socat")
    server, client = vips(), vips()
    user = test_user
    srv = user.popen("spawn", "--ip", server, "--", socat, "TCP-LISTEN:7700,reuseaddr",
                     "SYSTEM:echo $SOCAT_PEERADDR", stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            got = user.run("spawn", "--ip", client, "--", socat, "-", f"TCP:{server}:7700", input="")
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.stdout.strip() == client, got.stderr
    finally:
        srv.kill()
        srv.wait()
        user.run("reset")


def test_a_users_redis_vhosts_each_answer_redis_cli_with_no_arguments(test_user, vips, user_folder):
    """Without root: Redis's defaults (`bind * -::*`, protected mode on) in
    two vhosts of one user, beside the machine's own server on
    127.0.0.1:6379.  redis-cli with no -h in each reaches its own vhost's
    server as a local client; from another vhost's address protected mode
    refuses, as between two hosts; the machine's server keeps its own data."""
    server, cli = need("redis-server"), need("redis-cli")
    folder = user_folder
    machine = subprocess.Popen([server, "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--dir", folder],
                               stdout=subprocess.DEVNULL)
    ips = [vips(), vips()]
    servers = [test_user.popen("spawn", "--ip", ip, "--", server, "--save", "", "--dir", folder,
                               stdout=subprocess.DEVNULL) for ip in ips]
    try:
        until(lambda: subprocess.run([cli, "ping"], capture_output=True, text=True).stdout.strip() == "PONG",
              "the machine's redis")
        assert subprocess.run([cli, "set", "who", "machine"], capture_output=True, text=True).stdout.strip() == "OK"
        for ip in ips:
            until(lambda: test_user.run("exec", ip, "--", cli, "ping").stdout.strip() == "PONG", f"redis in {ip}")
            assert test_user.run("exec", ip, "--", cli, "set", "who", ip).stdout.strip() == "OK"
        for ip in ips:
            assert test_user.run("exec", ip, "--", cli, "get", "who").stdout.strip() == ip
            clients = test_user.run("exec", ip, "--", cli, "client", "list").stdout
            assert "addr=127.0.0.1:" in clients and "laddr=127.0.0.1:6379" in clients, clients
        denied = test_user.run("exec", ips[0], "--", cli, "-h", ips[1], "get", "who").stdout
        assert denied.startswith("DENIED Redis is running in protected mode"), denied
        assert subprocess.run([cli, "get", "who"], capture_output=True, text=True).stdout.strip() == "machine"
    finally:
        for proc in servers + [machine]:
            proc.kill()
            proc.wait()
        test_user.run("reset")


@pytest.mark.parametrize("program, kind", [("/bin/busybox", "a static binary"), ("etcd", "a Go program")])
def test_static_and_go_programs_are_refused(cli, vips, program, kind):
    path = need(program)
    proc = cli("spawn", "--backend", "preload", "--ip", vips(), "--", path, "--version")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is {kind}" in lines[0] and "--backend ebpf" in lines[0], proc.stderr
    assert not vaddr.list_vhosts()


def test_a_users_ipv6_only_vhosts_serve_http_and_see_each_others_vip6(test_user, vip6s, user_folder):
    """IPv6 vIPs under the shim, as a user: an IPv6-only vhost's http.server
    on [::] answers curl from another IPv6-only vhost, logs that vhost's
    vIP6, and is listed and removed by it."""
    from tests.conftest import need
    from tests.lab import wait_listening
    curl, user, server, client = need("curl"), test_user, vip6s(), vip6s()
    (user_folder / "index.html").write_text("over ipv6\n")
    log = user_folder / "access.log"
    served = user.popen("spawn", "--ip", server, "--", "python3", "-m", "http.server", "--bind", "::", "-d",
                        str(user_folder), "8000", stderr=open(log, "w"), stdout=subprocess.DEVNULL)
    try:
        wait_listening(server, 8000, run_dir=user.run_dir)
        got = user.run("spawn", "--ip", client, "--", curl, "-sS", "-g", f"http://[{server}]:8000/index.html")
        assert got.returncode == 0 and got.stdout == "over ipv6\n", got.stderr
        assert f"{client} - -" in log.read_text() or f"[{client}]" in log.read_text(), log.read_text()
        listed = {h["ip6"]: h for h in json.loads(user.run("ls", "--json").stdout)}
        assert listed[server]["pids"] and listed[server]["ip4"] is None
        assert user.run("rm", "--timeout", "2", server).returncode == 0
        assert served.wait(timeout=10) is not None
        assert json.loads(user.run("ls", "--json").stdout) == []
    finally:
        served.kill()
        served.wait()
        user.run("reset")


def test_many_threads_bind_and_connect_at_once(vips):
    server, client = vips(), vips()
    srv = start_py("""
        import threading
        s = socket.socket(); s.bind(("", 7701)); s.listen(512); fact(ready=1)
        peers = set()
        for _ in range(64):
            c, p = s.accept(); peers.add(p[0]); c.close()
        fact(peers=sorted(peers))
    """, ip=server, backend="preload")
    try:
        wait_fact(srv)
        code, facts, err = run_py(f"""
            import threading
            seen = []
            def work():
                c = socket.create_connection(("{server}", 7701)); seen.append((c.getsockname()[0], c.getpeername()[0]))
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 0)); seen.append((u.getsockname()[0], "{server}"))
            ts = [threading.Thread(target=work) for _ in range(64)]
            [t.start() for t in ts]; [t.join() for t in ts]
            fact(pairs=sorted(set(map(tuple, seen))), n=len(seen))
        """, ip=client, backend="preload")
        assert code == 0, err
        assert facts == [{"pairs": [[client, server]], "n": 128}]
        assert wait_fact(srv, timeout=20) == {"peers": [client]}
    finally:
        srv.kill()
        srv.wait()


def test_children_keep_the_shim_through_scrubbed_environments(vips):
    """Children started with an empty environment (env -i, execve with {},
    a shell given env={}), as daemons do, still run with the shim and bind
    the vhost's address; each reports through a pipe of its own."""
    ip = vips()
    code, facts, err = run_py("""
        import subprocess
        probe = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[0])"
        a = subprocess.run(["env", "-i", sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(w, 1)
            os.execve(sys.executable, ["python3", "-c", probe], {})
        os.close(w)
        os.waitpid(pid, 0)
        b = os.read(r, 100).decode().strip()
        c = subprocess.run(["sh", "-c", "exec " + sys.executable + " -c \\"" + probe + "\\""],
                           capture_output=True, text=True, env={}).stdout.strip()
        fact(env_i=a, execve_empty=b, sh_empty=c)
    """, ip=ip, backend="preload")
    assert code == 0, err
    assert facts == [{"env_i": ip, "execve_empty": ip, "sh_empty": ip}]


def test_closed_and_reused_descriptors_keep_translating(vips):
    server, client = vips(), vips()
    srv = start_py("""
        s = socket.socket(); s.bind(("", 7705)); s.listen(); fact(ready=1)
        peers = []
        for _ in range(50):
            c, p = s.accept(); peers.append(p[0]); c.close()
        fact(peers=sorted(set(peers)))
    """, ip=server, backend="preload")
    try:
        wait_fact(srv)
        code, facts, err = run_py(f"""
            names = set()
            for i in range(50):
                c = socket.create_connection(("{server}", 7705)); fd = c.fileno(); names.add(c.getsockname()[0]); c.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # likely the same descriptor number
                u.bind(("", 0)); names.add(u.getsockname()[0]); u.close()
            fact(names=sorted(names))
        """, ip=client, backend="preload")
        assert code == 0, err
        assert facts == [{"names": [client]}]
        assert wait_fact(srv, timeout=20) == {"peers": [client]}
    finally:
        srv.kill()
        srv.wait()


def test_getifaddrs_shows_the_vip_and_hides_its_real_address(vips):
    """hostname -I (getifaddrs) lists the vIP, as on a host that has it, and
    never the real loopback address the shim carries it on."""
    from tests.lab import _shim_real
    ip = vips()
    proc = vaddr.spawn(["sh", "-c", "hostname -I; sleep 0.5"], ip=ip, backend="preload", stdout=vaddr.PIPE,
                       stderr=vaddr.PIPE)
    real = None
    deadline = time.monotonic() + 5
    while real is None and time.monotonic() < deadline:
        real = _shim_real(ip, None)
    out, err = communicate(proc, 10)
    assert proc.returncode == 0, err
    shown = out.split()
    assert real and real.startswith("127.")
    assert shown[0] == ip and real not in shown, (shown, real)


def test_execl_execlp_and_execle_children_keep_the_shim(vips, tmp_path):
    """A C program exec'ing through the variadic family, execle with an empty
    environment: each child still binds the vhost's address."""
    import sys
    src = tmp_path / "execs.c"
    src.write_text(r'''
        #include <unistd.h>
        #include <stdio.h>
        #include <sys/wait.h>
        int main(int argc, char **argv) {
            const char *probe = argv[1], *py = argv[2];
            char *empty[] = {NULL};
            for (int which = 0; which < 3; which++) {
                pid_t pid = fork();
                if (pid == 0) {
                    if (which == 0) execl(py, "python3", "-c", probe, (char *)NULL);
                    if (which == 1) execlp("python3", "python3", "-c", probe, (char *)NULL);
                    if (which == 2) execle(py, "python3", "-c", probe, (char *)NULL, empty);
                    _exit(99);
                }
                int status;
                waitpid(pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status)) return 1;
            }
            return 0;
        }''')
    exe = tmp_path / "execs"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    ip = vips()
    probe = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[0])"
    code, out, err = run_in(ip, [str(exe), probe, sys.executable], backend="preload")
    assert code == 0, err
    assert out.split() == [ip, ip, ip]


def test_users_whose_uids_differ_by_127_get_separate_real_ranges(vips, tmp_path):
    """Each user's real 127.X.0.0/16 is claimed machine-wide (a /tmp file only
    its owner can remove): uids that once mapped to one X (uid % 127) no
    longer share it, so one user's client cannot reach another's server."""
    import pwd
    from tests.conftest import release_claims_of, vaddr_cli
    base = next(u for u in range(61000, 62000) if not _uid_taken(pwd, u) and not _uid_taken(pwd, u + 127))
    ranges, resets = {}, []
    try:
        for uid in (base, base + 127):
            run_dir = f"/run/vaddr-tests-uid-{uid}"
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            os.chown(run_dir, uid, uid)
            env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "VADDR_RUN_DIR": run_dir}
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *vaddr_cli()]
            ip = vips()
            made = subprocess.run([*argv, "spawn", "--keep", "--ip", ip, "--", "true"], env=env, capture_output=True,
                                  text=True, timeout=60)
            assert made.returncode == 0, made.stderr
            with open(os.path.join(run_dir, "preload.map")) as f:
                ranges[uid] = {line.split()[1].rsplit(".", 2)[0] for line in f}
            resets.append(([*argv, "reset"], env))
        assert len(ranges[base]) == len(ranges[base + 127]) == 1
        assert ranges[base] != ranges[base + 127], ranges
        for argv, env in resets:
            assert subprocess.run(argv, env=env, capture_output=True, timeout=60).returncode == 0
        kept = [p for p in glob.glob("/tmp/vaddr-net-127.*") if os.lstat(p).st_uid in ranges]
        assert not kept, f"reset kept its claim: {kept}"
    finally:
        for uid in (base, base + 127):
            subprocess.run(["pkill", "-KILL", "-U", str(uid)], capture_output=True)
            shutil.rmtree(f"/run/vaddr-tests-uid-{uid}", ignore_errors=True)
            release_claims_of(uid)


def _uid_taken(pwd, uid):
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False

"""The LD_PRELOAD backend as its users meet it: without root, with real
programs, under threads, fork and exec, and refusing what it cannot serve."""
import json
import os
import pwd
import shutil
import subprocess
import sys
import time

import pytest

import vaddr
from tests.conftest import need, vaddr_cli
from tests.lab import run_py, start_py, wait_fact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "vaddr-test"


def test_shim_pure_functions_pass_their_c_unit_tests():
    out = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "preload"), "test"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "translate: 0 failed" in out.stdout and "pure: 0 failed" in out.stdout


@pytest.fixture(scope="module")
def user():
    """An unprivileged user made for these tests, removed after them."""
    if os.geteuid() != 0:
        pytest.skip("creating the test user needs root")
    created = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER],
                             capture_output=True).returncode == 0
    entry = pwd.getpwnam(USER)
    try:
        yield entry
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
        shutil.rmtree(f"/tmp/vaddr-{entry.pw_uid}", ignore_errors=True)
        if created:
            subprocess.run(["userdel", USER], capture_output=True)


def as_user(user, *argv, **kwargs):
    """Run vaddr's CLI as the test user, with a clean unprivileged environment."""
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8"}
    cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *vaddr_cli(), *argv]
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(cmd, env=env, timeout=60, **kwargs)


def popen_as_user(user, *argv, **kwargs):
    env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8"}
    cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *vaddr_cli(), *argv]
    return subprocess.Popen(cmd, env=env, **kwargs)


def test_non_root_spawn_picks_the_shim_and_says_so(user, vips):
    ip = vips()
    proc = as_user(user, "spawn", "-v", "--ip", ip, "--", "python3", "-c",
                   "import socket, os; s = socket.socket(); s.bind(('', 8080)); print(s.getsockname()[0], os.getuid())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [ip, str(user.pw_uid)]
    assert "backend preload (not root)" in proc.stderr


@pytest.fixture
def user_dir(user):
    """A folder the test user owns (pytest's own is root's alone)."""
    import tempfile
    from pathlib import Path
    path = tempfile.mkdtemp(prefix="vaddr-test-")
    os.chmod(path, 0o755)
    os.chown(path, user.pw_uid, user.pw_gid)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_nginx_and_curl_as_an_unprivileged_user(user, vips, user_dir):
    """nginx in two shim vhosts on one port; curl from a third vhost and as a
    --client; the access logs name the client's vIP and the host's address."""
    nginx, curl = need("nginx"), need("curl")
    tmp_path = user_dir
    servers, client = [vips(), vips()], vips()
    procs = []
    try:
        from tests.lab import nginx_site
        for i, ip in enumerate(servers):
            d = nginx_site(tmp_path / f"n{i}", f"server {i}\n", listen="listen 8080; listen [::]:8080;").parent
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(d)], check=True)
            procs.append(popen_as_user(user, "spawn", "--ip", ip, "--", nginx, "-c", str(d / "nginx.conf"),
                                       "-p", str(d), stderr=subprocess.DEVNULL))
        for i, ip in enumerate(servers):
            deadline = time.monotonic() + 10
            while True:
                got = as_user(user, "spawn", "--ip", client, "--", curl, "-sS", f"http://{ip}:8080/")
                if got.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert got.stdout == f"server {i}\n", got.stderr
            assert (tmp_path / f"n{i}" / "access.log").read_text().split()[0] == client
        got = as_user(user, "exec", "--client", "--", curl, "-sS", f"http://{servers[0]}:8080/")
        assert got.stdout == "server 0\n", got.stderr
        assert (tmp_path / "n0" / "access.log").read_text().splitlines()[-1].split()[0] == "127.0.0.1"
        listed = json.loads(as_user(user, "ls", "--json").stdout)
        assert sorted(h["ip4"] for h in listed) == sorted(servers)
        assert all(h["backend"] == "preload" for h in listed)
        assert as_user(user, "rm", servers[1]).returncode == 0
        assert as_user(user, "reset").returncode == 0
        assert json.loads(as_user(user, "ls", "--json").stdout) == []
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_socat_between_shim_vhosts_as_user(user, vips):
    socat = need("socat")
    server, client = vips(), vips()
    srv = popen_as_user(user, "spawn", "--ip", server, "--", socat, "TCP-LISTEN:7700,reuseaddr",
                        "SYSTEM:echo $SOCAT_PEERADDR", stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            got = as_user(user, "spawn", "--ip", client, "--", socat, "-", f"TCP:{server}:7700", input="")
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.stdout.strip() == client, got.stderr
    finally:
        srv.kill()
        srv.wait()
        as_user(user, "reset")


@pytest.mark.parametrize("program, kind", [("/bin/busybox", "a static binary"), ("etcd", "a Go program")])
def test_static_and_go_programs_are_refused(cli, vips, program, kind):
    path = need(program)
    proc = cli("spawn", "--backend", "preload", "--ip", vips(), "--", path, "--version")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is {kind}" in lines[0] and "--backend ebpf" in lines[0], proc.stderr
    assert not vaddr.list_vhosts()


def test_ipv6_is_refused(cli, vip6s):
    proc = cli("spawn", "--backend", "preload", "--ip", vip6s(), "--", "true")
    assert proc.returncode != 0 and "IPv4 addresses only" in proc.stderr and proc.stderr.count("\n") == 1


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


def test_env_survives_fork_exec_and_a_scrubbed_environment(vips):
    """A child started with an empty environment (env -i, as daemons do)
    still runs with the shim and the vhost's address."""
    ip = vips()
    code, facts, err = run_py("""
        import subprocess
        probe = "import socket; s = socket.socket(); s.bind(('', 7702)); print(s.getsockname()[0])"
        a = subprocess.run(["env", "-i", "/usr/bin/python3", "-c", probe], capture_output=True, text=True).stdout.strip()
        pid = os.fork()
        if pid == 0:
            os.execve("/usr/bin/python3", ["python3", "-c", probe.replace("7702", "7703")], {})
        os.waitpid(pid, 0)
        b = subprocess.run(["sh", "-c", "exec /usr/bin/python3 -c \\"" + probe.replace("7702", "7704") + "\\""],
                           capture_output=True, text=True, env={}).stdout.strip()
        fact(env_i=a, b=b)
    """, ip=ip, backend="preload")
    assert code == 0, err
    assert facts == [{"env_i": ip, "b": ip}]


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


def test_getifaddrs_shows_the_vhosts_address(vips):
    """hostname -I (getifaddrs) lists the vIP, as on a host that has it."""
    ip = vips()
    proc = vaddr.spawn(["hostname", "-I"], ip=ip, backend="preload", stdout=vaddr.PIPE)
    shown = proc.stdout.read().decode().split()
    assert proc.wait() == 0
    assert ip in shown and not any(a.startswith("127.") for a in shown)

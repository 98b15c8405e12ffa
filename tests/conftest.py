"""Session set-up for tests against the real kernel.

Network safety: tests use virtual addresses only from 127.0.0.0/8,
198.18.0.0/15 and fd76:6164::/32.  Before any test runs, `unreachable` routes
for the last two go into the main table (unless routes for them are already
there, which are then left alone), so that a missing local route fails with
ENETUNREACH instead of sending packets out.  Without root the suite cannot add
them, and refuses to run until they are there.

Isolation: the suite keeps its records in a state folder of its own, refuses
to start while anyone's vhosts, routes or links exist (naming them), and
removes first what a killed run of its own left.

Leaks: every test is bracketed by snapshots of vaddr's kernel and on-disk
state (tests/state.py); a test that leaves a vhost, map entry, route, rule or
record fails and names it.  Nothing in that check cleans up.  At the end the
same check runs before `vaddr reset`, and after it nothing of vaddr's may
remain."""
import itertools
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite_run_dir():
    if os.geteuid() == 0:
        return "/run/vaddr-tests"
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"vaddr-tests-{os.geteuid()}")


# Before vaddr is imported anywhere: runtime.RUN_DIR is read at import.
USER_RUN_DIR = os.environ.get("VADDR_RUN_DIR") or ("/run/vaddr" if os.geteuid() == 0 else None)
SUITE_RUN_DIR = os.environ["VADDR_RUN_DIR"] = _suite_run_dir()
# Labs' work folders: the suite's own, readable by a host's `user`; the leak
# check sees what a test leaves there.
SUITE_LAB_DIR = os.environ["VADDR_LAB_DIR"] = f"/tmp/vaddr-test-labs-{os.geteuid()}"
# Third-party clients (curl, etcdctl) would send lab traffic to a proxy.
for _var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
             "NO_PROXY"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402

from tests import state  # noqa: E402

SAFE_NETS = ("198.18.0.0/15", "fd76:6164::/32")
# The multicast groups tests send to (tests/conformance/test_multicast.py,
# corosync's udp transport, mDNS's, Tomcat's): guarded too, so that a datagram taking the machine's route for
# 224/4 fails instead of leaving.  Root only, as the tests that use them.
GROUP_NETS = ("239.255.76.0/24", "224.0.0.251/32", "228.0.0.4/32")
RTPROT_TEST_GUARD = 0x77  # marks the guard routes this suite added
SUITE_MARK = os.path.join(SUITE_RUN_DIR, "suite.pid")


def _why_no_kernel_tests():
    if os.geteuid() != 0:
        return "the eBPF backend needs root"
    from vaddr import doctor
    failed = [c for c in doctor.checks() if c.required and not c.ok]
    return "; ".join(f"{c.name}: {c.detail}" for c in failed) or None


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs root, cgroup v2 and BPF (the eBPF backend)")


def pytest_collection_modifyitems(config, items):
    why = _why_no_kernel_tests()
    if not why:
        return
    if os.environ.get("CI"):
        # CI must not skip the backend silently: no kernel tests is a failure there.
        pytest.exit(f"kernel tests cannot run in CI: {why}", returncode=3)
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"kernel tests need: {why}"))


# ---- network safety ---------------------------------------------------------

def _guarded(net):
    """Does a route other than a default one already catch this prefix?"""
    from pyroute2 import IPRoute
    dst, plen = net.split("/")
    with IPRoute() as ipr:
        for r in ipr.route("dump", family=10 if ":" in dst else 2):
            if r.get_attr("RTA_DST") == dst and r["dst_len"] == int(plen) and r["type"] in (2, 7):  # local, unreachable
                return True
    return False


def _add_guard_routes():
    """Add the guards that are missing; returns the ones this suite added."""
    from pyroute2 import IPRoute
    added = []
    with IPRoute() as ipr:
        for net in SAFE_NETS + GROUP_NETS:
            if _guarded(net):
                continue
            dst, plen = net.split("/")
            ipr.route("add", dst=dst, dst_len=int(plen), type="unreachable", proto=RTPROT_TEST_GUARD,
                      family=10 if ":" in dst else 2)
            added.append(net)
    return added


def _remove_guard_routes(added):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for net in added:
            dst, plen = net.split("/")
            ipr.route("del", dst=dst, dst_len=int(plen), type="unreachable", proto=RTPROT_TEST_GUARD,
                      family=10 if ":" in dst else 2)


# ---- isolation from the machine's own labs ----------------------------------

def _foreign_state():
    """What vaddr objects exist that are not a killed run's of this suite."""
    found = []
    if USER_RUN_DIR and USER_RUN_DIR != SUITE_RUN_DIR:
        vhosts = os.path.join(USER_RUN_DIR, "vhosts")
        if os.path.isdir(vhosts) and [n for n in os.listdir(vhosts) if not n.startswith(".")]:
            found.append(f"vhosts recorded in {vhosts}")
        if os.path.isdir(os.path.join(USER_RUN_DIR, "nets")) and os.listdir(os.path.join(USER_RUN_DIR, "nets")):
            found.append(f"lab subnets recorded in {USER_RUN_DIR}/nets")
    if not _killed_run_left_it():
        found += sorted(state.objects(state.snapshot()))
    return found


def _killed_run_left_it():
    try:
        pid = int(open(SUITE_MARK).read())
    except (OSError, ValueError):
        return False
    return not os.path.exists(f"/proc/{pid}")


def _claim_machine():
    foreign = _foreign_state()
    if foreign:
        shown = "; ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        pytest.exit(f"vaddr state already exists on this machine: {shown}. The suite would disturb it "
                    f"(fix: stop that lab, or run `vaddr reset` if it is a leftover, then run the tests again)",
                    returncode=4)
    # Left: what a killed run of this suite made (its records are in
    # SUITE_RUN_DIR), or hooks and shaping loaded with no vhost using them.
    # Unloading them also makes this run test the BPF sources it sits beside.
    from vaddr.reset import reset
    reset()
    subprocess.run(["pkill", "-KILL", "-u", TEST_USER], capture_output=True)  # a killed run's shim labs
    os.makedirs(SUITE_RUN_DIR, mode=0o700, exist_ok=True)
    with open(SUITE_MARK, "w") as f:
        f.write(str(os.getpid()))


@pytest.fixture(scope="session", autouse=True)
def safe_lab():
    if os.geteuid() != 0:
        unguarded = [net for net in SAFE_NETS if not _guarded(net)]
        if unguarded:
            pytest.exit(f"no unreachable or local route for {', '.join(unguarded)}: test addresses could leave "
                        "this machine (fix: as root, ip route add unreachable 198.18.0.0/15; "
                        "ip -6 route add unreachable fd76:6164::/32)", returncode=4)
        yield
        return
    _claim_machine()
    added = _add_guard_routes()
    try:
        yield
    finally:
        try:
            before_reset = sorted(state.objects(state.snapshot())) + state.inconsistencies()
            from vaddr.reset import reset
            reset()
            after_reset = sorted(state.snapshot())
        finally:
            _remove_guard_routes(added)
            try:
                os.unlink(SUITE_MARK)
            except FileNotFoundError:
                pass
        assert not before_reset, f"the suite left vaddr state behind: {before_reset}"
        assert not after_reset, f"vaddr reset left state behind: {after_reset}"


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fails a test that leaves vaddr state behind, naming it.  Reads only."""
    if os.geteuid() != 0:
        yield
        return
    before = state.snapshot()
    yield
    after = state.snapshot()
    left = state.leaked(before, after)
    broken = [p for p in state.broken_infra(after) if p not in state.broken_infra(before)]
    if left or broken:
        pytest.fail(f"{request.node.name} left vaddr state behind: {'; '.join(left + broken)}", pytrace=False)


# ---- addresses, the CLI, third-party programs -------------------------------

# Offset per session: a server's TIME_WAIT from the previous run must not
# block this run's bind of the same address and port.
_octets = itertools.count(10 + (os.getpid() % 400) * 300)


@pytest.fixture
def vips():
    """A fresh IPv4 lab address each call: 198.18.x.y, never reused in a session."""
    def make():
        n = next(_octets)
        return f"198.{18 + n // 64000}.{n // 250 % 256}.{n % 250 + 2}"
    return make


@pytest.fixture
def vip6s():
    def make():
        import socket
        n = next(_octets)
        raw = socket.inet_pton(socket.AF_INET6, "fd76:6164::")[:12] + n.to_bytes(4, "big")
        return socket.inet_ntop(socket.AF_INET6, raw)  # canonical, as the kernel prints it
    return make


def vaddr_cli():
    """The venv's CLI (make setup installs this checkout, editable), else this checkout's."""
    exe = os.path.join(os.path.dirname(sys.executable), "vaddr")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "vaddr.entry"]


@pytest.fixture
def cli():
    def run(*args, check=False, timeout=30, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run([*vaddr_cli(), *args], timeout=timeout, **kwargs)
        if check and proc.returncode:
            raise AssertionError(f"vaddr {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc
    return run


def need(program):
    """Skip with the reason when a third-party program is absent; in CI, fail."""
    path = shutil.which(program) or (program if os.path.exists(program) else None)
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (make setup installs it)")
        pytest.skip(f"{program} is not installed (make setup installs it)")
    return path


@pytest.fixture
def shared_dir():
    """A fresh folder that daemons' own users (postgres, mysql) can reach;
    pytest's tmp_path is root's alone (0700).  Removed after the test."""
    import pathlib
    import tempfile
    path = pathlib.Path(tempfile.mkdtemp(prefix="vaddr-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reap():
    """reap(proc) -> proc: ended (SIGKILL) and waited for after the test, pass or fail."""
    procs = []

    def add(proc):
        procs.append(proc)
        return proc
    yield add
    for p in reversed(procs):
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def sleeper(reap):
    """A vhost held up by `sleep`, ended after the test: sleeper(ip=..., name=...)."""
    import vaddr
    return lambda **kwargs: reap(vaddr.spawn(["sleep", "60"], **kwargs))


# ---- an unprivileged user, for the LD_PRELOAD backend -----------------------

TEST_USER = "vaddr-test"


def release_claims_of(uid):
    """A user's 127.X ranges (vaddr/backends/preload.py), when it cannot run reset itself."""
    import glob
    for path in glob.glob("/tmp/vaddr-net-127.*"):
        if os.lstat(path).st_uid == uid:
            os.unlink(path)


class TestUser:
    """A throwaway system user and vaddr's CLI run as it, with a clean environment."""

    def __init__(self, entry):
        self.entry, self.uid, self.gid, self.name = entry, entry.pw_uid, entry.pw_gid, entry.pw_name
        self.env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "LANG": "C.UTF-8",
                    "VADDR_RUN_DIR": f"/run/vaddr-tests-user-{entry.pw_uid}",
                    "VADDR_LAB_DIR": f"/tmp/vaddr-test-labs-{entry.pw_uid}"}
        self.run_dir = self.env["VADDR_RUN_DIR"]

    def argv(self, *argv):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                *vaddr_cli(), *argv]

    def run(self, *argv, timeout=60, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(*argv), env=self.env, timeout=timeout, **kwargs)

    def popen(self, *argv, **kwargs):
        return subprocess.Popen(self.argv(*argv), env=self.env, **kwargs)

    def folder(self):
        """A fresh folder this user owns (pytest's tmp_path is root's alone)."""
        import tempfile
        from pathlib import Path
        path = tempfile.mkdtemp(prefix="vaddr-test-")
        os.chmod(path, 0o755)
        os.chown(path, self.uid, self.gid)
        return Path(path)


@pytest.fixture(scope="session")
def test_user():
    if os.geteuid() != 0:
        pytest.skip("creating the test user needs root")
    import pwd
    created = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", TEST_USER],
                             capture_output=True).returncode == 0
    user = TestUser(pwd.getpwnam(TEST_USER))
    # Root makes the user's state folder in /run (not /tmp, where another
    # user could plant it first), then hands it over.
    os.makedirs(user.run_dir, mode=0o700, exist_ok=True)
    os.chown(user.run_dir, user.uid, user.gid)
    try:
        yield user
    finally:
        subprocess.run(["pkill", "-KILL", "-u", TEST_USER], capture_output=True)
        shutil.rmtree(user.run_dir, ignore_errors=True)
        release_claims_of(user.uid)
        if created:
            subprocess.run(["userdel", TEST_USER], capture_output=True)


@pytest.fixture
def user_folder(test_user):
    path = test_user.folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)

"""Session set-up for tests against the real kernel.

Network safety: tests use virtual addresses only from 127.0.0.0/8,
198.18.0.0/15 and fd76:6164::/32.  Before any test runs, `unreachable` routes
for the last two go into the main table, so that a missing local route fails
with ENETUNREACH instead of sending packets out.  At the end the session runs
`vaddr reset` and checks that the machine holds nothing of vaddr's."""
import itertools
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAFE_NETS = ("198.18.0.0/15", "fd76:6164::/32")
RTPROT_TEST_GUARD = 0x77  # marks the guard routes, so teardown removes exactly them


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


def _guard_routes(op):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for net in SAFE_NETS:
            dst, plen = net.split("/")
            try:
                ipr.route(op, dst=dst, dst_len=int(plen), type="unreachable", proto=RTPROT_TEST_GUARD,
                          family=10 if ":" in dst else 2)
            except Exception as e:
                if getattr(e, "code", None) not in (17, 3):  # EEXIST on add, ESRCH on del
                    raise


def leftovers():
    """Kernel and state-folder objects of vaddr's still on the machine."""
    from vaddr import cgroups, maps, routes, runtime
    found = []
    if os.path.exists(cgroups.parent_path()):
        found.append(cgroups.parent_path())
    if os.path.exists(maps.PIN_DIR):
        found.append(maps.PIN_DIR)
    found += [f"route {ip}" for ip in routes.vaddr_routes()]
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        if shutil.which(tool):
            rules = subprocess.run([tool, "-t", "mangle", "-S", "PREROUTING"], capture_output=True, text=True).stdout
            if "NFQUEUE" in rules:
                found.append(f"{tool} NFQUEUE rule")
    if subprocess.run(["pgrep", "-f", "vaddr.delayd"], capture_output=True).returncode == 0:
        found.append("delay line process")
    tc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    if "clsact" in tc:
        found.append("clsact qdisc on lo")
    vh = os.path.join(runtime.RUN_DIR, "vhosts")
    if os.path.isdir(vh) and os.listdir(vh):
        found.append(f"records {os.listdir(vh)}")
    return found


@pytest.fixture(scope="session", autouse=True)
def safe_lab():
    if os.geteuid() != 0:
        yield
        return
    _guard_routes("add")
    try:
        yield
    finally:
        try:
            from vaddr.reset import reset
            reset()
            left = leftovers()
        finally:
            _guard_routes("del")
        assert not left, f"the suite left vaddr state behind: {left}"


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
        raw = socket.inet_pton(socket.AF_INET6, "fd76:6164::") [:12] + n.to_bytes(4, "big")
        return socket.inet_ntop(socket.AF_INET6, raw)  # canonical, as the kernel prints it
    return make


def vaddr_cli():
    """The installed CLI if there is one (make setup), else this checkout's."""
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
def sleeper():
    """A vhost held up by `sleep`, ended after the test: sleeper(ip=..., name=...)."""
    import vaddr
    procs = []

    def start(**kwargs):
        procs.append(vaddr.spawn(["sleep", "60"], **kwargs))
        return procs[-1]
    yield start
    for p in procs:
        p.kill()
        p.wait()

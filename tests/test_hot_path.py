"""What a warm spawn must not do: import bcc, pyroute2 or click (whatever
the address), or make routes when the address is already local (loopback
or a lab subnet)."""
import subprocess
import sys

import pytest

from vaddr import routes

pytestmark = pytest.mark.kernel

PROBE = """
import sys, vaddr
from vaddr import entry
p = vaddr.spawn(["true"], ip=sys.argv[1]); p.wait()
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"bcc", "pyroute2", "click"})))
"""


def heavy_imports(ip):
    out = subprocess.run([sys.executable, "-c", PROBE, ip], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_warm_spawn_on_loopback_imports_nothing_heavy(cli):
    cli("spawn", "--ip", "127.0.0.9", "--", "true", check=True)  # hooks loaded
    assert heavy_imports("127.0.0.9") == ""


def test_spawn_in_a_lab_subnet_needs_no_route(cli):
    cli("net", "add", "198.18.64.0/24", check=True)
    try:
        assert heavy_imports("198.18.64.7") == ""
        proc = cli("spawn", "--ip", "198.18.64.8", "--", "python3", "-c",
                   "import socket; s=socket.socket(); s.bind(('', 80)); print(s.getsockname()[0])", check=True)
        assert proc.stdout.strip() == "198.18.64.8"
        assert "198.18.64.8" not in routes.vaddr_routes() and "198.18.64.0/24" in routes.vaddr_routes()
    finally:
        cli("net", "rm", "198.18.64.0/24", check=True)
    assert "198.18.64.0/24" not in routes.vaddr_routes()


def test_spawn_of_an_address_needing_a_route_imports_nothing_heavy(vips):
    """The route is one netlink message from the standard library (rtnl.py),
    made at start and removed at exit, both without pyroute2."""
    ip = vips()
    assert heavy_imports(ip) == ""
    assert ip not in routes.vaddr_routes()


def test_address_outside_subnets_gets_its_own_route_for_its_life(vips):
    import vaddr
    ip = vips()
    proc = vaddr.spawn(["sleep", "30"], ip=ip)
    assert ip in routes.vaddr_routes()
    proc.kill()
    proc.wait()
    assert ip not in routes.vaddr_routes()


@pytest.mark.parametrize("prefix, words", [
    ("fd76:6164::/64", "IPv6 lab subnets"),
    ("198.18.0.0", "prefix length"),
    ("127.0.0.0/8", "cannot be a lab subnet"),
    ("nonsense/24", "not an IPv4 prefix"),
])
def test_bad_lab_subnet(cli, prefix, words):
    proc = cli("net", "add", prefix)
    assert proc.returncode != 0 and words in proc.stderr and "Traceback" not in proc.stderr


def test_overlapping_lab_subnets_are_refused(cli):
    cli("net", "add", "198.18.65.0/24", check=True)
    try:
        proc = cli("net", "add", "198.18.65.128/25")
        assert proc.returncode != 0 and "overlaps" in proc.stderr
    finally:
        cli("net", "rm", "198.18.65.0/24", check=True)


def test_fast_path_parses_like_click():
    """entry.parse_fast takes only command lines whose meaning it knows; the
    rest goes to click."""
    from vaddr.entry import parse_fast
    got = parse_fast(["spawn", "--ip", "10.0.0.2", "--ip=fd00::2", "--name", "n", "--keep", "--user", "nobody",
                      "-v", "--backend", "ebpf", "--host-loopback", "--host-interfaces", "--", "sh", "-c", "x"])
    assert got["argv"] == ["sh", "-c", "x"]
    assert got["opts"] == {"ips": ["10.0.0.2", "fd00::2"], "name": "n", "user": "nobody", "backend": "ebpf",
                           "keep": True, "verbose": True, "host_loopback": True, "host_interfaces": True}
    assert parse_fast(["spawn", "--ip", "10.0.0.2", "--", "x"])["opts"]["backend"] == "auto"
    assert parse_fast(["exec", "web", "--user", "u", "--", "id"])["target"] == "web"
    for argv in (["spawn", "--help"], ["spawn", "--ip", "1.2.3.4"], ["spawn", "--bogus", "--", "true"],
                 ["ls"], ["exec", "--", "true"], ["spawn", "--ip"]):
        assert parse_fast(argv) is None, argv

"""Programs that find each other by multicast, as on hosts of their own on
one segment: mDNS service discovery (python-zeroconf, as Home Assistant and
many device tools use it) with its defaults.  Corosync's udp transport is in
test_quorum.py."""
import json
import subprocess

import pytest

from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel

# Each host announces a service at the address its name resolves to, on
# every interface zeroconf finds (its default), then serves until stopped.
ANNOUNCE = """
import socket, sys, time
from zeroconf import ServiceInfo, Zeroconf
name = socket.gethostname()
address = socket.gethostbyname(name)
zc = Zeroconf()
zc.register_service(ServiceInfo("_vaddrtest._tcp.local.", f"{name}._vaddrtest._tcp.local.",
                                addresses=[socket.inet_aton(address)], port=8080, server=f"{name}.local."))
print("announced", name, address, flush=True)
time.sleep(3600)
"""

# Browses for the service type until `want` instances resolved, or 15 s.
BROWSE = """
import json, sys, time
from zeroconf import ServiceBrowser, Zeroconf
want, found = int(sys.argv[1]), {}
zc = Zeroconf()
class Listener:
    def add_service(self, zc, kind, name):
        info = zc.get_service_info(kind, name, timeout=3000)
        found[name.split(".")[0]] = info.parsed_addresses() if info else None
    def update_service(self, *args): pass
    def remove_service(self, *args): pass
ServiceBrowser(zc, "_vaddrtest._tcp.local.", Listener())
deadline = time.monotonic() + 15
while len(found) < want and time.monotonic() < deadline:
    time.sleep(0.1)
zc.close()
print(json.dumps(found))
"""

LAB = """
[lab]
name = "mdns"

[hosts.z]
count = 3
ip = "198.19.250.191"
cmd = "{python} {tmp}/announce.py"
ready = {{ log = "announced" }}

[hosts.browser]
ip = "198.19.250.199"
cmd = "sleep infinity"
"""


def test_zeroconf_services_announced_by_mdns_are_found_at_their_vips_from_another_host(cli, tmp_path, lab_up):
    """Three hosts announce a service over mDNS (224.0.0.251:5353, one port
    for all, SO_REUSEPORT); a fourth browses and resolves each one at its
    vIP.  A partition hides the cut-off host from a new browse."""
    # Debian's python3-zeroconf is for the system's Python, not the suite's.
    python = need("/usr/bin/python3")
    if subprocess.run([python, "-c", "import zeroconf"], capture_output=True).returncode:
        need("python3-zeroconf's module")  # skips, or fails in CI, naming it
    (tmp_path / "announce.py").write_text(ANNOUNCE)
    (tmp_path / "browse.py").write_text(BROWSE)
    lab_up("mdns", LAB.format(python=python, tmp=tmp_path))

    def browse(want):
        got = cli("exec", "browser", "--", python, str(tmp_path / "browse.py"), str(want), timeout=40)
        assert got.returncode == 0, got.stderr
        return json.loads(got.stdout)
    every = {"z1": ["198.19.250.191"], "z2": ["198.19.250.192"], "z3": ["198.19.250.193"]}
    assert browse(3) == every
    assert cli("partition", "z3", "z1,z2,browser").returncode == 0
    try:
        until(lambda: browse(3) == {k: v for k, v in every.items() if k != "z3"}, "z3 to be hidden", timeout=60)
    finally:
        assert cli("heal").returncode == 0

"""Programs that find each other by multicast, as on hosts of their own on
one segment: mDNS service discovery (python-zeroconf, as Home Assistant and
many device tools use it) with its defaults, and Tomcat's cluster membership
(Tribes) with its defaults.  Corosync's udp transport is in test_quorum.py."""
import json
import subprocess

import pytest

from tests.clusters.logs import addresses, lab_logs
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


# A Tomcat cluster's membership, as a Tomcat `<Cluster>` element with no
# settings builds it: Tribes' GroupChannel, heartbeats to 228.0.0.4:45564 from
# a socket on the wildcard address, and a receiver on port 4000 of "auto", the
# address the host's name resolves to (InetAddress.getLocalHost()).  Each
# member prints its view once a second and sends every member a message.
TRIBES = """
import org.apache.catalina.tribes.*;
import org.apache.catalina.tribes.group.GroupChannel;
import java.io.Serializable;
import java.util.*;

public class Member {
    static String address(org.apache.catalina.tribes.Member m) {
        try {
            return java.net.InetAddress.getByAddress(m.getHost()).getHostAddress();
        } catch (java.net.UnknownHostException e) {
            throw new RuntimeException(e);
        }
    }

    public static void main(String[] args) throws Exception {
        GroupChannel ch = new GroupChannel();
        ch.addChannelListener(new ChannelListener() {
            public boolean accept(Serializable msg, org.apache.catalina.tribes.Member from) { return true; }
            public void messageReceived(Serializable msg, org.apache.catalina.tribes.Member from) {
                System.out.println("message " + msg + " from " + address(from));
            }
        });
        ch.start(Channel.DEFAULT);
        System.out.println("local " + address(ch.getLocalMember(true)) + ":" + ch.getLocalMember(true).getPort());
        for (;;) {
            Thread.sleep(1000);
            org.apache.catalina.tribes.Member[] ms = ch.getMembers();
            List<String> view = new ArrayList<>();
            for (org.apache.catalina.tribes.Member m : ms) view.add(address(m) + ":" + m.getPort());
            Collections.sort(view);
            System.out.println("view " + view);
            try {
                if (ms.length > 0) ch.send(ms, "hello", Channel.SEND_OPTIONS_DEFAULT);
            } catch (ChannelException e) {
                System.out.println("send failed: " + e.getMessage());
            }
        }
    }
}
"""

TRIBES_LAB = """
[lab]
name = "tribes"

[hosts.t]
count = 3
ip = "198.19.250.51"
cmd = "{java} -cp {jars} {tmp}/Member.java"
ready = {{ log = "local ", timeout = "60s" }}
"""


def test_tomcat_cluster_members_find_each_other_by_multicast_at_their_vips_and_lose_a_cut_off_one(
        cli, tmp_path, lab_up, machine_holds):
    """Three Tribes members with Tomcat's cluster defaults (multicast
    membership on 228.0.0.4, receivers on "auto":4000) while the machine
    holds 4000 on 0.0.0.0: each listens on its own vIP:4000, sees the other
    two there and hears their messages; a partition drops the cut-off member
    from both sides' views, and heal brings it back."""
    java = need("java")
    jars = ["/usr/share/java/tomcat9-tribes.jar", "/usr/share/java/tomcat9-juli.jar"]
    for jar in jars:
        need(jar)
    machine_holds(4000)
    (tmp_path / "Member.java").write_text(TRIBES)
    lab_up("tribes", TRIBES_LAB.format(java=java, jars=":".join(jars), tmp=tmp_path), timeout=120)
    ips = ["198.19.250.51", "198.19.250.52", "198.19.250.53"]

    def last_view(name):
        views = [line for line in cli("logs", name).stdout.splitlines() if line.startswith("view ")]
        return views[-1] if views else None

    def views_are(want):
        return all(last_view(f"t{i + 1}") == "view [" + ", ".join(f"{ip}:4000" for ip in want[i]) + "]"
                   for i in range(3))
    others = [[ip for ip in ips if ip != mine] for mine in ips]
    until(lambda: views_are(others), "every member to see the other two", timeout=60)
    logs = lab_logs(cli)
    for ip in ips:
        assert f"local {ip}:4000" in logs
        assert f"message hello from {ip}" in logs
    assert addresses(logs) <= set(ips), addresses(logs)
    assert cli("partition", "t3", "t1,t2").returncode == 0
    try:
        until(lambda: views_are([[ips[1]], [ips[0]], []]), "t3 to drop out of every view", timeout=60)
    finally:
        assert cli("heal").returncode == 0
    until(lambda: views_are(others), "t3 to be back in every view", timeout=60)

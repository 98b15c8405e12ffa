"""DNS and directory servers that replicate, as a user starts them: packaged
configurations with peers added, next to the machine's own server on the
same port."""
import re
import subprocess

import pytest

from tests.clusters.logs import addresses, lab_logs
from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel


KNOT_ZONE = """$ORIGIN example.test.
$TTL 300
@ SOA ns1 hostmaster {serial} 3600 900 604800 300
@ NS ns1
ns1 A 198.19.250.121
www A 198.19.250.80
"""

# Debian's knot.conf with what a primary and its secondaries must add: where
# to listen and who the peers are.  The run directory (control socket, pid
# file) sits in the host's private /var/lib/knot, so each knotc talks to its
# own knotd.
KNOT_CONF = """
server:
    rundir: "/var/lib/knot"
    user: knot:knot
    automatic-acl: on
    listen: [ 0.0.0.0@53, ::@53 ]
log:
  - target: stderr
    any: info
database:
    storage: "/var/lib/knot"
remote:
{remotes}
template:
  - id: default
    storage: "/var/lib/knot"
    file: "%s.zone"
zone:
  - domain: example.test
    {role}
"""

KNOT_LAB = """
[lab]
name = "dns"

[hosts.ns1]
ip = "198.19.250.121"
cmd = "sh -c 'cp {tmp}/example.test.zone /var/lib/knot/ && exec knotd -c {tmp}/primary.conf'"
private = ["/var/lib/knot"]
ready = { tcp = 53 }

[hosts.sec]
count = 2
ip = "198.19.250.122"
cmd = "knotd -c {tmp}/secondary.conf"
private = ["/var/lib/knot"]
ready = { tcp = 53 }
after = ["ns1"]

[hosts.evil]
ip = "198.19.250.129"
cmd = "sleep infinity"
"""


def test_a_knot_primary_notifies_its_secondaries_and_refuses_a_stranger(cli, tmp_path, lab_up, machine_daemon):
    """Knot DNS with Debian's configuration plus peers: the primary NOTIFYs
    its two secondaries, which transfer the zone (AXFR) from its vIP; the
    automatic ACL refuses the same transfer to another vhost; kdig with no
    address but 127.0.0.1 inside a secondary gets its answer from 127.0.0.1
    (it drops any other); the machine, running its own knotd on 0.0.0.0:53,
    reaches each vIP and keeps its own 127.0.0.1."""
    knotd, kdig = need("knotd"), need("kdig")
    (tmp_path / "example.test.zone").write_text(KNOT_ZONE.format(serial=1))
    peer = "  - id: {0}\n    address: {1}\n"
    (tmp_path / "primary.conf").write_text(KNOT_CONF.format(
        remotes=peer.format("sec1", "198.19.250.122") + peer.format("sec2", "198.19.250.123"),
        role="notify: [ sec1, sec2 ]"))
    (tmp_path / "secondary.conf").write_text(KNOT_CONF.format(remotes=peer.format("ns1", "198.19.250.121"),
                                                              role="master: ns1"))
    (tmp_path / "machine.conf").write_text(f'server:\n    rundir: "{tmp_path}"\n    listen: [ 0.0.0.0@53, ::@53 ]\n'
                                           f'database:\n    storage: "{tmp_path}"\n')
    ours = machine_daemon([knotd, "-c", str(tmp_path / "machine.conf")], 53)

    def ask(host, server, name="www.example.test", *extra):
        argv = [kdig, "+short", "+timeout=2", "+retry=1", f"@{server}", name, *extra]
        got = cli("exec", host, "--", *argv) if host else subprocess.run(argv, capture_output=True, text=True)
        return got.stdout.strip()
    lab_up("dns", KNOT_LAB.replace("{tmp}", str(tmp_path)))
    until(lambda: ask("sec2", "127.0.0.1") == "198.19.250.80", "sec2 to serve the zone at its 127.0.0.1")
    # A new serial: NOTIFY from the primary, a transfer from each secondary.
    zone = "/var/lib/knot/example.test.zone"
    bump = f"printf 'extra A 198.19.250.81\\n' >> {zone} && sed -i 's/ 1 3600/ 2 3600/' {zone} && knotc -c {tmp_path}/primary.conf zone-reload"
    assert cli("exec", "ns1", "--", "sh", "-c", bump).returncode == 0
    for sec in ("sec1", "sec2"):
        until(lambda: ask(sec, "127.0.0.1", "extra.example.test") == "198.19.250.81", f"{sec} to take serial 2")
        assert ask(None, {"sec1": "198.19.250.122", "sec2": "198.19.250.123"}[sec],
                   "extra.example.test") == "198.19.250.81"  # from the machine, unconnected
    stolen = cli("exec", "evil", "--", kdig, "@198.19.250.121", "example.test", "AXFR")
    assert "www.example.test" not in stolen.stdout
    mine = cli("exec", "sec1", "--", kdig, "@198.19.250.121", "example.test", "AXFR")
    assert "www.example.test" in mine.stdout
    if ours:  # the machine's knotd has no such zone
        assert "REFUSED" in subprocess.run([kdig, "@127.0.0.1", "example.test", "SOA"], capture_output=True,
                                           text=True).stdout
    logs = lab_logs(cli)
    assert "AXFR, incoming, remote 198.19.250.121@53" in logs
    assert addresses(logs) <= {"198.19.250.121", "198.19.250.122", "198.19.250.123", "198.19.250.129",
                                "127.0.0.1", "0.0.0.0"}


SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov
pidfile /run/slapd/slapd.pid
{server_ids}
database mdb
suffix "dc=example,dc=test"
rootdn "cn=admin,dc=example,dc=test"
rootpw secret
directory {directory}
index entryCSN,entryUUID eq
overlay syncprov
{syncrepl}
"""

SLAPD_LAB = """
[lab]
name = "directory"

[hosts.ldap]
count = 2
ip = "198.19.250.151"
# slapd finds its own serverID by the exact URL it listens on.
cmd = "slapd -d stats,sync -f {tmp}/slapd.conf -h 'ldap://{ip} ldapi:///'"
private = ["/run/slapd", "/var/lib/ldap"]   # ldapi's socket, the database
ready = { tcp = 389 }
"""

ALICE = """dn: dc=example,dc=test
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: cn=alice,dc=example,dc=test
objectClass: inetOrgPerson
cn: alice
sn: {sn}
"""


def test_two_openldap_providers_replicate_both_ways_and_catch_up_after_a_partition(cli, tmp_path, lab_up,
                                                                                   machine_daemon):
    """OpenLDAP 2.5 multi-provider (syncrepl, refreshAndPersist) between two
    vIPs, each server with its own ldapi socket in /run/slapd; the machine
    runs its own slapd on 0.0.0.0:389.  A write at one is read at the other
    through its own ldapi socket and its own localhost; a write during a
    partition arrives after heal; the logs name only vIPs and loopback."""
    slapd, ldapsearch = need("slapd"), need("ldapsearch")
    vips = ["198.19.250.151", "198.19.250.152"]
    (tmp_path / "slapd.conf").write_text(SLAPD_CONF.format(
        server_ids="\n".join(f"serverID {i} ldap://{ip}" for i, ip in enumerate(vips, 1)),
        directory="/var/lib/ldap",
        syncrepl="\n".join(f'syncrepl rid={i:03} provider=ldap://{ip} bindmethod=simple '
                           f'binddn="cn=admin,dc=example,dc=test" credentials=secret '
                           f'searchbase="dc=example,dc=test" type=refreshAndPersist retry="1 +"'
                           for i, ip in enumerate(vips, 1)) + "\nmultiprovider on"))
    (tmp_path / "mdb").mkdir()
    (tmp_path / "machine.conf").write_text(SLAPD_CONF.format(server_ids="", directory=tmp_path / "mdb",
                                                             syncrepl="").replace("/run/slapd/", f"{tmp_path}/"))
    ours = machine_daemon([slapd, "-d", "0", "-f", str(tmp_path / "machine.conf"), "-h", "ldap:///"], 389)
    admin = ["-x", "-D", "cn=admin,dc=example,dc=test", "-w", "secret"]

    def sn(host, uri="ldapi:///"):
        got = cli("exec", host, "--", ldapsearch, "-x", "-H", uri, "-b", "cn=alice,dc=example,dc=test", "-LLL", "sn")
        return re.findall(r"^sn: (.*)$", got.stdout, re.M)
    lab_up("directory", SLAPD_LAB.replace("{tmp}", str(tmp_path)))
    added = cli("exec", "ldap1", "--", "ldapadd", "-H", "ldapi:///", *admin, input=ALICE.format(sn="A"))
    assert added.returncode == 0, added.stderr
    until(lambda: sn("ldap2") == ["A"], "ldap2 to hold alice")
    assert sn("ldap2", "ldap://localhost") == ["A"]
    assert cli("partition", "ldap1", "ldap2").returncode == 0
    change = "dn: cn=alice,dc=example,dc=test\nchangetype: modify\nreplace: sn\nsn: B\n"
    assert cli("exec", "ldap2", "--", "ldapmodify", "-H", "ldapi:///", *admin, input=change).returncode == 0
    assert sn("ldap1") == ["A"]
    assert cli("heal").returncode == 0
    until(lambda: sn("ldap1") == ["B"], "ldap1 to catch up after heal", timeout=60)
    if ours:  # the machine's slapd holds no such entry
        mine = subprocess.run([ldapsearch, "-x", "-H", "ldap://127.0.0.1", "-b", "dc=example,dc=test"],
                              capture_output=True, text=True, timeout=10)
        assert "alice" not in mine.stdout
    assert addresses(lab_logs(cli)) <= set(vips) | {"127.0.0.1", "0.0.0.0"}

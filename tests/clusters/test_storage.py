"""Storage clusters as a user starts them: the distribution's daemon with
its packaged configuration, peers named by host name, next to the
machine's own listeners on the same ports."""
import os

import pytest

from tests.clusters.logs import addresses, lab_logs
from tests.conftest import need
from tests.lab import until

pytestmark = pytest.mark.kernel

GLUSTER_LAB = """
[lab]
name = "storage"

[hosts.g]
count = 3
ip = "198.19.250.181"
cmd = "glusterd -N --log-file=-"
# The CLI reaches glusterd at /run/glusterd.socket, a file: each host its
# own /run, as each machine has.  Bricks under /srv, logs kept per host.
private = ["/var/lib/glusterd", "/run", "/var/log/glusterfs", "/srv"]
ready = { tcp = 24007 }
"""

GLUSTER_IPS = ["198.19.250.181", "198.19.250.182", "198.19.250.183"]


def test_a_glusterfs_replica_volume_heals_a_brick_cut_off_by_a_partition(cli, lab_up, machine_holds):
    """GlusterFS 10: glusterd on each host, peers probed by name (glusterd
    tells a peer from itself by the addresses its interfaces show), a
    replica-3 volume with a brick per host, mounted through FUSE in g1.  A
    file written while g3 is cut off reaches g3's brick after heal."""
    need("glusterd")
    need("gluster")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: the volume cannot be mounted")
    machine_holds(24007, 49152)
    lab_up("storage", GLUSTER_LAB)

    def gluster(host, *args):
        got = cli("exec", host, "--", "gluster", "--mode=script", *args, timeout=60)
        assert got.returncode == 0, got.stderr + got.stdout
        return got.stdout
    for peer in ("g2", "g3"):
        assert "success" in gluster("g1", "peer", "probe", peer)
    until(lambda: gluster("g2", "pool", "list").count("Connected") == 3, "three connected peers")
    gluster("g1", "volume", "create", "v0", "replica", "3", *[f"g{i}:/srv/brick" for i in (1, 2, 3)], "force")
    # A write waits this long for a brick that stopped answering (42 s by default).
    gluster("g1", "volume", "set", "v0", "network.ping-timeout", "5")
    gluster("g1", "volume", "start", "v0")
    until(lambda: [line.split()[-2] for line in gluster("g2", "volume", "status", "v0").splitlines()
                   if line.startswith("Brick ")] == ["Y"] * 3, "every brick online")
    mount = cli("exec", "g1", "--", "sh", "-c", "mkdir /srv/mnt && mount -t glusterfs localhost:/v0 /srv/mnt && "
                "echo before > /srv/mnt/before")
    assert mount.returncode == 0, mount.stderr

    def on_brick(host, name):
        return cli("exec", host, "--", "cat", f"/srv/brick/{name}").stdout
    until(lambda: on_brick("g3", "before") == "before\n", "the first file on g3's brick")
    assert cli("partition", "g3", "g1,g2").returncode == 0
    assert cli("exec", "g1", "--", "sh", "-c", "echo during > /srv/mnt/during", timeout=60).returncode == 0
    assert on_brick("g2", "during") == "during\n" and on_brick("g3", "during") == ""
    assert cli("heal").returncode == 0

    def healed():
        cli("exec", "g1", "--", "gluster", "--mode=script", "volume", "heal", "v0", timeout=60)
        return on_brick("g3", "during") == "during\n"
    until(healed, "g3's brick to be healed", timeout=60, every=2)
    assert addresses(lab_logs(cli)) <= set(GLUSTER_IPS) | {"127.0.0.1", "0.0.0.0"}

"""Ports below 1024 in LD_PRELOAD vhosts, as an unprivileged user: a daemon
listens on 22, 53 or 80 as on a host of its own (the shim carries them as
high ports on the vhost's real address), and every address the programs
see says 22, not the real port (issue 8, item 3)."""
import json
import subprocess
import time

import pytest

from tests.conftest import need
from tests.lab import nginx_site, wait_listening

pytestmark = pytest.mark.kernel

# Serves TCP on 22 and UDP on 53 of its vhost; answers each with what it saw.
SERVER = """
import json, socket, threading
t = socket.socket(); t.bind(("", 22)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 53))
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(json.dumps([u.getsockname(), peer]).encode(), peer)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, peer = t.accept()
    c.sendall(json.dumps([t.getsockname(), c.getsockname(), c.getpeername(), peer]).encode()); c.close()
"""
CLIENT = """
import json, socket, sys
ip = sys.argv[1]
s = socket.create_connection((ip, 22), timeout=5)
seen = json.loads(s.recv(1000)); mine = [s.getsockname(), s.getpeername()]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(b"q", (ip, 53)); reply, frm = u.recvfrom(1000)
print(json.dumps({"tcp_server": seen, "tcp_client": mine, "udp_server": json.loads(reply), "udp_from": frm}))
"""


def test_a_users_vhost_serves_tcp_22_and_udp_53(test_user, vips, reap):
    user, server, client = test_user, vips(), vips()
    reap(user.popen("spawn", "--ip", server, "--", "python3", "-c", SERVER))
    try:
        wait_listening(server, 22, run_dir=user.run_dir)
        wait_listening(server, 53, udp=True, run_dir=user.run_dir)
        got = user.run("spawn", "--ip", client, "--", "python3", "-c", CLIENT, server)
        assert got.returncode == 0, got.stderr
        seen = json.loads(got.stdout)
        listener, accepted, peer, accepted_from = seen["tcp_server"]
        assert listener == [server, 22] and accepted == [server, 22]
        assert peer[0] == accepted_from[0] == client
        assert seen["tcp_client"][1] == [server, 22] and seen["tcp_client"][0][0] == client
        assert seen["udp_server"][0] == [server, 53] and seen["udp_server"][1][0] == client
        assert seen["udp_from"] == [server, 53]
        # A process outside any vhost reaches it the same way.
        outside = user.run("exec", "--client", "--", "python3", "-c", CLIENT, server)
        assert outside.returncode == 0 and json.loads(outside.stdout)["tcp_client"][1] == [server, 22], outside.stderr
    finally:
        user.run("reset")


def test_a_users_sshd_on_port_22_and_nginx_on_80(test_user, vips, user_folder):
    sshd, keyscan, nginx, curl = need("/usr/sbin/sshd"), need("ssh-keyscan"), need("nginx"), need("curl")
    user, ssh_ip, web_ip, client = test_user, vips(), vips(), vips()
    key = user_folder / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (user_folder / "sshd_config").write_text(f"Port 22\nHostKey {key}\nPidFile {user_folder}/sshd.pid\n"
                                             "UsePAM no\nStrictModes no\n")
    conf = nginx_site(user_folder / "site", "on port 80\n", listen="listen 80;", daemon=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user_folder)], check=True)
    try:
        started = user.run("spawn", "--ip", ssh_ip, "--", sshd, "-f", str(user_folder / "sshd_config"))
        assert started.returncode == 0, started.stderr  # sshd daemonizes
        started = user.run("spawn", "--ip", web_ip, "--", nginx, "-c", str(conf), "-p", str(conf.parent))
        assert started.returncode == 0, started.stderr
        wait_listening(ssh_ip, 22, run_dir=user.run_dir)
        wait_listening(web_ip, 80, run_dir=user.run_dir)
        scanned = user.run("spawn", "--ip", client, "--", keyscan, "-p", "22", "-t", "ed25519", ssh_ip)
        host_key = (user_folder / "host_key.pub").read_text().split()[1]
        assert f"{ssh_ip} ssh-ed25519 {host_key}" in scanned.stdout, scanned.stderr
        fetched = user.run("spawn", "--ip", client, "--", curl, "-sS", f"http://{web_ip}/")
        assert fetched.stdout == "on port 80\n", fetched.stderr
        assert (user_folder / "site" / "access.log").read_text().split()[0] == client
        listed = {h["ip4"]: h for h in json.loads(user.run("ls", "--json").stdout)}
        assert listed[ssh_ip]["pids"] and len(listed[web_ip]["pids"]) == 2
    finally:
        user.run("reset")

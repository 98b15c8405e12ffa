"""A MariaDB Galera cluster in three vhosts, configured as Debian ships it
but for the cluster's addresses, on a machine whose own servers hold
Galera's ports on 0.0.0.0.  Joining nodes copy the data by Galera's default
state transfer, rsync, whose script waits until `ss` shows its rsync
listening on the port it chose: the vhost's listing must show that port."""
import shutil
import socket
import subprocess

import psutil
import pytest

import vaddr
from tests.conftest import need
from tests.lab import run_in, until

pytestmark = pytest.mark.kernel

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
PORTS = (3306, 4444, 4567, 4568)  # SQL, state transfer, group communication, incremental transfer
CNF = """[mariadbd]
datadir={d}/data
socket={d}/mysqld.sock
pid-file={d}/mysqld.pid
log-error={d}/error.log
user=mysql
binlog_format=row
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={provider}
wsrep_cluster_name=vaddr-test
wsrep_cluster_address=gcomm://{members}
wsrep_sst_method=rsync
[client]
socket={d}/mysqld.sock
"""


@pytest.fixture
def machine_ports():
    """The machine's own listeners on Galera's ports, where free."""
    held = []
    for port in PORTS:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # someone on the machine holds it already: as good
    yield
    for s in held:
        s.close()


def _sql(name, folder, query):
    return run_in(None, ["mariadb", f"--defaults-file={folder}/my.cnf", "-N", "-e", query], name=name, timeout=30)


def _status(name, folder, variable):
    code, out, _err = _sql(name, folder, f"show status like '{variable}'")
    return out.split()[-1] if code == 0 and out.split() else None


def test_a_galera_cluster_joins_by_rsync_and_stops_cleanly(shared_dir, machine_ports, vips, cli):
    for program in ("mariadbd", "mariadb-install-db", "rsync", "ss", PROVIDER):
        need(program)
    ips = [vips() for _ in range(3)]
    folders = []
    for n, ip in enumerate(ips):
        folder = shared_dir / f"n{n}"
        (folder / "data").mkdir(parents=True)
        (folder / "my.cnf").write_text(CNF.format(d=folder, provider=PROVIDER, members=",".join(ips)))
        shutil.chown(folder, "mysql", "mysql")
        shutil.chown(folder / "data", "mysql", "mysql")
        subprocess.run(["mariadb-install-db", f"--defaults-file={folder}/my.cnf", "--user=mysql"], check=True,
                       capture_output=True)
        folders.append(folder)
    names = [f"galera-{n}" for n in range(3)]
    procs, stopped = [], False
    try:
        for n, (ip, name, folder) in enumerate(zip(ips, names, folders)):
            argv = ["mariadbd", f"--defaults-file={folder}/my.cnf"] + ["--wsrep-new-cluster"] * (n == 0)
            procs.append(vaddr.spawn(argv, ip=ip, name=name, stdout=vaddr.DEVNULL, stderr=vaddr.DEVNULL))
            until(lambda: _status(name, folder, "wsrep_local_state_comment") == "Synced",
                  f"node {n} did not reach Synced (see {folder}/error.log)", timeout=90)
        assert _status(names[0], folders[0], "wsrep_cluster_size") == "3"
        assert _sql(names[2], folders[2], "create database t; create table t.x (v int primary key); "
                                          "insert into t.x values (42)")[0] == 0
        until(lambda: _sql(names[0], folders[0], "select v from t.x")[1].strip() == "42",
              "the row written on node 2 did not reach node 0")
        assert cli("rm", *names, "--timeout", "60").returncode == 0
        stopped = True
    finally:  # a failed run leaves state transfers (scripts, rsync) in the vhosts: remove them too
        if not stopped and procs:
            cli("rm", *names[:len(procs)], "--timeout", "5")
        for proc in procs:
            proc.wait(timeout=30)
        for proc in procs:
            proc.wait(timeout=30)
    machine = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family in (socket.AF_INET, socket.AF_INET6) and not a.address.startswith(("127.", "::1"))}
    for n, folder in enumerate(folders):
        log = (folder / "error.log").read_text()
        assert "Shutdown complete" in log, f"node {n} did not stop cleanly"
        assert f"base_host = {ips[n]}" in log, f"node {n} did not find its own address"
        leaked = [a for a in machine if a in log]
        assert not leaked, f"node {n}'s log names the machine's addresses {leaked}"

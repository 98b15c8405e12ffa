"""What the README promises, checked through the interfaces it shows: the CLI
as typed, the Python API as written, and each fallback path taken for real."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import vaddr
from vaddr import cgroups, launch
from tests import state
from tests.conftest import vaddr_cli
from tests.lab import communicate, run_in, run_py, start_py, wait_fact

pytestmark = pytest.mark.kernel


def test_doctor_reports_every_check_and_the_backend_auto_picks(cli):
    proc = cli("doctor", check=True)
    for name in ("kernel", "root", "cgroup v2", "bpf()", "bpffs", "bcc", "kernel headers", "LD_PRELOAD shim"):
        assert f"ok    {name}" in proc.stdout, proc.stdout
    assert "eBPF backend: ready" in proc.stdout and "--backend auto picks ebpf" in proc.stdout
    report = json.loads(cli("doctor", "--json", check=True).stdout)
    assert report["ebpf"] is True and report["preload"] is True and report["auto"] == "ebpf"
    assert {c["name"] for c in report["checks"] if c["required"] and not c["ok"]} == set()


def test_doctor_names_the_header_package_when_no_headers_exist(cli):
    """A machine with no kernel header tree, made in a private mount
    namespace by hiding every place bcc looks; after a reset, since loaded
    hooks need no headers."""
    cli("reset", check=True)
    hide = " ".join(f"mount -t tmpfs none {d} 2>/dev/null;" for d in ("/usr/src", "/lib/modules"))
    script = f'{hide} [ -e /sys/kernel/kheaders.tar.xz ] && mount --bind /dev/null /sys/kernel/kheaders.tar.xz; exec "$@"'
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                           *vaddr_cli(), "doctor"], capture_output=True, text=True, timeout=60)
    assert "eBPF backend: unavailable" in proc.stdout and "auto picks preload (no kernel headers" in proc.stdout
    lines = proc.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL  kernel headers"))
    line, fix = lines[i], lines[i + 1]
    assert line.startswith("FAIL") and "no kernel headers" in line and "linux-headers" in fix, proc.stdout


def test_partition_heal_and_link_ls_through_the_cli(cli, vips, sleeper):
    n1, n2, n3 = vips(), vips(), vips()
    for ip, name in ((n1, "cn1"), (n2, "cn2"), (n3, "cn3")):
        sleeper(ip=ip, name=name)
    out = cli("partition", "cn1,cn2", "cn3", check=True).stdout
    assert out == "partitioned cn1,cn2 | cn3 (4 directed links cut)\n"
    rows = {(r["src_name"], r["dst_name"]): r for r in json.loads(cli("link", "ls", "--json", check=True).stdout)}
    assert {k for k, r in rows.items() if r["partitioned"]} == {("cn1", "cn3"), ("cn3", "cn1"), ("cn2", "cn3"),
                                                                 ("cn3", "cn2")}
    table = cli("link", "ls", check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["FROM", "TO", "DELAY"] and sum("yes" in ln for ln in table) == 4
    assert cli("heal", check=True).stdout == "healed 4 directed link(s)\n"
    assert json.loads(cli("link", "ls", "--json", check=True).stdout) == []


def test_net_add_ls_rm_through_the_cli(cli):
    assert cli("net", "add", "198.18.66.0/24", check=True).stdout == "lab subnet 198.18.66.0/24\n"
    try:
        assert cli("net", "ls", check=True).stdout == "198.18.66.0/24\n"
        assert json.loads(cli("net", "ls", "--json", check=True).stdout) == ["198.18.66.0/24"]
    finally:
        assert cli("net", "rm", "198.18.66.0/24").stdout == "removed lab subnet 198.18.66.0/24\n"
    assert cli("net", "ls", check=True).stdout.startswith("no lab subnets")


def test_lab_subnet_address_no_vhost_owns_is_a_lab_destination(cli, vips):
    """A host service on an address of a lab subnet (local through the
    subnet's route) sees a vhost's vIP as the source: it is a lab address."""
    cli("net", "add", "198.18.67.0/24", check=True)
    try:
        host = socket.socket()
        host.bind(("198.18.67.200", 0))
        host.listen()
        with host:
            code, facts, err = run_py(f"""
                c = socket.create_connection(("198.18.67.200", {host.getsockname()[1]})); fact(me=c.getsockname()[0])
            """, ip="198.18.67.9")
            conn, peer = host.accept()
            conn.close()
        assert code == 0, err
        assert facts == [{"me": "198.18.67.9"}] and peer[0] == "198.18.67.9"
    finally:
        cli("net", "rm", "198.18.67.0/24", check=True)


def test_api_remove_ends_the_vhost_and_its_state(vips):
    ip = vips()
    proc = vaddr.spawn(["sleep", "30"], ip=ip)
    vaddr.remove(ip)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not [s for s in state.objects(state.snapshot()) if ip in s]


@pytest.mark.parametrize("method, expected", [("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL),
                                              ("send_signal", -signal.SIGUSR1)])
def test_api_process_signals_reach_the_command(vips, method, expected):
    proc = vaddr.spawn(["sleep", "30"], ip=vips())
    getattr(proc, method)(*([signal.SIGUSR1] if method == "send_signal" else []))
    assert proc.wait(timeout=5) == expected


@pytest.fixture
def trampoline(monkeypatch):
    """The /bin/sh trampoline path, as on a kernel without clone3
    (CLONE_INTO_CGROUP) or without the launch library."""
    monkeypatch.setattr(launch, "_lib", None)


def test_trampoline_starts_the_command_inside_the_vhost(trampoline, vips):
    ip = vips()
    code, out, err = run_in(ip, ["sh", "-c", "cat /proc/self/cgroup; exec python3 -c "
                                 "\"import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[0])\""])
    assert code == 0, err
    assert f"0::/vaddr/vh-{ip}" in out and out.split()[-1] == ip


def test_trampoline_runs_the_command_as_the_user(trampoline, vips):
    ip = vips()
    code, out, err = run_in(ip, ["sh", "-c", "id -u; id -g; cat /proc/self/cgroup"], user="nobody")
    assert code == 0, err
    uid, gid, *cg = out.split()
    assert (uid, gid) == ("65534", "65534") and f"0::/vaddr/vh-{ip}" in cg


def test_auto_picks_the_shim_as_root_without_cgroup_v2(cli, vips):
    """Run alone after a reset (no hooks loaded), in a mount namespace with no
    cgroup2 mount: auto falls back to the shim and says why."""
    cli("reset", check=True)
    script = f'umount -l {cgroups.mount_point()} && exec "$@"'
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *vaddr_cli(),
                           "spawn", "-v", "--ip", vips(), "--", "python3", "-c",
                           "import os; print(os.environ.get('LD_PRELOAD', ''))"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "backend preload (no cgroup v2)" in proc.stderr and "_preload" in proc.stdout


# struct iovec, msghdr and mmsghdr for ctypes, as glibc lays them out on 64-bit Linux.
MMSG_TYPES = """
class iovec(ctypes.Structure): _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure): _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
"""


def test_shim_translates_sendmsg_recvmsg_sendmmsg_and_recvmmsg(vips):
    """The message calls, through libc (ctypes for the mmsg pair, which
    Python's socket module lacks), between two shim vhosts."""
    server_ip, client_ip = vips(), vips()
    server = start_py(f"""
        import ctypes
        MMSG_TYPES = {MMSG_TYPES!r}
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7400)); fact(ready=1)
        data, anc, flags, peer = u.recvmsg(100); fact(recvmsg=peer[0])
        exec(MMSG_TYPES)
        libc = ctypes.CDLL(None, use_errno=True)
        names = [ctypes.create_string_buffer(16) for _ in range(2)]
        bufs = [ctypes.create_string_buffer(16) for _ in range(2)]
        iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), 16) for b in bufs]
        msgs = (mmsghdr * 2)(*[mmsghdr(msghdr(ctypes.cast(n, ctypes.c_void_p), 16, ctypes.pointer(v), 1, None, 0, 0), 0)
                               for n, v in zip(names, iovs)])
        got = libc.recvmmsg(u.fileno(), msgs, 2, 0x10000, None)  # MSG_WAITFORONE
        fact(recvmmsg=[socket.inet_ntoa(n.raw[4:8]) for n in names[:got]])
    """, ip=server_ip, backend="preload")
    try:
        wait_fact(server)
        code, _, err = run_py(f"""
            import ctypes
            MMSG_TYPES = {MMSG_TYPES!r}
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendmsg([b"one"], [], 0, ("{server_ip}", 7400))
            time.sleep(0.2)
            exec(MMSG_TYPES)
            dst = ctypes.create_string_buffer(socket.AF_INET.to_bytes(2, "little") + (7400).to_bytes(2, "big")
                                              + socket.inet_aton("{server_ip}") + bytes(8), 16)
            data = ctypes.create_string_buffer(b"two", 3)
            iov = iovec(ctypes.cast(data, ctypes.c_void_p), 3)
            msgs = (mmsghdr * 2)(*[mmsghdr(msghdr(ctypes.cast(dst, ctypes.c_void_p), 16, ctypes.pointer(iov), 1,
                                                  None, 0, 0), 0) for _ in range(2)])
            assert ctypes.CDLL(None).sendmmsg(u.fileno(), msgs, 2, 0) == 2
        """, ip=client_ip, backend="preload")
        assert code == 0, err
        assert wait_fact(server) == {"recvmsg": client_ip}
        assert wait_fact(server) == {"recvmmsg": [client_ip, client_ip]}
    finally:
        server.kill()
        server.wait()

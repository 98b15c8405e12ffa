"""Bad input and missing prerequisites: one line on stderr naming the problem
and the fix, a non-zero exit, no traceback, and no state left behind."""
import os
import subprocess

import pytest

import vaddr
from vaddr import cgroups, registry
from tests.conftest import vaddr_cli

pytestmark = pytest.mark.kernel


def assert_one_line_error(proc, *words, code=None):
    assert proc.returncode != 0 if code is None else proc.returncode == code
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vaddr: ") and "(fix: " in lines[0], lines[0]
    for w in words:
        assert w in lines[0]
    assert not registry.names() and not cgroups.vhost_dirs()


@pytest.mark.parametrize("addr, words", [
    ("10.0.0.300", ["not an IP address"]),
    ("banana", ["not an IP address"]),
    ("10.0.0.0/24", ["prefix"]),
    ("224.0.0.1", ["multicast"]),
    ("0.0.0.0", ["wildcard"]),
    ("127.0.0.1", ["host's own address"]),
    ("::ffff:198.18.0.1", ["v4-mapped"]),
    ("fe80::1", ["link-local"]),
])
def test_unusable_address(cli, addr, words):
    assert_one_line_error(cli("spawn", "--ip", addr, "--", "true"), *words)


def test_two_addresses_of_one_family(cli, vips):
    assert_one_line_error(cli("spawn", "--ip", vips(), "--ip", vips(), "--", "true"), "two IPv4")


def test_no_address(cli):
    assert_one_line_error(cli("spawn", "--", "true"), "no address")


def test_bad_name(cli, vips):
    assert_one_line_error(cli("spawn", "--ip", vips(), "--name", "a/b", "--", "true"), "not a usable vhost name")


def test_address_owned_by_another_vhost(cli, vips, sleeper):
    ip = vips()
    sleeper(ip=ip, name="owner")
    proc = cli("spawn", "--ip", ip, "--name", "thief", "--", "true")
    assert proc.returncode != 0 and "belongs to vhost 'owner'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_name_clash_with_other_address(cli, vips, sleeper):
    sleeper(ip=vips(), name="clash")
    proc = cli("spawn", "--ip", vips(), "--name", "clash", "--", "true")
    assert proc.returncode != 0 and "vhost 'clash' has address" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exec_into_missing_vhost(cli):
    assert_one_line_error(cli("exec", "nobody-here", "--", "true"), "no running vhost")


def test_rm_missing_vhost(cli):
    assert_one_line_error(cli("rm", "nobody-here"), "no vhost")


def test_unknown_user(cli, vips):
    assert_one_line_error(cli("spawn", "--ip", vips(), "--user", "no-such-user-xyz", "--", "true"), "no such user")


def test_not_root(vips):
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                           *vaddr_cli(), "spawn", "--backend", "ebpf", "--ip", vips(), "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert_one_line_error(proc, "needs root", "--backend preload")


def test_no_cgroup_v2(vips):
    """A real machine without cgroup v2, made in a private mount namespace."""
    mount = cgroups.mount_point()
    script = f'umount -l {mount} && exec "$@"'
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                           *vaddr_cli(), "spawn", "--ip", vips(), "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert_one_line_error(proc, "no cgroup v2")


def test_header_layout_mismatch_is_refused(tmp_path):
    from vaddr import loader
    header = tmp_path / "vaddr.h"
    header.write_text('#define VADDR_LAYOUT_VERSION 999\n#define VADDR_PIN_DIR "/sys/fs/bpf/vaddr"\n')
    with pytest.raises(vaddr.VaddrError):
        loader.check_layout(str(header))
    loader.check_layout(os.path.join(loader.bpf_dir(), "vaddr.h"))  # the real one agrees


def test_help_teaches(cli):
    out = cli("spawn", "--help", check=True).stdout
    assert "Examples:" in out and "--ip" in out and "--keep" in out

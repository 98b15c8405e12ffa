"""Bad input and missing prerequisites: one line on stderr naming the problem
and the fix, a non-zero exit, no traceback, and no state left behind."""
import json
import os
import subprocess
import time

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
    ("127.127.0.9", ["127.127.0.0/16", "private 127.0.0.1"]),
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


@pytest.mark.parametrize("flag, made_with", [("--host-interfaces", "an interface view of its own"),
                                             ("--host-loopback", "a loopback of its own")])
def test_joining_a_vhost_with_a_host_option_it_was_not_made_with(cli, vips, sleeper, flag, made_with):
    """A process cannot have the machine's view inside a vhost that has its own: refused, naming the fix."""
    ip = vips()
    sleeper(ip=ip)
    proc = cli("spawn", "--ip", ip, flag, "--", "true")
    assert proc.returncode != 0 and f"was made with {made_with}" in proc.stderr and f"again with {flag}" in proc.stderr
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


def test_unknown_option_is_named_not_run_as_a_command(cli, vips):
    assert_one_line_error(cli("spawn", "--ip", vips(), "--bogus", "--", "true"), "unknown option --bogus", code=1)


@pytest.mark.parametrize("command, words", [("/etc/passwd", "Permission denied"), ("/tmp", "is a directory")])
def test_unrunnable_command_exits_126_like_a_shell(cli, vips, command, words):
    assert_one_line_error(cli("spawn", "--ip", vips(), "--", command), words, code=126)


@pytest.mark.parametrize("argv", [["rm", "."], ["rm", ".."], ["exec", "..", "--", "true"],
                                  ["link", "set", "..", "x", "--loss", "1%"], ["link", "clear", "..", "x"]])
def test_dot_names_are_unknown_hosts_not_folders(cli, argv):
    proc = cli(*argv)
    assert_one_line_error(proc)
    assert "'..'" in proc.stderr or "'.'" in proc.stderr


def test_a_name_ending_in_tmp_is_an_ordinary_vhost(cli, vips, sleeper):
    ip = vips()
    sleeper(ip=ip, name="x.tmp")
    assert [h["name"] for h in json.loads(cli("ls", "--json", check=True).stdout)] == ["x.tmp"]
    assert cli("rm", "x.tmp", check=True).stdout == "removed x.tmp\n"


def test_a_name_that_is_another_address_is_refused(cli, vips):
    a, b = vips(), vips()
    assert_one_line_error(cli("spawn", "--name", b, "--ip", a, "--", "true"), "is an address")
    assert cli("spawn", "--name", a, "--ip", a, "--", "true").returncode == 0


def test_the_machines_own_interface_address_is_refused(cli):
    """An address an interface of this machine holds (not loopback, not a lab
    subnet): the vhost would be the machine itself."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        own = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)
               if not a.get_attr("IFA_ADDRESS").startswith("127.")]
    if not own:
        pytest.skip("this machine has no IPv4 address besides loopback")
    assert_one_line_error(cli("spawn", "--ip", own[0], "--", "true"), "this machine's own addresses")


def test_exec_client_takes_a_one_word_command_and_honours_user(cli):
    assert cli("exec", "--client", "--", "true").returncode == 0
    proc = cli("exec", "--client", "--user", "nobody", "--", "id", "-u")
    assert (proc.returncode, proc.stdout) == (0, "65534\n"), proc.stderr


def test_state_folder_is_readable_by_its_owner_only(vips, sleeper):
    from vaddr import runtime
    sleeper(ip=vips())
    for path in (runtime.RUN_DIR, os.path.join(runtime.RUN_DIR, "vhosts"), os.path.join(runtime.RUN_DIR, "lock")):
        assert os.stat(path).st_mode & 0o077 == 0, path


def test_rm_removes_a_vhost_whose_root_process_made_a_cgroup_inside_it(cli, vips):
    """A root process in the vhost makes a child cgroup and moves into it:
    rm still ends it and removes both cgroups, the record and the route."""
    from tests import state
    ip = vips()
    proc = vaddr.spawn(["sh", "-c", 'mkdir "$0/inner" && echo $$ > "$0/inner/cgroup.procs" && echo moved && sleep 30',
                        cgroups.vhost_path(ip)], ip=ip, stdout=vaddr.PIPE)
    assert proc.stdout.readline() == b"moved\n"
    assert cli("rm", ip).stdout == f"removed {ip}\n"
    proc.wait(timeout=5)
    assert not [s for s in state.objects(state.snapshot()) if ip in s]


@pytest.mark.parametrize("argv", [["link", "set", "198.19.0.9", "198.19.0.9", "--loss", "1%"],
                                  ["link", "set", "host", "host", "--loss", "1%"]])
def test_a_link_from_a_host_to_itself_is_named_as_such(cli, argv):
    """It said "share no address family", which sends the user hunting for the wrong thing."""
    assert_one_line_error(cli(*argv), "are the same host")


def test_links_on_a_shim_vhost_are_refused_not_silently_ignored(cli, vips, sleeper):
    """The tc program never sees the shim's packets (they go between real
    127.x addresses): a setting would be listed and do nothing."""
    shim, other = vips(), vips()
    sleeper(ip=shim, name="shimmed", backend="preload")
    for endpoint in ("shimmed", shim):
        proc = cli("link", "set", endpoint, other, "--loss", "50%")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"vaddr: {endpoint} is an LD_PRELOAD vhost: link settings reach only eBPF")
    assert "LD_PRELOAD vhost" in cli("partition", "shimmed", other).stderr
    assert json.loads(cli("link", "ls", "--json").stdout) == []


@pytest.mark.parametrize("planted", ["symlink", "another user's folder"])
def test_a_planted_state_folder_is_refused_and_left_alone(test_user, vips, planted, tmp_path):
    """Another user can create /tmp/vaddr-UID first, or a link there to a
    folder of the victim's: vaddr refuses it, and reset deletes nothing."""
    import shutil
    victim = test_user.folder()
    (victim / "precious").write_text("keep me")
    run_dir = f"/tmp/vaddr-planted-{os.getpid()}"
    if planted == "symlink":
        os.symlink(victim, run_dir)
    else:
        os.mkdir(run_dir, 0o777)  # root's, writable by all
    try:
        env = dict(test_user.env, VADDR_RUN_DIR=run_dir)
        for argv in (("spawn", "--ip", vips(), "--", "true"), ("reset",)):
            proc = subprocess.run(test_user.argv(*argv), env=env, capture_output=True, text=True)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert ("is a symbolic link" if planted == "symlink" else "belongs to another user") in proc.stderr
        assert (victim / "precious").read_text() == "keep me"
    finally:
        os.unlink(run_dir) if planted == "symlink" else shutil.rmtree(run_dir)
        shutil.rmtree(victim)


def test_a_held_lock_times_out_naming_its_holder(cli, vips):
    """A process that keeps vaddr's lock (a stuck command, or another user's
    if the folder were shared) stalls a spawn for VADDR_LOCK_TIMEOUT only,
    and the error names the process to stop."""
    from vaddr import runtime
    with runtime.Lock():
        holder = subprocess.Popen(["flock", "-o", os.path.join(runtime.RUN_DIR, "lock"), "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and f" {holder.pid} " not in open("/proc/locks").read():
            time.sleep(0.01)
        started = time.monotonic()
        proc = cli("spawn", "--ip", vips(), "--", "true", env={**os.environ, "VADDR_LOCK_TIMEOUT": "1"})
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(proc, f"held for 1.0 s by pid {holder.pid} (flock ", "VADDR_LOCK_TIMEOUT")
    assert 1 <= waited < 5
    assert cli("spawn", "--ip", vips(), "--", "true", env={**os.environ, "VADDR_LOCK_TIMEOUT": "1"}).returncode == 0


def test_the_lock_file_is_its_owners_alone():
    from vaddr import runtime
    with runtime.Lock():
        st = os.stat(os.path.join(runtime.RUN_DIR, "lock"))
    assert st.st_mode & 0o077 == 0 and st.st_uid == os.geteuid()
    assert os.stat(runtime.RUN_DIR).st_mode & 0o077 == 0

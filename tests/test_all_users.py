"""Root's ls, rm and reset act on root's vhosts only; another user's
LD_PRELOAD lab is counted, and touched only with --all-users, as that user
(issue 8, per-user safety)."""
import json
import os
import time

import pytest

pytestmark = pytest.mark.kernel


def _wait_listed(user, name, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(user.run("ls", "--json").stdout or "[]")
        pids = [p for h in listed if h["name"] == name for p in h["pids"]]
        if pids:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{name} never listed by its user")


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_roots_commands_leave_a_users_lab_alone_unless_asked(test_user, cli, vips, sleeper, reap):
    user_ip = vips()
    reap(test_user.popen("spawn", "--name", "uweb", "--ip", user_ip, "--", "sleep", "600"))
    user_pids = _wait_listed(test_user, "uweb")
    sleeper(ip=vips(), name="rweb")

    table = cli("ls", check=True).stdout
    assert "rweb" in table and "uweb" not in table
    assert f"other users' LD_PRELOAD vhosts, not shown: {test_user.name} (1)" in table
    assert [h["name"] for h in json.loads(cli("ls", "--json", check=True).stdout)] == ["rweb"]
    everyone = {h["name"]: h for h in json.loads(cli("ls", "--all-users", "--json", check=True).stdout)}
    assert set(everyone) == {"rweb", "uweb"}
    assert everyone["uweb"]["owner"] == test_user.name and everyone["uweb"]["ip4"] == user_ip
    assert everyone["uweb"]["pids"] == user_pids

    cli("reset", check=True)
    assert all(map(_alive, user_pids)), "root's plain reset ended a user's processes"
    assert _wait_listed(test_user, "uweb") == user_pids

    removed = cli("rm", "--all-users", "uweb", "--timeout", "2", check=True).stdout
    assert removed.strip() == f"removed uweb (of {test_user.name})"
    assert not any(map(_alive, user_pids))
    assert json.loads(test_user.run("ls", "--json").stdout) == []

    reap(test_user.popen("spawn", "--name", "uweb2", "--ip", vips(), "--", "sleep", "600"))
    user_pids = _wait_listed(test_user, "uweb2")
    done = json.loads(cli("reset", "--all-users", "--json", check=True).stdout)
    assert done["users"][test_user.name]["vhosts"] == 1
    assert not any(map(_alive, user_pids))


def test_a_user_cannot_ask_for_every_users_vhosts(test_user):
    for argv in (["ls", "--all-users"], ["rm", "--all-users", "x"], ["reset", "--all-users"]):
        proc = test_user.run(*argv)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("vaddr: --all-users needs root") and proc.stderr.count("\n") == 1

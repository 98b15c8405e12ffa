"""Many vhosts at once: up, listed and removed with nothing left behind, and
`ls` answering right from its snapshot of the records while vhosts come and
go.  Functional, not timed: bench/scale.py measures."""
import json
import time

import pytest

import vaddr
from vaddr import registry
from tests import state

pytestmark = pytest.mark.kernel


def _address(i):
    return f"127.78.{i // 250}.{i % 250 + 1}"  # loopback: local without a route


def _listed(cli):
    return {h["name"]: h for h in json.loads(cli("ls", "--json", check=True, timeout=60).stdout)}


def test_2000_vhosts_up_listed_and_removed_in_one_command_leave_nothing(cli):
    before = state.snapshot()
    procs = []
    try:
        for i in range(2000):
            procs.append(vaddr.spawn(["sleep", "600"], ip=_address(i), name=f"s{i}"))
        listed = _listed(cli)
        assert len(listed) == 2000
        for i, p in enumerate(procs):
            assert listed[f"s{i}"]["pids"] == [p.pid] and listed[f"s{i}"]["ip4"] == _address(i)
        cli("rm", "-t", "0", *listed, check=True, timeout=120)
        for p in procs:
            assert p.wait(timeout=10) == -9
        assert _listed(cli) == {}
        left = {s for s in state.snapshot() - before if not s.startswith(state.INFRA)}  # hooks stay loaded
        assert left == set()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_ls_from_its_snapshot_sees_every_vhost_made_or_removed_since(cli, monkeypatch):
    """Past SNAPSHOT_FROM records `ls` reads one snapshot file; any change to
    the records folder, even in the same clock tick, makes it read them
    again."""
    n = registry.SNAPSHOT_FROM + 5
    procs = [vaddr.spawn(["sleep", "600"], ip=_address(3000 + i), name=f"snap{i}") for i in range(n)]
    try:
        time.sleep(registry.SNAPSHOT_SETTLED * 2)
        assert len(_listed(cli)) == n
        assert registry._read_snapshot(__import__("os").stat(registry._dir())) is not None, "no snapshot was made"
        for round_ in range(5):  # a vhost made and another removed at once, then listed at once
            extra = vaddr.spawn(["sleep", "600"], ip=_address(3500 + round_), name=f"extra{round_}")
            procs.append(extra)
            assert f"extra{round_}" in _listed(cli)
            extra.vhost.remove(timeout=0)
            assert f"extra{round_}" not in _listed(cli)
        procs[0].vhost.remove(timeout=0)
        listed = _listed(cli)
        assert "snap0" not in listed and len(listed) == n - 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        cli("rm", "-t", "0", *(f"snap{i}" for i in range(1, n)), timeout=60)

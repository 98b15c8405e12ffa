"""The next command repairs what a killed one left.  Each test builds the
exact state a SIGKILL at one point leaves (the fault suite, tests/faults,
finds such points at random), then runs the command a user would run next."""
import os
import shutil
import subprocess
import sys

import pytest

from vaddr import delaylines, links, maps, nets, routes, shaping
from tests import state
from tests import test_links as tl  # a module, so its tests are not collected twice
from tests.lab import delay_line_only, run_py

pytestmark = pytest.mark.kernel


def assert_loss_enforced(a, b, port):
    """With 100% loss set from a to b, one datagram is sent and counted dropped."""
    code, _, err = run_py(f'u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("{b}", {port}))',
                          ip=a)
    assert code == 0, err
    assert tl.stats(a, b)["dropped"] == 1


@delay_line_only
def test_next_link_set_repairs_a_delay_line_left_without_its_rule(vips):
    """What a vaddr killed between starting the delay line and adding its
    NFQUEUE rule leaves: the next `link set --delay` adds the rule, and
    packets are delayed."""
    a, b = vips(), vips()
    links.set_link(a, b, delay="1ms")
    try:
        for tool in ("iptables-legacy", "ip6tables-legacy", "iptables", "ip6tables"):
            if shutil.which(tool):
                delaylines._set_rules(tool, [])
        assert not [s for s in state.snapshot() if s.startswith("NFQUEUE rule")]
        links.set_link(a, b, delay="25ms")
        assert state.broken_infra(state.snapshot()) == []
        rtts = tl.measure_rtts(a, b, 7310, 20)
        assert 45 < rtts[len(rtts) // 2] < 60, rtts  # ms: twice 25 ms
    finally:
        links.clear_link(a, b)


def test_next_link_set_repairs_filters_attached_but_never_pinned(vips, sleeper):
    """What a vaddr killed during the first `link set`, after attaching the tc
    program but before pinning it, leaves: the next one replaces the filters
    instead of failing on them."""
    a, b = vips(), vips()
    sleeper(ip=b)
    links.set_link(a, b, loss="1%")
    links.clear_link(a, b)
    os.unlink(shaping.SHAPE_PIN)
    links.set_link(a, b, loss="100%")
    try:
        snap = state.snapshot()
        assert state.broken_infra(snap) == []
        assert sorted(s for s in snap if s.startswith("tc filter")) == ["tc filter: lo egress", "tc filter: lo ingress"]
        assert_loss_enforced(a, b, 7311)
    finally:
        links.clear_link(a, b)


def test_next_link_set_reattaches_filters_a_half_done_reset_removed(vips, sleeper):
    """`vaddr reset` killed after removing the tc filters but before the
    pins: the pin alone said "attached", so settings were shown and not
    enforced.  The next link set looks for the filters themselves."""
    a, b = vips(), vips()
    sleeper(ip=b)
    links.set_link(a, b, loss="1%")
    try:
        with routes._ipr() as ipr:
            for parent in ("ffff:fff2", "ffff:fff3"):
                ipr.tc("del-filter", "bpf", routes._lo(ipr), parent=parent, prio=shaping.FILTER_PRIO)
        assert "are set, but the shaping program is not attached to lo" in " ".join(
            state.broken_infra(state.snapshot()))
        links.set_link(a, b, loss="100%")
        assert state.broken_infra(state.snapshot()) == []
        assert_loss_enforced(a, b, 7312)
    finally:
        links.clear_link(a, b)


@delay_line_only
def test_a_delay_line_no_file_names_is_found_reused_and_stopped(vips, cli):
    """A vaddr killed between starting the delay line and recording it (here
    one started as an older vaddr did, without the generation map): the
    process is found by what it runs, so the next link set keeps one delay
    line per queue (not two) and reset stops it."""
    a, b = vips(), vips()
    links.set_link(a, b, loss="1%")  # pins the links map the delay line reads
    links.clear_link(a, b)
    stray = subprocess.Popen([sys.executable, "-m", "vaddr.delayd", str(maps.DELAY_QUEUE),
                              os.path.join(maps.PIN_DIR, "links")], start_new_session=True, cwd="/")
    try:
        links.set_link(a, b, delay="5ms")
        links.clear_link(a, b)
        assert len(state.delay_line_pids()) == delaylines.count()
        cli("reset", check=True)
        assert state.delay_line_pids() == []
        assert stray.wait(timeout=5) == -9
    finally:
        stray.kill()
        stray.wait()


def test_net_add_again_makes_a_subnet_that_was_named_but_not_made(cli):
    """`vaddr net add` killed after writing the subnet's record: running it
    again makes the route and the map entry (it used to see the record and
    do nothing)."""
    prefix = "198.19.252.0/24"
    os.makedirs(nets._dir(), exist_ok=True)
    cli("net", "add", "198.19.251.0/24", check=True)  # the hooks and maps, as a first net add leaves them
    cli("net", "rm", "198.19.251.0/24", check=True)
    open(nets._path(prefix), "w").close()
    try:
        assert f"lab subnet {prefix} has no local route" in state.inconsistencies()
        cli("net", "add", prefix, check=True)
        snap = state.snapshot()
        assert f"route: {prefix}" in snap and f"lab_nets map: {prefix}" in snap
        assert state.inconsistencies(snap) == []
    finally:
        cli("net", "rm", prefix)


def test_net_add_refuses_a_local_route_that_is_not_ours(cli):
    """A local route for the prefix that someone else made is refused and
    left alone (the old code deleted it while undoing its own attempt)."""
    prefix = "198.19.250.0/24"
    subprocess.run(["ip", "route", "add", "local", prefix, "dev", "lo", "table", "local"], check=True)
    try:
        proc = cli("net", "add", prefix)
        assert proc.returncode == 1 and "already has a local route that vaddr did not make" in proc.stderr
        shown = subprocess.run(["ip", "route", "show", "table", "local", prefix], capture_output=True, text=True)
        assert prefix.split("/")[0] in shown.stdout  # still there
        assert f"subnet record: {prefix.replace('/', '_')}" not in state.snapshot()
    finally:
        subprocess.run(["ip", "route", "del", "local", prefix, "dev", "lo", "table", "local"])


def test_the_next_spawn_restarts_a_killed_view_daemon(vips):
    """A view daemon killed (OOM, a stray kill) leaves its socket file; the
    next spawn finds nobody reading it, starts a new daemon, and the vhost
    still sees its own interfaces."""
    from vaddr import views
    code, out, err = run_py("fact(ok=1)", ip=vips())  # the daemon runs
    assert code == 0, err
    old = views.daemon_pids()
    assert len(old) == 1
    os.kill(old[0], 9)
    while views.daemon_pids():
        pass
    assert os.path.exists(views.sock_path())
    ip = vips()
    code, facts, err = run_py("import psutil; fact(ifs=sorted(psutil.net_if_addrs()))", ip=ip)
    assert code == 0, err
    assert facts[0]["ifs"] == ["eth0", "lo"]
    assert len(views.daemon_pids()) == 1 and views.daemon_pids() != old


def test_removal_finds_a_loopback_claimed_by_a_spawn_killed_before_its_vhost_entry(cli, vips):
    """The spawn claims the vhost's private loopback, then writes the vhost's
    entry that names it: a kill in between left a claim nothing pointed to."""
    assert cli("spawn", "--ip", vips(), "--", "true").returncode == 0  # the hooks and maps are loaded
    cgid = 0x7FFF0000_0000_0001  # no cgroup has this id
    with maps.Maps() as opened:
        lo4 = opened._claim_loopback(cgid)
        assert opened.loopback_of(cgid) is None
        opened.remove_vhost(cgid)
        assert opened._loopback_claimed_by(cgid) is None
    assert not [s for s in state.objects(state.snapshot()) if s.endswith(f"cgroup {cgid}")], lo4

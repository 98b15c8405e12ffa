"""Which path holds delayed packets, chosen by what the kernel has: fq with
departure times (EDT) where it has bpf_skb_set_tstamp, ifb and sch_fq, the
NFQUEUE delay line elsewhere; and what both must do alike.  The suite runs
these on this machine's kernel and, through test_stock_kernel.py, on a
distribution's stock kernel, so each path is exercised somewhere."""
import json
import subprocess

import pytest

from vaddr import delaylines, edt, links
from tests import state
from tests.lab import counting_receiver, run_py, start_py, wait_fact
from tests.test_links import measure_rtts

pytestmark = pytest.mark.kernel


def _fq_on(dev):
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True)
    return out.returncode == 0 and any(q["kind"] == "fq" for q in json.loads(out.stdout or "[]"))


def test_the_kernel_holds_delays_where_it_can_and_the_delay_line_elsewhere(vips, cli):
    """The choice follows the kernel's build (its config, read on its own
    here), and doctor names it: EDT runs no delay line process; the delay
    line runs one per queue and says why EDT was not used."""
    a, b = vips(), vips()
    links.set_link(a, b, delay="5ms")
    try:
        rtts = measure_rtts(a, b, 7330, 40)
        doctor = cli("doctor").stdout
        line = next(l for l in doctor.splitlines() if l.split()[1:2] == ["delay"])
        if edt.predict() is None:
            assert edt.recorded() == "edt", edt.recorded()
            assert state.delay_line_pids() == []
            assert _fq_on(edt.IFB), f"no fq on {edt.IFB}"
            assert "departure times (EDT) held by fq on vaddr-edt" in line, line
        else:
            assert edt.recorded().startswith("delay line: "), edt.recorded()
            assert len(state.delay_line_pids()) == delaylines.count()
            assert f"not in the kernel (EDT): {edt.predict()}" in line, line
    finally:
        links.clear_link(a, b)
    assert 10.0 <= rtts[len(rtts) // 2] <= 13.0, rtts


HOLDER = counting_receiver(7331, silence=3, rcvbuf=1 << 26, force=True)  # room for a burst released at once

BURST = """
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096); u.setblocking(False)
full = 0
for i in range(3000):
    try:
        u.sendto(b"x" * 200, ("%s", 7331))
    except BlockingIOError:
        full += 1
fact(full=full)
"""


def test_held_packets_do_not_fill_the_senders_buffer(vips, reap):
    """As on a wire: what a link holds is no longer the sender's.  3,000
    datagrams (600 kB) into a link delaying each by half a second, from a
    socket whose buffer holds a few: none is refused, and all arrive."""
    a, b = vips(), vips()
    receiver = reap(start_py(HOLDER, ip=b))
    wait_fact(receiver)
    links.set_link(a, b, delay="500ms", oneway=True)
    try:
        code, facts, err = run_py(BURST % b, ip=a, timeout=60)
        assert code == 0, err
        received = wait_fact(receiver, timeout=30)["received"]
    finally:
        links.clear_link(a, b, oneway=True)
    assert facts[0]["full"] == 0, f"{facts[0]['full']} sends refused: the held packets were charged to the sender"
    assert received == 3000, received


def test_a_refused_optional_part_prints_no_verifier_log(cli, vips):
    """Where the kernel refuses an optional part (older kernels refuse some),
    the first spawn after a reset falls back quietly: the verifier's log is
    not the user's to read, and doctor still names the reason."""
    cli("reset", check=True)
    done = cli("spawn", "--ip", vips(), "--", "true", timeout=900)  # compiles: minutes when emulated
    assert done.returncode == 0, done.stderr
    noise = [l for l in done.stderr.splitlines() if l.startswith(("processed ", "R1", "0: (")) or "; R" in l]
    assert not noise, "\n".join(noise[:5])


@pytest.mark.skipif(edt.predict() is not None, reason="this kernel has no fq, ifb or bpf_skb_set_tstamp: no EDT device")
def test_next_link_set_repairs_the_edt_device_a_tool_removed(vips):
    """Someone deletes vaddr-edt (ip link del): delayed packets would pass
    undelayed.  The next link set with a delay makes it again."""
    a, b = vips(), vips()
    links.set_link(a, b, delay="1ms")
    try:
        subprocess.run(["ip", "link", "del", edt.IFB], check=True)
        links.set_link(a, b, delay="10ms")
        assert state.broken_infra(state.snapshot()) == []
        rtts = measure_rtts(a, b, 7332, 20)
    finally:
        links.clear_link(a, b)
    assert 20.0 <= rtts[len(rtts) // 2] <= 24.0, rtts

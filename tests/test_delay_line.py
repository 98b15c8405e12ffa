"""The delay line at load: many links with their own delays at once, and a
burst beyond what it can hold, where every packet is either delivered or
counted as dropped."""
import re
import statistics

import pytest

from vaddr import delaylines, links
from tests.lab import counting_receiver, delay_line_only, run_py, start_py, wait_fact

pytestmark = pytest.mark.kernel

ECHO = """
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7320)); fact(ready=1)
while True:
    d, peer = u.recvfrom(64); u.sendto(d, peer)
"""

# One process pings every server at once, ROUNDS times: the delay line holds
# packets of 100 links with 100 delays together, released out of arrival order.
PINGER = """
import time
servers = %r
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
rtts = {s: [] for s in servers}
for r in range(%d):
    sent = {}
    for s in servers:
        sent[s] = time.monotonic(); u.sendto(str(r).encode(), (s, 7320))
    got = 0
    while got < len(servers):
        d, (ip, _) = u.recvfrom(64)
        if int(d) == r:
            rtts[ip].append((time.monotonic() - sent[ip]) * 1e3); got += 1
fact(rtts=rtts)
"""


def test_100_links_with_distinct_delays_each_hold_their_own(vips, reap):
    client = vips()
    servers = [vips() for _ in range(100)]
    delays = {s: 2 * (i + 1) for i, s in enumerate(servers)}  # 2, 4, ... 200 ms: neighbours 2 ms apart
    procs = [reap(start_py(ECHO, ip=s)) for s in servers]
    for p in procs:
        wait_fact(p)
    try:
        for s, ms in delays.items():
            links.set_link(client, s, delay=f"{ms}ms", oneway=True)
        code, facts, err = run_py(PINGER % (servers, 7), ip=client, timeout=60)
        assert code == 0, err
    finally:
        for s in servers:
            links.clear_link(client, s, oneway=True)
    medians = {s: statistics.median(v) for s, v in facts[0]["rtts"].items()}
    wrong = {s: (delays[s], round(m, 2)) for s, m in medians.items() if not delays[s] <= m <= delays[s] + 1.5}
    assert not wrong, f"links whose round trip (ms) is not their own delay: {wrong}"


def _counted(tool):
    """Our rules with their packet counters (`-c PKTS BYTES`), as iptables -v -S prints them."""
    import subprocess
    out = subprocess.run([tool, "-w", "-t", "mangle", "-v", "-S", "PREROUTING"], capture_output=True, text=True).stdout
    return sorted(line for line in out.splitlines() if "NFQUEUE" in line)


@delay_line_only
def test_one_rule_and_one_delay_line_per_queue_and_link_set_again_changes_none(vips, sleeper):
    """Each queue gets its rule (mark bits to queue) and its process; a
    second link set finds them right and leaves them: their counters go on
    (a rule deleted and added again would start from zero, and let packets
    pass undelayed in between)."""
    import shutil
    from tests import state
    a, b = vips(), vips()
    sleeper(ip=b)  # b's address is local while it lives
    n = delaylines.count()
    wanted = sorted(delaylines.rule(q, n) for q in range(n))
    tools = [t for t in ("iptables-legacy", "ip6tables-legacy") if shutil.which(t)] or ["iptables", "ip6tables"]
    links.set_link(a, b, delay="1ms")
    try:
        code, _, err = run_py(f'socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("{b}", 7322))', ip=a)
        assert code == 0, err
        assert all(sorted(delaylines._rules(t)) == wanted for t in tools)
        counted = {t: _counted(t) for t in tools}
        assert any(" -c 0 0 " not in line for line in counted[tools[0]]), "the datagram was not queued"
        pids = sorted(state.delay_line_pids())
        links.set_link(a, b, delay="2ms")
        assert {t: _counted(t) for t in tools} == counted, "the rules were made again"
        assert sorted(state.delay_line_pids()) == pids and len(pids) == n
        assert sorted(delaylines.queue_stats()) == list(range(n))
    finally:
        links.clear_link(a, b)


RECEIVER = counting_receiver(7321, silence=4, rcvbuf=1 << 27, force=True)  # room for all that is released

SENDER = """
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(%d):
    u.sendto(b"x" * 16, ("%s", 7321))
fact(sent=%d)
"""


def test_a_burst_beyond_the_queue_is_counted_as_dropped_and_reported(vips, reap, cli):
    """Held for 2 s, 120,000 datagrams overflow the 65,536 the delay line
    (or fq, where the kernel holds them) keeps: what it could not hold is
    counted (by the kernel, per queue) and `link ls` says so; delivered plus
    counted is everything sent."""
    a, b = vips(), vips()
    count = 120_000
    receiver = reap(start_py(RECEIVER, ip=b))
    wait_fact(receiver)
    links.set_link(a, b, delay="2s", oneway=True)
    try:
        before = links.delay_line_drops()
        code, _, err = run_py(SENDER % (count, b, count), ip=a, timeout=60)
        assert code == 0, err
        received = wait_fact(receiver, timeout=30)["received"]
        dropped = links.delay_line_drops() - before
        row = next(r for r in links.list_links() if (r["src"], r["dst"]) == (a, b))
        shown = cli("link", "ls", check=True).stdout
    finally:
        links.clear_link(a, b, oneway=True)
    assert row["delayed"] == count
    assert dropped > 0, "the burst did not overflow the queue: the test proves nothing"
    assert received + dropped == count, (received, dropped)
    assert received <= links.DELAY_LINE_HOLDS
    said = re.search(r"(?:the delay line|the kernel's fq on vaddr-edt) dropped ([\d,]+) delayed packets "
                     r"with its queue full", shown)
    assert said and int(said.group(1).replace(",", "")) >= dropped, shown

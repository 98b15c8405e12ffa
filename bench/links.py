"""Link shaping accuracy: configured against measured, printed as tables.

    sudo .venv/bin/python bench/links.py [--quick]

Delay (TCP round trips), loss (BPF counters over many datagrams), rate and
throughput (iperf3, pinned cores), and the packet rate of the delay line.
Lab addresses from 198.18.0.0/15, guarded by an unreachable route."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vaddr  # noqa: E402
from vaddr import links, runtime  # noqa: E402
from run import _guard, _wait_listen, table  # noqa: E402

A, B = "198.18.60.1", "198.18.60.2"

ECHO = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1]))); s.listen(); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(100)
    if not d: break
    c.sendall(d)
"""
PING = r"""
import socket, sys, time, json
c = socket.create_connection((sys.argv[1], int(sys.argv[3]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(b"x"); c.recv(1)
out = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); out.append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"""


_ports = iter(range(7910, 7999))


def rtts(count):
    port = str(next(_ports))  # a fresh port: the last run's TIME_WAIT holds its own
    srv = vaddr.spawn([sys.executable, "-c", ECHO, port], ip=B, stdout=vaddr.PIPE)
    try:
        srv.stdout.readline()
        cl = vaddr.spawn([sys.executable, "-c", PING, B, str(count), port], ip=A, stdout=vaddr.PIPE)
        out = sorted(json.loads(cl.stdout.read()))
        cl.wait()
        return out
    finally:
        srv.kill()
        srv.wait()


def bench_delay(quick):
    rows = []
    for ms in (1, 5, 20, 50, 200):
        links.set_link(A, B, delay=f"{ms}ms")
        samples = rtts(20 if ms >= 50 or quick else 100)
        links.clear_link(A, B)
        med, p99 = samples[len(samples) // 2], samples[max(0, int(len(samples) * 0.99) - 1)]
        rows.append((f"{ms} ms", f"{2 * ms} ms", f"{med:.2f}", f"{(med / (2 * ms) - 1) * 100:+.1f}%", f"{p99:.2f}",
                     f"{p99 - 2 * ms:+.2f}"))
    table("Delay, set both ways: TCP round trip of 1 byte (ms)",
          ["one-way delay", "expected RTT", "median", "error", "p99", "p99 - expected"], rows)


def bench_loss(quick):
    rows = []
    count = 20000 if quick else 100000
    sender = f"""
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({count}):
    u.sendto(b"x", ("{B}", 7901))
    if i % 2000 == 1999: time.sleep(0.001)
"""
    for pct in (0.1, 1, 10, 50):
        links.set_link(A, B, loss=f"{pct}%", oneway=True)
        vaddr.spawn([sys.executable, "-c", sender], ip=A).wait()
        row = next(r for r in links.list_links() if (r["src"], r["dst"]) == (A, B))
        links.clear_link(A, B, oneway=True)
        measured = row["dropped"] / (row["dropped"] + row["packets"]) * 100
        rows.append((f"{pct}%", f"{measured:.3f}%", f"{(measured / pct - 1) * 100:+.1f}%",
                     f"{row['dropped'] + row['packets']:,}"))
    table("Loss, one way: dropped share of datagrams (BPF counters)",
          ["configured", "measured", "relative error", "packets"], rows)


def iperf(seconds, reverse_ok=True):
    srv = vaddr.spawn(["taskset", "-c", "0", "iperf3", "-s", "-1", "-p", "7902"], ip=B, stdout=vaddr.DEVNULL)
    _wait_listen(B, 7902)
    cl = vaddr.spawn(["taskset", "-c", "1", "iperf3", "-c", B, "-p", "7902", "-t", str(seconds), "-J"],
                     ip=A, stdout=vaddr.PIPE)
    out = json.loads(cl.stdout.read())
    cl.wait()
    srv.wait(timeout=30)
    return out["end"]["sum_received"]["bits_per_second"]


def bench_rate(quick):
    rows = []
    for mbit in (1, 10, 100, 1000):
        links.set_link(A, B, rate=f"{mbit}mbit", oneway=True)
        got = iperf(3 if quick else 5)
        links.clear_link(A, B, oneway=True)
        rows.append((f"{mbit} Mbit/s", f"{got / 1e6:.2f}", f"{(got / (mbit * 1e6) - 1) * 100:+.1f}%"))
    table("Rate, one way: iperf3 TCP goodput (Mbit/s)", ["configured", "measured", "error"], rows)


def bench_throughput(quick):
    reps = 2 if quick else 4
    base, shaped = [], []
    links.set_link("198.18.60.99", "198.18.60.98", loss="1%")  # the program attached, this pair unset
    for _ in range(reps):
        srv = subprocess.Popen(["taskset", "-c", "0", "iperf3", "-s", "-1", "-p", "7903", "-B", "127.0.0.1"],
                               stdout=subprocess.DEVNULL)
        _wait_listen("127.0.0.1", 7903)
        out = subprocess.run(["taskset", "-c", "1", "iperf3", "-c", "127.0.0.1", "-p", "7903", "-t", "2", "-J"],
                             capture_output=True, check=True).stdout
        srv.wait()
        base.append(json.loads(out)["end"]["sum_received"]["bits_per_second"])
        shaped.append(iperf(2))
    links.clear_link("198.18.60.99", "198.18.60.98")
    links.set_link(A, B, delay="20ms", rate="100mbit")
    flow = iperf(5 if quick else 10)
    links.clear_link(A, B)
    b, s = statistics.median(base), statistics.median(shaped)
    table("Throughput (iperf3, pinned cores, median)", ["case", "Gbit/s", "vs loopback"],
          [("plain loopback", f"{b / 1e9:.2f}", "100%"),
           ("two vhosts, shaping attached, link unset", f"{s / 1e9:.2f}", f"{s / b * 100:.1f}%"),
           ("one TCP flow over 100 Mbit/s + 20 ms each way", f"{flow / 1e9:.3f}", f"{flow / 1e6:.1f} Mbit/s")])


def _udp_rate_tool():
    """bench/udp_rate.c, compiled once into a temporary folder."""
    import tempfile
    exe = os.path.join(tempfile.gettempdir(), f"vaddr-udp-rate-{os.getuid()}")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_rate.c")],
                   check=True)
    return exe


def _delay_line_cpu():
    """CPU seconds the delay lines have used so far."""
    from vaddr import delaylines, maps
    ticks = 0
    for q in range(maps.DELAY_QUEUES_MAX):
        for pid in delaylines._pids(q):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _blast(tool, count, vhosts):
    """(offered, delivered per second, delivered) for one C sender on CPU 1
    and a sink on CPU 0: on plain loopback, or between the two vhosts."""
    if vhosts:
        sink = vaddr.spawn(["taskset", "-c", "0", tool, "sink", "0.0.0.0", "7906"], ip=B, stdout=vaddr.PIPE)
    else:
        sink = subprocess.Popen(["taskset", "-c", "0", tool, "sink", "127.0.0.1", "7906"], stdout=subprocess.PIPE)
    sink.stdout.readline()
    argv = ["taskset", "-c", "1", tool, "send", B if vhosts else "127.0.0.1", "7906", str(count)]
    if vhosts:
        sender = vaddr.spawn(argv, ip=A, stdout=vaddr.PIPE)
        offered = float(sender.stdout.read())
        sender.wait()
    else:
        offered = float(subprocess.run(argv, capture_output=True, check=True).stdout)
    n, secs = sink.stdout.readline().split()
    sink.wait()
    return offered, int(n) / float(secs), int(n)


def bench_delay_line_rate(quick):
    """Datagrams per second through a 1 ms link, one C sender (sendmmsg),
    against the same sender on plain loopback and between unshaped vhosts;
    and what the delay line itself costs per packet."""
    from vaddr import delaylines, edt
    tool = _udp_rate_tool()
    count = 200_000 if quick else 1_000_000
    rows = []
    for label, vhosts, link in (("plain loopback (127.0.0.1, outside vhosts)", False, False),
                                ("two vhosts, no link setting", True, False),
                                ("two vhosts, 1 ms delay: through the delay line", True, True)):
        if link:
            links.set_link(A, B, delay="1ms", oneway=True)
            cpu = _delay_line_cpu()
        offered, rate, n = _blast(tool, count, vhosts)
        note = ""
        if link:
            spent = _delay_line_cpu() - cpu
            row = next(r for r in links.list_links() if (r["src"], r["dst"]) == (A, B))
            links.clear_link(A, B, oneway=True)
            note = (f"held {row['delayed']:,} in the kernel (EDT): no delay line process" if edt.active() else
                    f"held {row['delayed']:,}; delay line CPU {spent / n * 1e6:.1f} us/pkt = "
                    f"{n / spent:,.0f} pkts/s per core")
        rows.append((label, f"{offered:,.0f}", f"{n:,} of {count:,}", f"{rate:,.0f}", note))
    base = float(rows[1][3].replace(",", ""))
    rows[2] = (*rows[2][:4], f"{float(rows[2][3].replace(',', '')) / base * 100:.0f}% of unshaped; " + rows[2][4])
    table(f"Delay line packet rate: 32-byte UDP, one C sender (sendmmsg) on CPU 1, sink on CPU 0 "
          f"[{'fq on ' + edt.IFB + ' (EDT)' if edt.active() else delaylines.describe()}]",
          ["path", "offered pkts/s", "delivered", "delivered pkts/s", "notes"], rows)


MESH_ECHO = r"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7905)); print("ready", flush=True)
while True:
    d, peer = u.recvfrom(64); u.sendto(d, peer)
"""
# Every pinger sends to its peers in turn, 10 ms apart, from a random start:
# every link is in use throughout, at a load (3,200 pings/s for 32 hosts) that
# leaves 64 interpreters on a 2-core machine room to answer on time; faster,
# the figure measures the scheduler rather than the delay line.
MESH_PING = r"""
import json, random, selectors, socket, sys, time
peers, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(u, selectors.EVENT_READ)
rtts = {p: [] for p in peers}
sent = {}
todo = [(r, p) for r in range(rounds) for p in peers]
next_send = time.monotonic() + random.random() * 0.05
while todo or sent:
    now = time.monotonic()
    if todo and now >= next_send:
        r, p = todo.pop(0)
        sent[r, p] = time.monotonic(); u.sendto(str(r).encode(), (p, 7905)); next_send += 0.01
    for _ in sel.select(max(0, next_send - time.monotonic()) if todo else 10):
        while True:
            try:
                d, (ip, _) = u.recvfrom(64)
            except BlockingIOError:
                break
            t = sent.pop((int(d), ip), None)
            if t is not None:
                rtts[ip].append((time.monotonic() - t) * 1e3)
print(json.dumps(rtts))
"""


def bench_mesh(hosts, rounds):
    """A full mesh, every directed link with its own delay, all pinged at once."""
    ips = [f"198.18.61.{i + 1}" for i in range(hosts)]
    delay = {(a, b): 5 + (i * 13 + j * 7) % 20 for i, a in enumerate(ips) for j, b in enumerate(ips) if a != b}
    echoes = [vaddr.spawn([sys.executable, "-c", MESH_ECHO], ip=ip, stdout=vaddr.PIPE) for ip in ips]
    try:
        for p in echoes:
            p.stdout.readline()
        t = time.perf_counter()
        links.set_links([(a, b, {"delay": f"{ms}ms"}, True) for (a, b), ms in delay.items()])
        set_secs = time.perf_counter() - t
        pingers = [vaddr.spawn([sys.executable, "-c", MESH_PING, json.dumps([p for p in ips if p != ip]), str(rounds)],
                               ip=ip, stdout=vaddr.PIPE) for ip in ips]
        results = {ip: json.loads(p.stdout.read()) for ip, p in zip(ips, pingers)}
        for p in pingers:
            p.wait()
    finally:
        for p in echoes:
            p.kill()
            p.wait()
        for a, b in delay:
            links.clear_link(a, b, oneway=True)
    errors = sorted((statistics.median(v) / (delay[a, b] + delay[b, a]) - 1) * 100
                    for a, got in results.items() for b, v in got.items())
    within = sum(abs(e) <= 5 for e in errors)
    if os.environ.get("VADDR_BENCH_DEBUG"):
        for a, got in results.items():
            for b, v in got.items():
                exp = delay[a, b] + delay[b, a]
                if abs(statistics.median(v) / exp - 1) > 0.05:
                    print(a, b, exp, [round(x, 1) for x in sorted(v)])
    table(f"Shaped links in use at once: a {hosts}-host full mesh, {len(delay)} directed links, each with its own delay "
          f"(5-24 ms), {rounds} pings per pair, all pairs in use together",
          ["links", "set in", "RTT median error: min", "median", "max", "within 5%"],
          [(f"{len(delay):,}", f"{set_secs:.2f} s", f"{errors[0]:+.2f}%", f"{statistics.median(errors):+.2f}%",
            f"{errors[-1]:+.2f}%", f"{within} of {len(errors)} pairs")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--only", choices=["delay", "loss", "rate", "throughput", "delay-line", "mesh"],
                    help="run one table")
    args = ap.parse_args()
    runtime.require_root()
    _guard("add")
    procs = [vaddr.spawn(["sleep", "3600"], ip=ip) for ip in (A, B)]  # keep both vhosts (and routes) up
    print(f"vaddr link shaping on {os.uname().release}, {os.cpu_count()} cores")
    try:
        parts = {"delay": lambda: bench_delay(args.quick), "loss": lambda: bench_loss(args.quick),
                 "rate": lambda: bench_rate(args.quick), "throughput": lambda: bench_throughput(args.quick),
                 "delay-line": lambda: bench_delay_line_rate(args.quick),
                 "mesh": lambda: bench_mesh(32, 5 if args.quick else 20)}
        for name, run in parts.items():
            if args.only in (None, name):
                run()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        _guard("del")
        if not vaddr.list_vhosts():  # leave the machine as found: hooks, tc, delay line
            from vaddr.reset import reset
            reset()


if __name__ == "__main__":
    main()

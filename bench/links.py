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


def bench_delay_line_rate(quick):
    """Datagrams per second through a 1 ms link: the delay line's packet rate."""
    count = 50000 if quick else 200000
    links.set_link(A, B, delay="1ms", oneway=True)
    receiver = vaddr.spawn([sys.executable, "-c", r"""
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 25)
u.bind(("", 7904)); u.settimeout(2); print("ready", flush=True)
n = 0; first = last = None
try:
    while True:
        u.recv(64); n += 1; last = time.monotonic(); first = first or last
except socket.timeout:
    print(n, (last - first) if first else 0, flush=True)
"""], ip=B, stdout=vaddr.PIPE)
    receiver.stdout.readline()
    sender = vaddr.spawn(["taskset", "-c", "1", sys.executable, "-c", f"""
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
for i in range({count}): u.sendto(b"x" * 32, ("{B}", 7904))
print({count} / (time.monotonic() - t), flush=True)
"""], ip=A, stdout=vaddr.PIPE)
    offered = float(sender.stdout.read())
    sender.wait()
    n, secs = receiver.stdout.readline().split()
    receiver.wait()
    row = next(r for r in links.list_links() if (r["src"], r["dst"]) == (A, B))
    links.clear_link(A, B, oneway=True)
    table("Delay line packet rate (1 ms link, 32-byte UDP, one Python sender)",
          ["offered pkts/s", "delivered", "delivered pkts/s", "handed to delay line"],
          [(f"{offered:,.0f}", f"{int(n):,} of {count:,}", f"{int(n) / float(secs):,.0f}" if float(secs) else "-",
            f"{row['delayed']:,}")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    args = ap.parse_args()
    runtime.require_root()
    _guard("add")
    procs = [vaddr.spawn(["sleep", "3600"], ip=ip) for ip in (A, B)]  # keep both vhosts (and routes) up
    print(f"vaddr link shaping on {os.uname().release}, {os.cpu_count()} cores")
    try:
        bench_delay(args.quick)
        bench_loss(args.quick)
        bench_rate(args.quick)
        bench_throughput(args.quick)
        bench_delay_line_rate(args.quick)
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

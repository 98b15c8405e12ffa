"""vaddr benchmarks: measured figures against named baselines, printed as tables.

    sudo .venv/bin/python bench/run.py [--quick] [--json FILE]

Not a pass/fail test: it prints what this machine does.  Lab addresses come
from 198.18.0.0/15, guarded by an unreachable route for the run."""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vaddr  # noqa: E402
from vaddr import runtime  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VADDR = os.path.join(os.path.dirname(sys.executable), "vaddr")
if not os.path.exists(VADDR):
    VADDR = None


def timed_runs(argv, n, shell=False):
    """Wall times (ms) of n runs of a command."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def summary(samples):
    s = sorted(samples)
    return {"median": statistics.median(s), "p90": s[int(len(s) * 0.9) - 1] if len(s) > 1 else s[0], "n": len(s)}


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print("  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


NETNS_NODE = """
ip netns add vaddrbench && ip link add vbh0 type veth peer name vbn0 &&
ip link set vbn0 netns vaddrbench && ip -n vaddrbench addr add 198.18.250.2/30 dev vbn0 &&
ip -n vaddrbench link set vbn0 up && ip netns exec vaddrbench true;
ip netns del vaddrbench; ip link del vbh0 2>/dev/null; true
"""


def bench_spawn(n):
    if VADDR is None:
        sys.exit("run `make setup` first: bench uses .venv/bin/vaddr")
    subprocess.run([VADDR, "spawn", "--ip", "127.0.0.200", "--", "true"], check=True)  # warm: hooks loaded
    cases = [
        ("true", ["true"]),
        ("python3 -c pass", [sys.executable, "-c", "pass"]),
        ("unshare -n true", ["unshare", "-n", "true"]),
        ("netns node (Mininet/CORE style)", NETNS_NODE),
        ("vaddr spawn --ip 127.0.0.200 -- true", [VADDR, "spawn", "--ip", "127.0.0.200", "--", "true"]),
        ("vaddr spawn --ip 198.19.0.9 -- true (lab subnet)", [VADDR, "spawn", "--ip", "198.19.0.9", "--", "true"]),
        ("vaddr spawn --ip 198.18.9.9 -- true (own route)", [VADDR, "spawn", "--ip", "198.18.9.9", "--", "true"]),
    ]
    results = {}
    subprocess.run([VADDR, "net", "add", "198.19.0.0/16"], check=True, stdout=subprocess.DEVNULL)
    try:
        for label, argv in cases:
            results[label] = summary(timed_runs(argv, n, shell=isinstance(argv, str)))
    finally:
        subprocess.run([VADDR, "net", "rm", "198.19.0.0/16"], check=True, stdout=subprocess.DEVNULL)
    py = results["python3 -c pass"]["median"]
    rows = [(label, f"{r['median']:.1f}", f"{r['p90']:.1f}", f"{r['median'] / py:.2f}x") for label, r in results.items()]
    table(f"Starting a process (ms, {n} runs each)", ["command", "median", "p90", "vs python3 -c pass"], rows)
    return results


def _spawn_many(ips):
    """(processes, ms per vhost) for one sleeping process in each new vhost."""
    t = time.perf_counter()
    procs = [vaddr.spawn(["sleep", "60"], ip=ip) for ip in ips]
    return procs, (time.perf_counter() - t) * 1e3 / len(ips)


def _end_all(procs):
    t = time.perf_counter()
    for p in procs:
        p.kill()
        p.wait()
    return (time.perf_counter() - t) * 1e3 / len(procs)


def bench_api(count):
    ips = [f"198.18.{20 + i // 250}.{i % 250 + 1}" for i in range(count)]
    procs, create = _spawn_many(ips)
    joins = []
    for ip in ips[:20]:
        t = time.perf_counter()
        p = vaddr.spawn(["true"], ip=ip)
        joins.append((time.perf_counter() - t) * 1e3)
        p.wait()
    teardown = _end_all(procs)
    subnet_ips = [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(count)]
    subprocess.run([VADDR, "net", "add", "198.19.0.0/16"], check=True, stdout=subprocess.DEVNULL)
    try:
        procs, create_subnet = _spawn_many(subnet_ips)
        _end_all(procs)
    finally:
        subprocess.run([VADDR, "net", "rm", "198.19.0.0/16"], check=True, stdout=subprocess.DEVNULL)
    procs, create_lo = _spawn_many([f"127.0.{50 + i // 250}.{i % 250 + 1}" for i in range(count)])
    _end_all(procs)
    rows = [("new vhost, own route (198.18/15)", f"{create:.2f}"),
            ("new vhost in a lab subnet (198.19.0.0/16)", f"{create_subnet:.2f}"),
            ("new vhost, loopback address (127/8)", f"{create_lo:.2f}"),
            ("join a running vhost", f"{statistics.median(joins):.2f}"),
            ("end process + remove its vhost (and route)", f"{teardown:.2f}")]
    table(f"Python API, vaddr.spawn() ({count} vhosts, ms per vhost)", ["operation", "ms"], rows)
    return {"create_own_route": create, "create_in_subnet": create_subnet, "create_loopback": create_lo,
            "join": statistics.median(joins), "teardown": teardown}


def _connect_rate_tool():
    """bench/connect_rate.c, compiled once into a temporary folder."""
    import tempfile
    exe = os.path.join(tempfile.gettempdir(), f"vaddr-connect-rate-{os.getuid()}")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "connect_rate.c")], check=True)
    return exe


def bench_connect(secs, reps):
    """Loopback and vhost runs alternate (ABAB), so machine drift hits both."""
    tool = _connect_rate_tool()
    samples = {"loopback": [], "vhosts": []}
    for _ in range(reps):
        srv = subprocess.Popen(["taskset", "-c", "0", tool, "server", "127.0.0.1", "7400"], stdout=subprocess.PIPE)
        srv.stdout.readline()
        out = subprocess.run(["taskset", "-c", "1", tool, "client", "127.0.0.1", "7400", str(secs)],
                             capture_output=True, check=True)
        samples["loopback"].append(float(out.stdout))
        srv.kill()
        srv.wait()
        srv = vaddr.spawn(["taskset", "-c", "0", tool, "server", "0.0.0.0", "7400"], ip="198.18.7.1",
                          stdout=vaddr.PIPE)
        srv.stdout.readline()
        cl = vaddr.spawn(["taskset", "-c", "1", tool, "client", "198.18.7.1", "7400", str(secs)], ip="198.18.7.2",
                         stdout=vaddr.PIPE)
        samples["vhosts"].append(float(cl.stdout.read()))
        cl.wait()
        srv.kill()
        srv.wait()
    res = {kind: statistics.median(v) for kind, v in samples.items()}
    rows = [(kind, f"{rate:,.0f}", f"{min(samples[kind]):,.0f}-{max(samples[kind]):,.0f}",
             f"{rate / res['loopback'] * 100:.1f}%") for kind, rate in res.items()]
    table(f"TCP connect+accept rate, one C client and server ({secs}s x {reps}, interleaved, median)",
          ["between", "conn/s", "range", "vs loopback"], rows)
    return res


def _pinned(cpu, argv):
    return ["taskset", "-c", str(cpu), *argv]


def _server_client(kind, mode, port, client_args):
    """Run the C tool's server (mode) and client on loopback, in eBPF vhosts or
    in shim vhosts; returns the client's printed figure."""
    tool = _connect_rate_tool()
    sip, cip = {"loopback": ("127.0.0.1", None), "ebpf": ("198.18.7.1", "198.18.7.2"),
                "preload": ("198.18.8.1", "198.18.8.2")}[kind]
    bind = "127.0.0.1" if kind == "loopback" else "0.0.0.0"
    server = _pinned(0, [tool, mode, bind, str(port)])
    client = _pinned(1, [tool, client_args[0], sip, str(port), *client_args[1:]])
    if kind == "loopback":
        srv = subprocess.Popen(server, stdout=subprocess.PIPE)
        srv.stdout.readline()
        out = subprocess.run(client, capture_output=True, check=True).stdout
    else:
        srv = vaddr.spawn(server, ip=sip, backend=kind, stdout=vaddr.PIPE)
        srv.stdout.readline()
        cl = vaddr.spawn(client, ip=cip, backend=kind, stdout=vaddr.PIPE)
        out = cl.stdout.read()
        cl.wait()
    srv.kill()
    srv.wait()
    return float(out)


def bench_backends(secs, reps):
    """The LD_PRELOAD shim against plain loopback and the eBPF backend, in one run."""
    kinds = ("loopback", "ebpf", "preload")
    rate = {k: [] for k in kinds}
    rtt = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            rate[k].append(_server_client(k, "server", 7410, ["client", str(secs)]))
            rtt[k].append(_server_client(k, "echo", 7411, ["rtt", "20000"]))
    base_rate, base_rtt = statistics.median(rate["loopback"]), statistics.median(rtt["loopback"])
    rows = [(k, f"{statistics.median(rate[k]):,.0f}", f"{statistics.median(rate[k]) / base_rate * 100:.1f}%",
             f"{statistics.median(rtt[k]):.2f}", f"{statistics.median(rtt[k]) - base_rtt:+.2f}") for k in kinds]
    table(f"Backends side by side, C client and server on pinned cores ({reps} interleaved rounds, median)",
          ["between", "connects/s", "vs loopback", "RTT 1 byte (us)", "vs loopback"], rows)
    tool = _connect_rate_tool()
    from vaddr.backends import preload
    native = [float(subprocess.run([tool, "calls"], capture_output=True, check=True).stdout) for _ in range(5)]
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".map") as vmap:
        vmap.write("198.18.8.9 127.250.0.9\n")
        vmap.flush()
        env = dict(os.environ, LD_PRELOAD=preload.shim_path(), VADDR_MAP=vmap.name, VADDR_VIP="198.18.8.9")
        shimmed = [float(subprocess.run([tool, "calls"], capture_output=True, check=True, env=env).stdout)
                   for _ in range(5)]
    table("Cost of the shim per intercepted call (getsockname, ns, median of 5 x 1M calls)",
          ["", "ns per call"], [("without shim", f"{statistics.median(native):.0f}"),
                                ("with shim", f"{statistics.median(shimmed):.0f}"),
                                ("shim's cost", f"{statistics.median(shimmed) - statistics.median(native):+.0f}")])
    return {"connect_per_s": {k: statistics.median(v) for k, v in rate.items()},
            "rtt_us": {k: statistics.median(v) for k, v in rtt.items()},
            "getsockname_ns": {"native": statistics.median(native), "shim": statistics.median(shimmed)}}


_SOCKET_COST = """
import socket, sys, time
family, kind = {"unix": (socket.AF_UNIX, socket.SOCK_STREAM),
                "netlink": (socket.AF_NETLINK, socket.SOCK_RAW)}[sys.argv[1]]
n = int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    socket.socket(family, kind).close()
print((time.perf_counter() - t) / n * 1e6)
"""


def bench_view(n, reps):
    """What a call the view daemon answers costs (view_filter.h): a Unix
    socket (its abstract names are the vhost's own) and a route netlink
    socket (getifaddrs), against the machine's and a vhost without views."""
    where = {"machine (no vhost)": None, "vhost": {}, "vhost --host-loopback": {"host_loopback": True},
             "vhost --host-interfaces": {"host_interfaces": True}}
    out = {}
    for kind in ("unix", "netlink"):
        for label, opts in where.items():
            argv = [sys.executable, "-c", _SOCKET_COST, kind, str(n)]
            samples = []
            for _ in range(reps):
                if opts is None:
                    samples.append(float(subprocess.run(argv, capture_output=True, check=True, text=True).stdout))
                    continue
                proc = vaddr.spawn(argv, ip="198.18.251.7", stdout=vaddr.PIPE, **opts)
                samples.append(float(proc.stdout.read()))
                proc.wait()
            out[f"{kind}, {label}"] = statistics.median(samples)
    table(f"socket() in a vhost, answered by the view daemon (us per call, median of {reps} x {n})",
          ["family, where", "us"], [(k, f"{v:.1f}") for k, v in out.items()])
    return out


def bench_throughput(secs, reps):
    samples = {"loopback": [], "vhosts": []}
    for _ in range(reps):
        for kind, sip, cip in (("loopback", "127.0.0.1", None), ("vhosts", "198.18.7.1", "198.18.7.2")):
            # Pinned to separate cores: on 2 cores, where the scheduler puts
            # the pair otherwise halves throughput at random.
            server = ["taskset", "-c", "0", "iperf3", "-s", "-1", "-p", "7401"]
            client = ["taskset", "-c", "1", "iperf3", "-c", sip, "-p", "7401", "-t", str(secs), "-J"]
            if kind == "vhosts":
                srv = vaddr.spawn(server, ip=sip, stdout=vaddr.DEVNULL)
                _wait_listen(sip, 7401)
                cl = vaddr.spawn(client, ip=cip, stdout=vaddr.PIPE)
                out = cl.stdout.read()
                cl.wait()
            else:
                srv = subprocess.Popen(server + ["-B", sip], stdout=subprocess.DEVNULL)
                _wait_listen(sip, 7401)
                out = subprocess.run(client, stdout=subprocess.PIPE, check=True).stdout
            srv.wait(timeout=30)
            samples[kind].append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
    res = {kind: statistics.median(v) for kind, v in samples.items()}
    rows = [(k, f"{v:.2f}", f"{min(samples[k]):.1f}-{max(samples[k]):.1f}", f"{v / res['loopback'] * 100:.1f}%")
            for k, v in res.items()]
    table(f"Bulk TCP throughput, iperf3 ({secs}s x {reps}, interleaved, median)",
          ["between", "Gbit/s", "range", "vs loopback"], rows)
    return res


def _wait_listen(ip, port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if subprocess.run(["ss", "-Hltn", "src", f"{ip}:{port}"], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(0.01)


def _guard(op):
    subprocess.run(["ip", "route", op, "unreachable", "198.18.0.0/15", "proto", "0x77"],
                   stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs, for a smoke check")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    runtime.require_root()
    _guard("add")
    print(f"vaddr benchmarks on {os.uname().release}, {os.cpu_count()} cores")
    try:
        results = {
            "spawn_ms": bench_spawn(10 if args.quick else 40),
            "api_ms": bench_api(20 if args.quick else 200),
            "connect_per_s": bench_connect(1 if args.quick else 2, 1 if args.quick else 5),
            "throughput_gbps": bench_throughput(1 if args.quick else 2, 1 if args.quick else 5),
            "backends": bench_backends(1 if args.quick else 2, 1 if args.quick else 5),
            "view_us": bench_view(500 if args.quick else 3000, 1 if args.quick else 5),
        }
    finally:
        _guard("del")
        if not vaddr.list_vhosts():  # leave the machine as found
            from vaddr.reset import reset
            reset()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""How vaddr scales on this machine: N vhosts up, listed, removed.

    sudo .venv/bin/python bench/scale.py [N]        # default 2000

Each vhost holds one `sleep`, made through vaddr.spawn() (the API a lab
uses).  Rows: creation per vhost, memory per vhost against a bare `sleep`,
`vaddr ls --json`, `vaddr rm` of half of them in one command, and `vaddr
reset` of the rest, each against the goal it is measured for (issue 12).
Addresses come from 127.77.0.0/16 and up: loopback, local without routes,
so nothing leaves the machine.  Not a pass/fail test."""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vaddr  # noqa: E402
from vaddr import runtime  # noqa: E402

VADDR = os.path.join(os.path.dirname(sys.executable), "vaddr")


def address(i):
    return f"127.{77 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def _rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def _timed(argv):
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()}")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, nargs="?", default=2000, help="how many vhosts (default 2000)")
    args = ap.parse_args()
    runtime.require_root()
    if vaddr.list_vhosts():
        sys.exit("vhosts are running: this bench ends with vaddr reset, so start it on an idle machine")
    n = args.n
    print(f"vaddr at scale: {n} vhosts on {os.uname().release}, {os.cpu_count()} cores")
    # The baseline: as many bare sleeps (PSS shares their common pages
    # among them, so one alone would not compare).
    bare = [subprocess.Popen(["sleep", "600"]) for _ in range(n)]
    time.sleep(0.2)
    bare_kb = _rss_kb([p.pid for p in bare]) / n
    for p in bare:
        p.kill()
        p.wait()
    vaddr.spawn(["true"], ip=address(n)).wait()  # loads the hooks (a compile, once), not timed

    procs, t = [], time.perf_counter()
    step = max(1, n // 10)
    for i in range(n):
        procs.append(vaddr.spawn(["sleep", "600"], ip=address(i), name=f"s{i}"))
        if (i + 1) % step == 0:
            print(f"  up {i + 1}/{n}", file=sys.stderr, end="\r")
    create_ms = (time.perf_counter() - t) * 1e3 / n
    per_kb = _rss_kb([p.pid for p in procs]) / n
    ls = min(_timed([VADDR, "ls", "--json"]) for _ in range(3))
    half = [f"s{i}" for i in range(n // 2)]
    rm = _timed([VADDR, "rm", "--timeout", "5", *half])
    reset = _timed([VADDR, "reset"])
    for p in procs:
        p.wait()
    left = vaddr.list_vhosts()

    rows = [
        ("vaddr.spawn(), new vhost", f"{create_ms:.2f} ms each", "1.2-1.9 ms measured before (issue 12)"),
        ("memory per vhost (PSS of its sleep)", f"{per_kb:.0f} kB", f"{n} bare sleeps: {bare_kb:.0f} kB each"),
        ("vaddr ls --json", f"{ls:.3f} s", "goal 0.2 s at 10,000; 0.64 s before"),
        (f"vaddr rm of {len(half)} in one command", f"{rm:.2f} s ({rm / len(half) * 1e3:.2f} ms each)",
         "10.5 ms each before bulk removal"),
        (f"vaddr reset of {n - len(half)}", f"{reset:.2f} s", "goal under 10 s for 10,000"),
        ("left after reset", str(len(left)), "0"),
    ]
    widths = [max(len(r[i]) for r in rows + [("measure", "vaddr", "baseline")]) for i in range(3)]
    print()
    for r in [("measure", "vaddr", "baseline"), tuple("-" * w for w in widths)] + rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()

"""How long `vaddr ls` takes on a lab of LD_PRELOAD vhosts, and what finding
their processes costs, against the way it was done before (reading every
process's environment for VADDR_VIP) and against the command's own start-up.

    sudo .venv/bin/python bench/shim_ls.py [--vhosts 200]

Runs in a state folder of its own; each vhost holds one sleeping process."""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUN_DIR = tempfile.mkdtemp(prefix="vaddr-bench-ls-")
os.environ["VADDR_RUN_DIR"] = RUN_DIR  # before vaddr is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vaddr  # noqa: E402
from vaddr.backends import members  # noqa: E402
from vaddr.reset import reset  # noqa: E402

VADDR = os.path.join(os.path.dirname(sys.executable), "vaddr")


def environ_scan(vip):
    """The old membership test: every process's environment, read whole."""
    marker = f"\0VADDR_VIP={vip}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in b"\0" + f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def ms(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vhosts", type=int, default=200)
    args = parser.parse_args()
    n = args.vhosts
    procs = []
    try:
        print(f"starting {n} LD_PRELOAD vhosts ...", file=sys.stderr)
        for i in range(n):
            procs.append(vaddr.spawn(["sleep", "600"], ip=f"198.18.{200 + i // 250}.{i % 250 + 2}", backend="preload"))
        ips = [p.vhost.ip for p in procs]
        listed = vaddr.list_vhosts()
        assert len(listed) == n and all(len(h.pids()) == 1 for h in listed)
        rows = [
            ("vaddr ls (the command, whole)", ms(lambda: subprocess.run([VADDR, "ls"], check=True,
                                                                        stdout=subprocess.DEVNULL), 5)),
            ("vaddr --version (start-up alone)", ms(lambda: subprocess.run([VADDR, "--version"], check=True,
                                                                           stdout=subprocess.DEVNULL), 5)),
            (f"list_vhosts() + pids, {n} vhosts", ms(lambda: [h.pids() for h in vaddr.list_vhosts()], 5)),
            (f"  alive: {n} flock probes", ms(lambda: [members.alive(ip) for ip in ips], 5)),
            ("  pids: one /proc pass, member fds", ms(members.scan, 5)),
            (f"  before: environ scan per vhost, x{n}", ms(lambda: [environ_scan(ip) for ip in ips], 1)),
        ]
        print(f"\nvaddr ls on {n} LD_PRELOAD vhosts ({len(os.listdir('/proc'))} /proc entries), median ms")
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value:8.1f}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        reset()
        shutil.rmtree(RUN_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How long a lab takes to come up and go down, against the shell script a
user wrote before labs existed (a loop of `vaddr spawn ... &`, then polling
until every vhost is listed, then `vaddr reset`).

    sudo .venv/bin/python bench/labs.py [--hosts 50] [--runs 3]

Hosts run `sleep infinity` (ready at once), addresses from 198.19.240.0/20
(local by a lab subnet, as a user would write); a state folder and lab
folder of its own."""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUN_DIR = tempfile.mkdtemp(prefix="vaddr-bench-labs-")
os.environ["VADDR_RUN_DIR"] = RUN_DIR
os.environ["VADDR_LAB_DIR"] = os.path.join(RUN_DIR, "data")
VADDR = os.path.join(os.path.dirname(sys.executable), "vaddr")


def vaddr(*args):
    return subprocess.run([VADDR, *args], capture_output=True, text=True, check=True)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def lab_run(path):
    up = timed(lambda: vaddr("up", "-d", "-f", path))
    down = timed(lambda: vaddr("down", "bench"))
    return up, down


def script_run(n):
    """The pre-lab way: spawn each host in the background, poll ls until all are there, reset."""
    def up():
        procs = [subprocess.Popen([VADDR, "spawn", "--ip", f"198.19.240.{i + 1}" if i < 254 else
                                   f"198.19.{240 + i // 254}.{i % 254 + 1}", "--", "sleep", "infinity"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
        while len(__import__("json").loads(vaddr("ls", "--json").stdout)) < n:
            time.sleep(0.05)
        return procs
    start = time.perf_counter()
    procs = up()
    took_up = time.perf_counter() - start
    took_down = timed(lambda: vaddr("reset"))
    for p in procs:
        p.wait()
    return took_up, took_down


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/labs.py: run as root (the eBPF backend), e.g. sudo .venv/bin/python bench/labs.py")
    folder = tempfile.mkdtemp(prefix="vaddr-bench-labfile-")
    path = os.path.join(folder, "bench.toml")
    with open(path, "w") as f:
        f.write(f'[lab]\nname = "bench"\nsubnet = "198.19.240.0/20"\n[hosts.w]\ncount = {args.hosts}\n'
                f'ip = "198.19.240.1"\ncmd = "sleep infinity"\n')
    vaddr("net", "add", "198.19.240.0/20")  # the script gets the same subnet the lab makes for itself
    try:
        labs = [lab_run(path) for _ in range(args.runs)]
        scripts = [script_run(args.hosts) for _ in range(args.runs)]
    finally:
        subprocess.run([VADDR, "reset"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"\n{args.hosts} hosts, each `sleep infinity` (ready at once); medians of {args.runs} runs\n")
    print(f"| measure | lab (`vaddr up -d` / `vaddr down`) | shell loop of `vaddr spawn &`, poll `ls`, `reset` |")
    print("|---|---|---|")
    print(f"| up, every host running | {med([u for u, _ in labs]):.2f} s | {med([u for u, _ in scripts]):.2f} s |")
    print(f"| down, nothing left | {med([d for _, d in labs]):.2f} s | {med([d for _, d in scripts]):.2f} s |")


if __name__ == "__main__":
    main()

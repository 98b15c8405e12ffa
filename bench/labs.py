"""How long a lab takes to come up and go down, against the same number of
network-namespace nodes built as Mininet and CORE build them (a netns and a
veth pair each, then deleted), and, for small labs, against the shell script
a user wrote before labs existed (a loop of `vaddr spawn ... &`, then polling
until every vhost is listed, then `vaddr reset`).

    sudo .venv/bin/python bench/labs.py [--hosts 1000] [--runs 1]

Hosts run `sleep infinity` (ready at once), addresses from 198.19.240.0/20
(local by a lab subnet, as a user would write); a state folder and lab
folder of its own.  The namespaces' veth ends get one address each inside
their own namespace: nothing is routed from the machine."""
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


def netns_run(n):
    """n nodes as Mininet/CORE make them: a namespace, a veth pair with one
    end inside, an address and the link up; then all deleted."""
    def make(i):
        ns = f"vaddrbench{i}"
        return (f"ip netns add {ns} && ip link add vbh{i} type veth peer name vbn{i} && "
                f"ip link set vbn{i} netns {ns} && ip -n {ns} addr add 198.18.250.2/30 dev vbn{i} && "
                f"ip -n {ns} link set vbn{i} up && ip -n {ns} link set lo up")
    batch = 50  # commands per shell: the figure is ip's and the kernel's, not bash's start

    def up():
        for i in range(0, n, batch):
            subprocess.run(" && ".join(make(j) for j in range(i, min(n, i + batch))), shell=True, check=True)

    def down():
        for i in range(0, n, batch):
            subprocess.run("; ".join(f"ip netns del vaddrbench{j}" for j in range(i, min(n, i + batch))),
                           shell=True, check=True)
    return timed(up), timed(down)


SCRIPT_UP_TO = 200  # hosts: the script starts one vaddr process a host at once (~25 MB each)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1)
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
        vaddr("spawn", "--ip", "127.0.0.9", "--", "true")  # hooks loaded, as on a machine in use
        labs = [lab_run(path) for _ in range(args.runs)]
        scripts = [script_run(args.hosts) for _ in range(args.runs)] if args.hosts <= SCRIPT_UP_TO else None
        netns = [netns_run(args.hosts) for _ in range(args.runs)]
    finally:
        subprocess.run([VADDR, "reset"], capture_output=True)
        subprocess.run("for n in $(ip netns list | grep -o '^vaddrbench[0-9]*'); do ip netns del $n; done",
                       shell=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    script_note = f"not run above {SCRIPT_UP_TO} hosts (a vaddr process a host at once)"
    print(f"\nA lab of {args.hosts} hosts, each `sleep infinity` (ready at once); "
          f"median of {args.runs} run{'s' if args.runs > 1 else ''}\n")
    print("| measure | lab (`vaddr up -d` / `vaddr down`) | netns nodes (Mininet/CORE style) "
          "| shell loop of `vaddr spawn &`, poll `ls`, `reset` | goal |")
    print("|---|---|---|---|---|")
    for i, (what, goal) in enumerate((("up, every host running", "under 5 s"), ("down, nothing left", "under 3 s"))):
        script = f"{med([r[i] for r in scripts]):.2f} s" if scripts else script_note
        print(f"| {what} | {med([r[i] for r in labs]):.2f} s | {med([r[i] for r in netns]):.2f} s | {script} "
              f"| {goal} |")


if __name__ == "__main__":
    main()

"""The delay lines (vaddr/delayline.c, each run as `python -m vaddr.delayd`):
how many, the iptables rules that feed them, starting, stopping, and the
kernel's counters of what their queues dropped.  Kernel plumbing, used by
vaddr.shaping.

One delay line per CPU, up to four: bpf/shape.c puts two bits of a hash of
the link in the packet's mark, and the rules spread the four values over the
queues, so each link has one timeline (for every protocol) in one process."""
import os
import shutil
import subprocess

from vaddr import maps
from vaddr.errors import VaddrError

PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"
_TOOLS = ("iptables-legacy", "ip6tables-legacy", "iptables", "ip6tables")


def count():
    """How many queues to run: CPUs up to four, rounded down to a power of
    two (the mark's two bits divide evenly only so)."""
    n = 1
    while n * 2 <= min(os.cpu_count() or 1, maps.DELAY_QUEUES_MAX):
        n *= 2
    return n


def _iptables():
    """Legacy iptables first: its NFQUEUE target is xt's, which kernels without
    nft's queue expression (like the development VM's) still have."""
    for names in (("iptables-legacy", "ip6tables-legacy"), ("iptables", "ip6tables")):
        found = [shutil.which(n) for n in names]
        if all(found):
            return found
    raise VaddrError("delays and rate limits need iptables (for its NFQUEUE target)", "apt install iptables")


def rule(q, n):
    """Queue q's rule (as `iptables -S` prints it) when n queues run."""
    mask = maps.DELAY_MARK | (n - 1) << maps.QUEUE_SHIFT
    mark = maps.DELAY_MARK | q << maps.QUEUE_SHIFT
    return (f"-A PREROUTING -i lo -m mark --mark {mark:#x}/{mask:#x} -j NFQUEUE "
            f"--queue-num {maps.DELAY_QUEUE + q}")


def _ours(line):
    words = line.split()
    return ("NFQUEUE" in words and "--queue-num" in words and
            0 <= int(words[words.index("--queue-num") + 1]) - maps.DELAY_QUEUE < maps.DELAY_QUEUES_MAX)


def _rules(tool):
    out = subprocess.run([tool, "-w", "-t", "mangle", "-S", "PREROUTING"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if _ours(line)]


def _set_rules(tool, wanted):
    """Make our rules in tool's mangle PREROUTING exactly `wanted`."""
    have = _rules(tool)
    for line in have:
        if line not in wanted:
            subprocess.run([tool, "-w", "-t", "mangle", "-D", *line.split()[1:]], capture_output=True)
    for line in wanted:
        if line not in have:
            done = subprocess.run([tool, "-w", "-t", "mangle", "-I", *line.split()[1:]], capture_output=True,
                                  text=True)
            if done.returncode:  # the next link set adds what is missing; reset removes what is there
                why = (done.stderr.strip().splitlines() or ["no reason given"])[0]
                raise VaddrError(f"{os.path.basename(tool)} refused the delay line's rule: {why}",
                                 "check that the kernel has the xt NFQUEUE target (vaddr doctor)")


def _argv(q):
    """A delay line's command line after the interpreter: what finds it."""
    return ("vaddr.delayd", str(maps.DELAY_QUEUE + q), os.path.join(maps.PIN_DIR, "links"),
            os.path.join(maps.PIN_DIR, "links_gen"))


def _pids(q):
    from vaddr import daemons
    return daemons.pids(*_argv(q)[:2], anywhere=True)


def queue_stats():
    """{queue index: (packets held now, dropped with the queue full, dropped
    with our socket's buffer full)} for our bound queues, from the kernel."""
    out = {}
    try:
        with open(PROC_QUEUES) as f:
            for line in f:
                f_ = line.split()
                q = int(f_[0]) - maps.DELAY_QUEUE
                if 0 <= q < maps.DELAY_QUEUES_MAX:
                    out[q] = (int(f_[2]), int(f_[5]), int(f_[6]))
    except FileNotFoundError:
        pass  # no queue bound since boot
    return out


def ensure():
    """Run one delay line per queue and route marked packets to them, unless
    done.  Caller holds the lock.  The processes outlive this vaddr, like
    the hooks.  Rules are checked every time, not only when a process
    starts: a vaddr killed between the two leaves a queue nothing feeds."""
    tools = _iptables()
    n = count()
    bound = queue_stats()
    for q in range(maps.DELAY_QUEUES_MAX):
        pids = _pids(q)
        if q >= n:
            if pids:
                _stop(q)  # the CPU count changed since they started
        elif len(pids) != 1 or q not in bound:
            _stop(q)  # a stray second one, or one that lost its queue
            _start(q)
    wanted = [rule(q, n) for q in range(n)]
    for tool in tools:
        _set_rules(tool, wanted)


def _start(q):
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", *_argv(q)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, cwd="/")
    deadline = time.monotonic() + 5
    while q not in queue_stats():
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode().strip() if proc.poll() is not None else "it did not bind its queue"
            raise VaddrError(f"the delay line did not start: {err}", "run vaddr doctor")
        time.sleep(0.005)


def _stop(q):
    from vaddr import daemons
    daemons.kill_and_wait(*_argv(q)[:2], anywhere=True)


def stop():
    """Remove the rules, then end the processes (in that order: a rule left
    without its process drops what it matches).  For reset."""
    for name in _TOOLS:
        tool = shutil.which(name)
        if tool:
            _set_rules(tool, [])
    for q in range(maps.DELAY_QUEUES_MAX):
        _stop(q)


def dropped():
    """Packets the delay lines' queues dropped since they started: queue
    full (a burst beyond what they hold) or socket buffer full."""
    return sum(full + sock for _, full, sock in queue_stats().values())


def _kernel_has(option):
    """True or False from the kernel's build configuration, None if it is
    not readable (/proc/config.gz or /boot/config-RELEASE)."""
    import gzip
    release = os.uname().release
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                return any(line.startswith((f"CONFIG_{option}=y", f"CONFIG_{option}=m")) for line in f)
        except OSError:
            continue
    return None


def describe():
    """What the delay line is on this machine, for doctor and the bench."""
    n = count()
    return f"delay line (NFQUEUE): {n} queue{'s' if n > 1 else ''} for {os.cpu_count()} CPUs"

"""vaddr's helper processes (the delay line, the view daemon), found in /proc
by their command line.  Not pidfiles: a vaddr killed between starting the
process and writing the file would leave one nobody could find (and reset
could not stop)."""
import os


def pids(*args):
    """Processes whose command line ends with args (`python -m MODULE ARGS...`)."""
    want = [a if isinstance(a, bytes) else os.fsencode(a) for a in args]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[-len(want) - 1:-1] == want:
                        found.append(int(entry))
            except OSError:
                pass  # gone meanwhile
    return found


def kill_and_wait(*args, timeout=2.0):
    """SIGKILL every process pids(*args) finds; wait until they are gone."""
    import signal
    import time
    victims = pids(*args)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while victims and set(victims) & set(pids(*args)) and time.monotonic() < deadline:
        time.sleep(0.005)

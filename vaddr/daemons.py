"""vaddr's helper processes (the delay line, the view daemon), found in /proc
by their command line.  Not pidfiles: a vaddr killed between starting the
process and writing the file would leave one nobody could find (and reset
could not stop)."""
import os


def pids(*args, anywhere=False):
    """Processes whose command line ends with args (`python -m MODULE ARGS...`),
    or, with anywhere, holds them in a row (whatever follows: an older
    vaddr's process may take fewer arguments)."""
    want = [a if isinstance(a, bytes) else os.fsencode(a) for a in args]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")[:-1]
            except OSError:
                continue  # gone meanwhile
            if argv[-len(want):] == want or anywhere and any(
                    argv[i:i + len(want)] == want for i in range(len(argv) - len(want) + 1)):
                found.append(int(entry))
    return found


def kill_and_wait(*args, timeout=2.0, anywhere=False):
    """SIGKILL every process pids(*args) finds; wait until they are gone."""
    import signal
    import time
    victims = pids(*args, anywhere=anywhere)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while victims and set(victims) & set(pids(*args, anywhere=anywhere)) and time.monotonic() < deadline:
        time.sleep(0.005)

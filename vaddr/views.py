"""Each vhost's own interface view (getifaddrs, `hostname -I`, `ip addr`,
Go's net.Interfaces): the spawn side.  The view daemon (viewd) is started on
first need and serves every vhost; a spawn costs one datagram to it, sent by
the child (view_filter.h)."""
import os

from vaddr import runtime
from vaddr.errors import VaddrError

MODULE = "vaddr.viewd"


def sock_path():
    return os.path.join(runtime.RUN_DIR, "view.sock")


def _status_path():
    return os.path.join(runtime.RUN_DIR, "view")


def request(record):
    """(socket, message, own_unix) for launch, or None when views are off
    here (the reason is kept for doctor).  A vhost made --host-loopback
    shares the machine's abstract Unix socket names, as it shares its
    loopback.  Caller holds the runtime lock."""
    path = sock_path()
    if not os.path.exists(path):
        if status().startswith("off") and not _retry_due():
            return None
        start()
        if not os.path.exists(path):
            return None
    unix = "shared" if record.host_loopback else "own"
    return path, f"{record.cgid} {record.ip4 or '-'} {record.ip6 or '-'} {unix}", not record.host_loopback


_procview = []  # the library's path, found once


def procview_path():
    """vaddr/_procview*.so (preload/procview.c), or None if it is not built."""
    if not _procview:
        here = os.path.dirname(os.path.abspath(__file__))
        built = sorted(n for n in os.listdir(here) if n.startswith("_procview") and n.endswith(".so"))
        _procview.append(os.path.join(here, built[0]) if built else None)
    return _procview[0]


def with_procview(env):
    """env with the library that routes a program's /proc/net opens to its
    view preloaded, after what the caller preloads already."""
    lib = procview_path()
    env = dict(os.environ if env is None else env)
    preloaded = env.get("LD_PRELOAD", "").split()
    if lib and lib not in preloaded:
        env["LD_PRELOAD"] = " ".join(preloaded + [lib])
    return env


def status():
    """"on", "off: reason", or "" before the first vhost."""
    try:
        with open(_status_path()) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


RETRY_AFTER = 60.0  # seconds before a daemon that failed to start is tried again


def _retry_due():
    """A kernel without the feature stays off; a daemon that failed for
    another reason is tried again, but not on every spawn (each try can
    wait seconds)."""
    import time
    if _unsupported():
        return False
    try:
        return time.time() - os.stat(_status_path()).st_mtime > RETRY_AFTER
    except FileNotFoundError:
        return True


def _set_status(text):
    with open(_status_path(), "w") as f:
        f.write(text + "\n")


def daemon_pids():
    """The view daemons serving this state folder."""
    from vaddr import daemons
    return daemons.pids(MODULE, sock_path())


def _unsupported():
    """Why this machine cannot give views, or None."""
    release = os.uname().release.split(".")
    try:
        major, minor = int(release[0]), int(release[1].split("-")[0])
    except (ValueError, IndexError):
        return None
    if (major, minor) < (5, 9):
        return f"needs Linux 5.9+ (seccomp descriptor passing), this is {os.uname().release}"
    return None


def start():
    """Start the daemon; on failure record why (spawns go on without views).
    Caller holds the runtime lock."""
    import subprocess
    import sys
    import time
    why = _unsupported()
    if why:
        _set_status(f"off: {why}")
        return
    stop()
    # Its stderr is a file: a pipe would break when this vaddr exits.
    with open(log_path(), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, sock_path()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd="/")
    deadline = time.monotonic() + 5
    while not os.path.exists(sock_path()):
        if proc.poll() is not None or time.monotonic() > deadline:
            _set_status(f"off: the view daemon did not start: {last_error() or 'no answer'}")
            return
        time.sleep(0.002)
    _set_status("on")


def log_path():
    return os.path.join(runtime.RUN_DIR, "view.log")


def last_error():
    """The daemon's last complaint, for doctor."""
    try:
        with open(log_path()) as f:
            lines = f.read().strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def restart_after(err):
    """After a child could not reach the daemon (errno err): start it again
    if it is gone, else say why the vhost cannot have its view."""
    import errno
    if err in (errno.ECONNREFUSED, errno.ENOENT):
        try:
            os.unlink(sock_path())
        except FileNotFoundError:
            pass
        start()
        return
    give_up(err)


def give_up(err):
    raise VaddrError(f"cannot give the vhost its own interface view: {os.strerror(err)}",
                     "run vaddr doctor; or spawn with --host-interfaces")


def stop():
    """End the daemons (reset).  Their namespaces go with them."""
    from vaddr import daemons
    daemons.kill_and_wait(MODULE, sock_path())
    try:
        os.unlink(sock_path())
    except FileNotFoundError:
        pass

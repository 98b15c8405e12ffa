"""The machine-wide runtime: state folder, the lock that serialises changes,
bpffs, and the one-time loading of the socket hooks."""
import ctypes
import errno
import fcntl
import os
import stat
import sys
import time

from vaddr import maps
from vaddr.errors import VaddrError

def _run_dir():
    """Root's state lives in /run/vaddr; a user's (LD_PRELOAD backend) in
    their runtime folder, so no one needs root to keep a lab."""
    if os.environ.get("VADDR_RUN_DIR"):
        return os.environ["VADDR_RUN_DIR"]
    if os.geteuid() == 0:
        return "/run/vaddr"
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return os.path.join(base, "vaddr")
    return f"/tmp/vaddr-{os.geteuid()}"


RUN_DIR = _run_dir()
BPFFS = "/sys/fs/bpf"
READY_PIN = os.path.join(maps.PIN_DIR, "ready")


def require_root():
    if os.geteuid() != 0:
        raise VaddrError("the eBPF backend needs root (cgroups, BPF and routes)",
                         "run with sudo, or use --backend preload")


class Lock:
    """flock on RUN_DIR/lock: released by the kernel if vaddr dies, so a
    SIGKILL mid-spawn never wedges the next command."""

    def __enter__(self):
        # Owner only: records name every vhost's processes and addresses, and
        # a lock others could open is a lock others could hold.
        # Not followed if it is a link: another user could plant /tmp/vaddr-UID
        # pointing at a folder of ours, and reset would empty that folder.
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        st = os.lstat(RUN_DIR)
        if stat.S_ISLNK(st.st_mode):
            raise VaddrError(f"{RUN_DIR} is a symbolic link: vaddr keeps its state only in a real folder",
                             "remove the link, or set VADDR_RUN_DIR to a folder of your own")
        if st.st_uid != os.geteuid():
            raise VaddrError(f"{RUN_DIR} belongs to another user", f"remove it, or set VADDR_RUN_DIR")
        if st.st_mode & 0o077:
            os.chmod(RUN_DIR, 0o700)
        path = os.path.join(RUN_DIR, "lock")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            _take(self.fd, path)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def lock_timeout():
    raw = os.environ.get("VADDR_LOCK_TIMEOUT", "60")
    try:
        return float(raw)
    except ValueError:
        raise VaddrError(f"VADDR_LOCK_TIMEOUT={raw}: not a number of seconds", "set it like VADDR_LOCK_TIMEOUT=60")


def _take(fd, path):
    """The lock, or after lock_timeout() seconds one line naming who holds
    it.  Polled rather than blocking: a blocking flock can be bounded only by
    SIGALRM, which belongs to the program (pytest-timeout uses it) and works
    in the main thread only.  Holders keep it for milliseconds, so a poll
    that backs off to 10 ms costs little and starves no one in practice."""
    deadline, pause, told = None, 0.001, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if deadline is None:
            started, deadline = now, now + lock_timeout()
        if now >= deadline:
            raise VaddrError(f"{path} was held for {now - started:.1f} s by {lock_holder(fd)}",
                             "wait for that command to finish or stop it; VADDR_LOCK_TIMEOUT=SECONDS waits longer")
        if not told and now - started > 1 and sys.stderr.isatty():
            print(f"vaddr: waiting for {lock_holder(fd)}, which holds {path}", file=sys.stderr)
            told = True
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def lock_holder(fd):
    """'pid N (command)' of the process holding fd's file, from /proc/locks
    (flock locks name the process that took them)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, or another kind of lock
        if fields[5] == inode:
            pid = fields[4]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            return f"pid {pid}" + (f" ({cmd[:80]})" if cmd else "")
    return "another process"


def _is_bpffs(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == path and fields[sep + 1] == "bpf":
                return True
    return False


def ensure_bpffs():
    if _is_bpffs(BPFFS):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise VaddrError(f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}",
                         f"mount -t bpf bpf {BPFFS}")


def ready():
    return os.path.exists(READY_PIN)


def ensure_ready():
    """Load the hooks unless a previous vaddr already did.  Caller holds Lock."""
    if ready():
        return False
    ensure_bpffs()
    if ready():
        return False
    _clear_pins()  # maps from a load that died before its ready marker
    from vaddr import loader
    loader.load_and_attach()
    return True


def _clear_pins():
    try:
        names = os.listdir(maps.PIN_DIR)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(maps.PIN_DIR, name))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

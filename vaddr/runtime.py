"""The machine-wide runtime: state folder, the lock that serialises changes,
bpffs, and the one-time loading of the socket hooks."""
import ctypes
import errno
import fcntl
import os
import stat

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
        self.fd = os.open(os.path.join(RUN_DIR, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


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

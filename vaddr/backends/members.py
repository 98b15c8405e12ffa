"""Which processes belong to an LD_PRELOAD vhost, found by something a
program cannot lose by accident.

Each vhost has a member file, RUN_DIR/members/VIP.  Every process of the
vhost holds it open at one descriptor number (MEMBER_FD, passed to the shim
as VADDR_MEMBER_FD) with a shared flock.  The descriptor is inherited across
fork, exec, setsid and double forks; the environment, the process title and
the program's own bookkeeping play no part.  The shim keeps it open when the
program closes every descriptor (close, close_range, closefrom) or dup2s
onto it, and takes it again after an exec that dropped it.

  alive:  the flock: an exclusive try-lock fails while any member holds it
          (one open and one flock, whatever the number of processes);
  pids:   /proc/PID/fd/MEMBER_FD pointing at the member file, one readlink a
          process, for ls and rm."""
import errno
import fcntl
import os
import resource

from vaddr import runtime

MEMBER_FD = 1000  # high, so programs that dup onto low numbers never meet it


def member_fd():
    """MEMBER_FD, or below it when the descriptor limit is lower (a shell
    that ran `ulimit -n 256`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(MEMBER_FD, soft - 1)


def folder():
    return os.path.join(runtime.RUN_DIR, "members")


def path(vip):
    if not vip or "/" in vip:
        raise ValueError(f"not a vIP: {vip!r}")  # never the folder itself
    return os.path.join(folder(), vip)


def remove(vip):
    try:
        os.unlink(path(vip))
    except FileNotFoundError:
        pass


def hold(vip):
    """A descriptor holding the vhost's shared lock, for a child to inherit
    at member_fd(): the child is a member from its first instruction.  The
    file is made here, at the first launch: until then, as after the last
    process, nobody holds it and the vhost is not alive."""
    os.makedirs(folder(), mode=0o700, exist_ok=True)
    fd = os.open(path(vip), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def alive(vip):
    """Whether any process holds the vhost's lock."""
    try:
        fd = os.open(path(vip), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # closing fd drops the lock we just took
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)


def scan(deep=False):
    """{vip: [pid, ...]} for every member process visible to us, from one
    pass over /proc: one readlink a process, or with deep, of every
    descriptor (for the rare process whose lock the shim had to move).  A
    zombie has no descriptors, so it is not listed."""
    prefix = folder() + "/"
    fds = sorted({str(MEMBER_FD), str(member_fd())})
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if deep:
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except OSError:
                continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue  # none there, gone, or another user's
            if target.startswith(prefix):
                found.setdefault(target[len(prefix):], []).append(int(entry))
                break
    return found


def pids(vip):
    found = scan().get(vip)
    if not found and alive(vip):
        found = scan(deep=True).get(vip)
    return sorted(found or [])

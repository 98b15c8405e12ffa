"""`python -m vaddr.viewd SOCKET`: the daemon that gives each vhost its own
interface view.  Started and stopped by vaddr.views.

Each process tree started in a vhost carries a seccomp filter (see
view_filter.h) whose listener arrives here on SOCKET.  When a process in it
opens a NETLINK_ROUTE socket, the kernel stops that call and we answer with a
netlink socket opened in the vhost's view: a network namespace, made on first
use, with `lo` and an `eth0` that holds the vhost's addresses and default
routes.  No packet ever passes through it; it only answers questions about
interfaces, addresses and routes.  A namespace lives while its vhost has a
process (the listeners hang up when the last one exits).  The same filter
stops the interface ioctls that ask what netlink answers (viewioctl), and
socket(AF_UNIX), answered with a socket made in the view: abstract Unix names
then belong to the vhost, as on a host of its own.  The namespaces and
what the daemon keeps in each are viewspaces.Views."""
import errno
import fcntl
import os
import platform
import select
import socket
import struct
import sys

from vaddr import viewdiag, viewioctl
from vaddr.viewspaces import Views

# <linux/seccomp.h>: _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct
# seccomp_notif_resp), _IOW('!', 3, struct seccomp_notif_addfd).
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_ADDFD = 0x40182103
ADDFD_FLAG_SETFD = 1 << 0  # at the descriptor number we choose
ADDFD_FLAG_SEND = 1 << 1  # 5.14+: add the descriptor and answer the call in one step
NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags; seccomp_data: nr, arch, ip, args[6]
RESP = struct.Struct("=QqiI")  # id, val, error, flags
RESP_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE: the kernel runs the call
NR_IOCTL = {"x86_64": 16, "aarch64": 29}.get(platform.machine())
NR_OPENAT = {"x86_64": 257, "aarch64": 56}.get(platform.machine())
VIEW_OPEN_DIRFD = 0x7FFFFFF0  # view_filter.h: the filter stops openat() with it, and nothing else
PATH_MAX = 4096
ADDFD = struct.Struct("=QIIII")  # id, flags, srcfd, newfd, newfd_flags

# Errors of socket(AF_UNIX, ...) that are the caller's, not the view's: the
# kernel gives the same one when the call goes back to it.
_CALLERS_OWN = {errno.ENOENT, errno.EINVAL, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EPROTOTYPE,
                errno.EAFNOSUPPORT, errno.EMFILE, errno.ENFILE}


def _read_path(pid, address):
    """The NUL-terminated path at address in pid, read a page at a time (the
    next page may not be mapped)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = b""
        while len(out) < PATH_MAX:
            chunk = os.pread(fd, 4096 - (address + len(out)) % 4096, address + len(out))
            if not chunk:
                break
            out += chunk
            if b"\0" in chunk:
                break
        return out.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def _caller_ids(pid):
    """Effective uid and gid of pid, from /proc/PID/status."""
    uid = gid = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[2])
            elif line.startswith("Gid:"):
                gid = int(line.split()[2])
    return uid, gid


def _respond(listener, nid, val=0, error=0, flags=0):
    try:
        fcntl.ioctl(listener, NOTIF_SEND, bytearray(RESP.pack(nid, val, error, flags)))
    except OSError as e:
        if e.errno != errno.ENOENT:  # the caller died meanwhile
            raise


def _hand_over(listener, nid, fd, cloexec, at=None):
    """Give the caller fd as the result of its call; at: at that number."""
    flags = os.O_CLOEXEC if cloexec else 0
    setfd = ADDFD_FLAG_SETFD if at is not None else 0
    try:
        return fcntl.ioctl(listener, NOTIF_ADDFD, bytearray(ADDFD.pack(nid, ADDFD_FLAG_SEND | setfd, fd, at or 0, flags)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno != errno.EINVAL:
            raise
    # Linux 5.9-5.13: add the descriptor, then answer with its number.
    newfd = fcntl.ioctl(listener, NOTIF_ADDFD, bytearray(ADDFD.pack(nid, setfd, fd, at or 0, flags)))
    _respond(listener, nid, val=newfd)
    return newfd


def answer(views, listener, cgid):
    """Serve one stopped call on listener."""
    buf = bytearray(NOTIF.size)
    try:
        fcntl.ioctl(listener, NOTIF_RECV, buf)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINTR):  # the caller died, or was signalled
            return
        raise
    nid, pid, _flags, nr, _arch, _ip, *args = NOTIF.unpack(buf)
    if nr == NR_IOCTL:
        _answer_ioctl(views, listener, cgid, nid, pid, args)
        return
    if nr in viewdiag.CALLS:
        _answer_io(views, listener, cgid, nid, pid, nr, args)
        return
    if nr == NR_OPENAT and args[0] & 0xFFFFFFFF == VIEW_OPEN_DIRFD:
        _answer_open(views, listener, cgid, nid, pid, args)
        return
    family, sock_type, protocol = args[0] & 0xFFFFFFFF, args[1] & 0xFFFFFFFF, args[2] & 0xFFFFFFFF
    diag = family == socket.AF_NETLINK and protocol == viewdiag.NETLINK_SOCK_DIAG
    try:
        ids = _caller_ids(pid) if family != socket.AF_UNIX else None
        fd = views.socket(cgid, family, sock_type, protocol, ids)
    except Exception as e:  # the caller waits for an answer, whatever went wrong
        if family == socket.AF_UNIX:
            # The kernel makes it in the machine's namespace: a socket beats
            # none (only its abstract names are shared), and a call it refuses
            # (a bad type, the caller's descriptor limit) fails there as it would.
            if getattr(e, "errno", None) not in _CALLERS_OWN:
                _note(f"a Unix socket of the vhost with cgroup id {cgid} made in the machine's namespace: {e}")
            _respond(listener, nid, flags=RESP_CONTINUE)
            return
        _note(f"no view for the vhost with cgroup id {cgid}: {e}")
        _respond(listener, nid, error=-(getattr(e, "errno", None) or errno.EIO))
        return
    try:
        at = viewdiag.slot(pid) if diag else None
        if at is not None:
            views.listings.handed(fd, cgid)
        # No free slot: an ordinary diag socket, which shows the machine.
        _hand_over(listener, nid, fd, bool(sock_type & socket.SOCK_CLOEXEC), at)
    except OSError as e:  # e.g. the caller is at its descriptor limit
        _respond(listener, nid, error=-(e.errno or errno.EIO))
    finally:
        os.close(fd)


def _answer_io(views, listener, cgid, nid, pid, nr, args):
    try:
        val, error = views.listings.serve(listener, nid, pid, nr, args)
    except viewioctl.Continue:
        _respond(listener, nid, flags=RESP_CONTINUE)
        return
    except Exception as e:  # the caller died (ENOENT); else the kernel's own answer beats none
        if getattr(e, "errno", None) != errno.ENOENT:
            _note(f"a socket listing of the vhost with cgroup id {cgid}, left to the kernel: {e!r}")
        _respond(listener, nid, flags=RESP_CONTINUE)
        return
    _respond(listener, nid, val=val, error=error)


def _answer_open(views, listener, cgid, nid, pid, args):
    """An open routed here by preload/procview.c: the view's file, else the
    kernel opens the path as asked (its dirfd is ignored: the path is
    absolute, or the open fails as it would have)."""
    fd = None
    try:
        path = _read_path(pid, args[1])
        fcntl.ioctl(listener, viewioctl.NOTIF_ID_VALID, struct.pack("=Q", nid))
        fd = views.proc_net_file(cgid, pid, path)
    except Exception as e:  # the caller died (ENOENT); else the machine's file beats none
        if getattr(e, "errno", None) != errno.ENOENT:
            _note(f"a /proc/net open of the vhost with cgroup id {cgid}, left to the kernel: {e!r}")
    if fd is None:
        _respond(listener, nid, flags=RESP_CONTINUE)
        return
    try:
        _hand_over(listener, nid, fd, bool(args[2] & os.O_CLOEXEC))
    except OSError as e:
        _respond(listener, nid, error=-(e.errno or errno.EIO))
    finally:
        os.close(fd)


def _answer_ioctl(views, listener, cgid, nid, pid, args):
    try:
        val, error = viewioctl.answer(listener, nid, pid, args[0], args[1], args[2], views.ioctl_socket(cgid))
    except viewioctl.Continue:
        _respond(listener, nid, flags=RESP_CONTINUE)
        return
    except OSError as e:  # the caller died (ENOENT), or its view could not be made
        if e.errno != errno.ENOENT:
            _note(f"an interface ioctl of the vhost with cgroup id {cgid}: {e}")
        _respond(listener, nid, error=-(e.errno or errno.EIO))
        return
    _respond(listener, nid, val=val, error=error)


def _note(line):
    try:
        print(f"vaddr viewd: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass


def _raise_fd_limit():
    """One listener per process tree started in a vhost: 10,000 vhosts need
    far more descriptors than the usual soft limit of 1024.  A listener
    lost to the limit would leave its vhost's netlink calls failing."""
    import resource
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for limit in (ceiling, resource.getrlimit(resource.RLIMIT_NOFILE)[1]):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return
        except (OSError, ValueError):
            continue


def _realtime():
    """A program in a vhost waits for this daemon where a host's kernel would
    answer in the caller's own time: a realtime caller (corosync runs
    SCHED_RR at 99) must not wait on a daemon its peers starve.  So the
    daemon runs at the highest realtime priority too; it only ever sleeps
    or answers."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(os.sched_get_priority_max(os.SCHED_RR)))
    except OSError as e:  # no realtime here (a container without CAP_SYS_NICE): answers may wait
        _note(f"realtime priority refused ({e.strerror}): realtime programs in vhosts may wait for answers")


def serve(path):
    _raise_fd_limit()
    _realtime()
    views = Views()
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    # Bound under a temporary name, then renamed: the path exists only once
    # it answers, so a spawn never sends to a socket nobody reads.
    tmp = f"{path}.{os.getpid()}"
    inbox.bind(tmp)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
    mine = os.stat(path).st_ino
    poll = select.epoll()
    poll.register(inbox.fileno(), select.EPOLLIN)
    listeners = {}  # fd -> cgid
    while True:
        for fd, events in poll.poll(60):
            if fd == inbox.fileno():
                msg, fds, flags, _ = socket.recv_fds(inbox, 512, 4)
                if flags & socket.MSG_CTRUNC:
                    _note("a vhost's listener was lost: out of descriptors (its netlink calls will fail)")
                cgid, ip4, ip6, unix = (msg.decode().split() + ["-", "-", "-", "-"])[:4]
                for lfd in fds:
                    os.set_inheritable(lfd, False)
                    listeners[lfd] = int(cgid)
                    views.attach(int(cgid), None if ip4 == "-" else ip4, None if ip6 == "-" else ip6,
                                 own_unix=unix != "shared")
                    poll.register(lfd, select.EPOLLIN)
                continue
            if events & select.EPOLLIN:
                try:
                    answer(views, fd, listeners[fd])
                except Exception as e:  # one vhost's trouble must not end every view (nor its Unix sockets)
                    _note(f"vhost with cgroup id {listeners[fd]}: {e}")
            elif events & (select.EPOLLHUP | select.EPOLLERR):  # its last process exited
                poll.unregister(fd)
                os.close(fd)
                views.detach(listeners.pop(fd))
        try:
            if os.stat(path).st_ino != mine:
                return  # replaced or removed (vaddr reset): a newer daemon serves
        except FileNotFoundError:
            return


if __name__ == "__main__":
    serve(sys.argv[1])

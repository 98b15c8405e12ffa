"""Socket listings in a vhost's view: the system-call side of sockview.

A program in a vhost that opens a NETLINK_SOCK_DIAG socket (`ss`, and
whatever runs it: Galera's state transfer waits until `ss` shows its rsync
listening on the port it chose) gets a real one, placed by the view daemon
at a descriptor from FD_LO to FD_HI.  The seccomp filter stops sends and
receives on those descriptors only (view_filter.h).  A dump request sent
there is answered here: sockview rewrites the kernel's dump as the vhost's
own, and the replies are queued and handed to the program's receives,
copied through /proc/PID/mem as the kernel would have.  Anything else on
those descriptors (other requests, another kind of socket that a program
with many descriptors keeps there) goes back to the kernel unchanged, but
for requests about Unix sockets (`ss -x`): a vhost's Unix sockets are made
in its view's namespace (abstract names are a namespace's), so those are
asked there.

A netlink socket cannot be stood in for by one of user space: the program
binds it, asks its name, and sends to the kernel's port id 0, which only
the kernel holds.  Hence a real socket, and its traffic served here."""
import errno
import fcntl
import os
import platform
import socket
import struct

from vaddr import sockview
from vaddr.viewioctl import NOTIF_ID_VALID, Continue

FD_LO, FD_HI = 1020, 1023  # view_filter.h: VIEW_DIAG_FD_LO, VIEW_DIAG_FD_HI
NETLINK_SOCK_DIAG = 4
SENDTO, RECVFROM, SENDMSG, RECVMSG = {"x86_64": (44, 45, 46, 47),
                                      "aarch64": (206, 207, 211, 212)}.get(platform.machine(), (-1,) * 4)
CALLS = (SENDTO, RECVFROM, SENDMSG, RECVMSG)
MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
IOVEC = struct.Struct("=QQ")
SOCKADDR_NL = struct.pack("=HHII", 16, 0, 0, 0)  # AF_NETLINK, from the kernel (port id 0)
MSG_PEEK, MSG_TRUNC = 0x2, 0x20
IOV_MAX = 1024


def _inode(pid, fd):
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return int(link[8:-1]) if link.startswith("socket:[") else None


def _netlink_sockets():
    """{inode: port id} of the machine's netlink sockets."""
    out = {}
    with open("/proc/net/netlink") as f:
        next(f)
        for line in f:
            fields = line.split()
            out[int(fields[9])] = int(fields[2])
    return out


def slot(pid):
    """A free descriptor for a diag socket in pid, under its limit; None if none."""
    limit = FD_HI + 1
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    limit = FD_HI + 1 if soft == "unlimited" else int(soft)
    except OSError:
        return None
    for fd in range(min(FD_HI, limit - 1), FD_LO - 1, -1):
        if not os.path.lexists(f"/proc/{pid}/fd/{fd}"):
            return fd
    return None


class Listings:
    """Diag sockets handed out, and the replies each still has to give."""

    def __init__(self, diag, unix_diag):
        self.diag = diag  # the daemon's own diag socket, in the machine's namespace
        self.unix_diag = unix_diag  # cgid -> a diag socket where its Unix sockets are, or None
        self.ours = {}  # inode -> cgroup id
        self.pending = {}  # inode -> [datagram]

    def handed(self, fd, cgid):
        if len(self.ours) > 256:  # forget sockets that are gone
            alive = _netlink_sockets()
            for inode in [i for i in self.ours if i not in alive]:
                self.ours.pop(inode)
                self.pending.pop(inode, None)
        self.ours[os.fstat(fd).st_ino] = cgid

    def serve(self, listener, nid, pid, nr, args):
        """One stopped send or receive: (value, -errno); raises Continue
        for one the kernel should run."""
        inode = _inode(pid, args[0] & 0xFFFFFFFF)
        if inode not in self.ours:
            raise Continue()
        if nr in (RECVMSG, RECVFROM) and not self.pending.get(inode):
            raise Continue()  # nothing of ours to give: the kernel's, or a wait
        mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(listener, NOTIF_ID_VALID, struct.pack("=Q", nid))
            if nr in (SENDTO, SENDMSG):
                return self._send(mem, inode, nr, args)
            try:
                return self._receive(mem, inode, nr, args)
            except OSError:
                # A buffer we cannot write.  Not the kernel's to run: its
                # socket holds no answer, and the caller would wait forever.
                return 0, -errno.EFAULT
        finally:
            os.close(mem)

    def _send(self, mem, inode, nr, args):
        if nr == SENDTO:
            data = _read(mem, args[1], args[2])
        else:
            data = b"".join(_read(mem, base, size) for base, size in _iovecs(mem, args[1])[0])
        requests = sockview.parse_requests(data)
        home = self.unix_diag(self.ours[inode]) if requests is None and _asks_unix(data) else None
        if requests is None and home is None:
            self.pending.pop(inode, None)
            raise Continue()
        portid = _netlink_sockets().get(inode, 0)
        if home is not None:
            self.pending[inode] = _relay(home, data, portid)
        else:
            self.pending[inode] = sockview.answer(self.diag, self.ours[inode], requests, portid)
        return len(data), 0

    def _receive(self, mem, inode, nr, args):
        queue = self.pending[inode]
        datagram = queue[0]
        if nr == RECVFROM:
            buffers, flags = [(args[1], args[2])], args[3]
        else:
            buffers, header = _iovecs(mem, args[1])
            flags = args[2]
        copied = 0
        for base, size in buffers:
            part = datagram[copied:copied + size]
            if part:
                os.pwrite(mem, part, base)
            copied += len(part)
        truncated = copied < len(datagram)
        if nr == RECVFROM:
            if args[4] and args[5]:
                room = struct.unpack("=I", _read(mem, args[5], 4))[0]
                os.pwrite(mem, SOCKADDR_NL[:room], args[4])
                os.pwrite(mem, struct.pack("=I", len(SOCKADDR_NL)), args[5])
        else:
            name, namelen, iov, iovlen, control, _controllen, _flags = header
            if name:
                os.pwrite(mem, SOCKADDR_NL[:namelen], name)
            out_flags = MSG_TRUNC if truncated else 0
            os.pwrite(mem, MSGHDR.pack(name, len(SOCKADDR_NL) if name else 0, iov, iovlen, control, 0, out_flags),
                      args[1])
        if not flags & MSG_PEEK:
            queue.pop(0)
        return (len(datagram) if flags & MSG_TRUNC else copied), 0


def _asks_unix(data):
    """True when every message in data is a request about Unix sockets."""
    at = 0
    while at + sockview.NLMSG.size < len(data):
        length, kind = sockview.NLMSG.unpack_from(data, at)[:2]
        if length <= sockview.NLMSG.size or at + length > len(data):
            return False
        if kind != sockview.SOCK_DIAG_BY_FAMILY or data[at + sockview.NLMSG.size] != socket.AF_UNIX:
            return False
        at += (length + 3) & ~3
    return at > 0


def _relay(diag, data, portid):
    """The kernel's answers to data, asked where the vhost's Unix sockets
    are (its view), addressed to the caller's port id as the kernel would
    have.  A dump goes on as its replies are read, so read until none is
    left."""
    replies = []
    _drain(diag)  # what a caller that died mid-dump left
    diag.send(data)
    while True:
        try:
            reply = bytearray(diag.recv(1 << 16, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return replies
        at = 0
        while at + sockview.NLMSG.size <= len(reply):
            length = sockview.NLMSG.unpack_from(reply, at)[0]
            struct.pack_into("=I", reply, at + 12, portid)
            at += max((length + 3) & ~3, sockview.NLMSG.size)
        replies.append(bytes(reply))


def _drain(diag):
    try:
        while diag.recv(1 << 16, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        pass


def _read(mem, address, size):
    data = os.pread(mem, size, address) if size else b""
    if len(data) != size:
        raise OSError(errno.EFAULT, "unreadable buffer")
    return data


def _iovecs(mem, msghdr):
    header = MSGHDR.unpack(_read(mem, msghdr, MSGHDR.size))
    count = header[3]
    if count > IOV_MAX:
        raise OSError(errno.EMSGSIZE, "too many buffers")
    raw = _read(mem, header[2], IOVEC.size * count)
    return [IOVEC.unpack_from(raw, i * IOVEC.size) for i in range(count)], header

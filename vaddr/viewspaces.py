"""The view daemon's namespaces, one per vhost (cgroup id): made on first
use, kept while the vhost has a process, and the sockets the daemon keeps
in each (interface ioctls, the listing of its Unix sockets).  viewd.py
serves the stopped calls with them."""
import ctypes
import os
import socket

from vaddr import procnet, viewdiag

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class Views:
    """Namespaces by vhost (cgroup id), counted by the listeners that use them."""

    def __init__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.ns = {}  # cgid -> namespace fd
        self.users = {}  # cgid -> listeners
        self.addrs = {}  # cgid -> (ip4, ip6)
        self.ioctl_socks = {}  # cgid -> a socket in the view, for viewioctl
        self.unix_diags = {}  # cgid -> a diag socket in the view, for its Unix sockets' listing
        self.shared_unix = set()  # cgids of vhosts whose Unix sockets are the machine's (--host-loopback)
        self.listings = viewdiag.Listings(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                                        viewdiag.NETLINK_SOCK_DIAG), self.unix_diag)

    def attach(self, cgid, ip4, ip6, own_unix=True):
        self.users[cgid] = self.users.get(cgid, 0) + 1
        self.addrs[cgid] = (ip4, ip6)
        if not own_unix:
            self.shared_unix.add(cgid)

    def detach(self, cgid):
        self.users[cgid] -= 1
        if self.users[cgid] == 0:
            del self.users[cgid], self.addrs[cgid]
            self.shared_unix.discard(cgid)
            for held in (self.ns, self.ioctl_socks):
                fd = held.pop(cgid, None)
                if fd is not None:
                    os.close(fd)
            diag = self.unix_diags.pop(cgid, None)
            if diag is not None:
                diag.close()

    def _enter(self, fd):
        _check(_libc.setns(fd, CLONE_NEWNET))

    def namespace(self, cgid):
        fd = self.ns.get(cgid)
        if fd is not None:
            return fd
        _check(_libc.unshare(CLONE_NEWNET))
        try:  # in the new namespace until the finally: configure it, keep a handle
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            from vaddr import viewns
            try:
                viewns.configure(*self.addrs[cgid])
            except BaseException:
                os.close(fd)
                raise
        finally:
            self._enter(self.home)
        self.ns[cgid] = fd
        return fd

    def socket(self, cgid, family, sock_type, protocol, ids):
        """A socket in the vhost's view (NETLINK_ROUTE, and AF_UNIX: an
        abstract name lives in the namespace its socket was made in); a diag
        socket stays in the machine's namespace, where the sockets are.
        ids: the caller's (uid, gid), which a netlink socket is opened with,
        so it is no more privileged than one the caller opened itself (the
        kernel checks both opener and sender before a change, such as
        RTM_NEWLINK into another namespace).  A Unix socket's privileges are
        those of whoever calls on it, so it skips that (and the 27 us of
        reading them)."""
        diag = family == socket.AF_NETLINK and protocol == viewdiag.NETLINK_SOCK_DIAG
        self._enter(self.home if diag else self.namespace(cgid))
        try:
            if ids:
                os.setegid(ids[1])
                os.seteuid(ids[0])
            try:
                return _check(_libc.socket(family, (sock_type & ~socket.SOCK_CLOEXEC) | socket.SOCK_CLOEXEC, protocol))
            finally:
                if ids:
                    os.seteuid(0)
                    os.setegid(0)
        finally:
            self._enter(self.home)

    def ioctl_socket(self, cgid):
        """A datagram socket in the vhost's view: interface ioctls on it
        answer for the view's interfaces."""
        fd = self.ioctl_socks.get(cgid)
        if fd is None:
            self._enter(self.namespace(cgid))
            try:
                fd = _check(_libc.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0))
            finally:
                self._enter(self.home)
            self.ioctl_socks[cgid] = fd
        return fd

    def unix_diag(self, cgid):
        """A diag socket in the vhost's view, where its Unix sockets live
        (they list there as on a host of its own); None for a vhost whose
        Unix sockets are the machine's."""
        if cgid in self.shared_unix:
            return None
        diag = self.unix_diags.get(cgid)
        if diag is None:
            self._enter(self.namespace(cgid))
            try:
                diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                     viewdiag.NETLINK_SOCK_DIAG)
            finally:
                self._enter(self.home)
            self.unix_diags[cgid] = diag
        return diag

    def proc_net_file(self, cgid, pid, path):
        """A descriptor of the vhost's own /proc/net file that path opens,
        or None for a path the view does not serve."""
        named = procnet.served(path)
        if named is None or (named[1] is not None and named[1] != _tgid(pid)):
            return None
        name = named[0]
        if name in procnet.FROM_VIEW:
            self._enter(self.namespace(cgid))
            try:  # bound to the view's namespace for as long as it is open
                return os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                self._enter(self.home)
        text = procnet.table(self.listings.diag, cgid, name).encode()
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:  # the daemon lives on: a failed write must not keep the file
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _tgid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    return None

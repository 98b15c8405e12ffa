"""Interface ioctls in a vhost's view: SIOCGIFCONF and the per-interface
SIOCGIF* queries, which predate netlink and are still how `ifconfig`,
busybox, glibc's if_nametoindex and Java's NetworkInterface ask.

The seccomp filter (view_filter.h) stops exactly these requests; viewd
answers each against a socket that lives in the vhost's view namespace,
copying the caller's struct in and the answer out through /proc/PID/mem, as
the kernel would have.  Calls on a descriptor that is no socket go back to
the kernel (which refuses them, ENOTTY, as on any host)."""
import ctypes
import errno
import fcntl
import os
import struct

SIOCGIFCONF = 0x8912
# The per-interface queries: a struct ifreq in, the same struct out.
IFREQ_GETS = (
    0x8910,  # SIOCGIFNAME: if_indextoname
    0x8913,  # SIOCGIFFLAGS
    0x8915,  # SIOCGIFADDR
    0x8917,  # SIOCGIFDSTADDR
    0x8919,  # SIOCGIFBRDADDR
    0x891B,  # SIOCGIFNETMASK
    0x891D,  # SIOCGIFMETRIC
    0x8921,  # SIOCGIFMTU
    0x8927,  # SIOCGIFHWADDR
    0x8933,  # SIOCGIFINDEX: if_nametoindex
    0x8942,  # SIOCGIFTXQLEN
)
REQUESTS = (SIOCGIFCONF,) + IFREQ_GETS  # view_filter.h stops the same list
IFREQ_SIZE = 40  # IFNAMSIZ + the largest member of its union, on 64-bit ABIs
IFCONF = struct.Struct("=i4xQ")  # int ifc_len; char *ifc_buf
IFCONF_MAX = 1 << 20

NOTIF_ID_VALID = 0x40082102  # SECCOMP_IOCTL_NOTIF_ID_VALID: _IOW('!', 2, __u64)


class Continue(Exception):
    """The call is none of ours: the kernel runs it as it was made."""


def _is_socket(pid, fd):
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    except OSError:
        return False


def _ifreq(mem, argp, request, sock):
    raw = os.pread(mem, IFREQ_SIZE, argp)
    if len(raw) != IFREQ_SIZE:
        raise OSError(errno.EFAULT, "short ifreq")
    os.pwrite(mem, fcntl.ioctl(sock, request, raw), argp)


def _ifconf(mem, argp, sock):
    raw = os.pread(mem, IFCONF.size, argp)
    if len(raw) != IFCONF.size:
        raise OSError(errno.EFAULT, "short ifconf")
    length, buf = IFCONF.unpack(raw)
    if buf == 0:  # asking how much room the list needs
        out = fcntl.ioctl(sock, SIOCGIFCONF, IFCONF.pack(0, 0))
        os.pwrite(mem, IFCONF.pack(IFCONF.unpack(out)[0], 0), argp)
        return
    room = ctypes.create_string_buffer(max(0, min(length, IFCONF_MAX)))
    out = fcntl.ioctl(sock, SIOCGIFCONF, IFCONF.pack(len(room), ctypes.addressof(room)))
    used = IFCONF.unpack(out)[0]
    if used:
        os.pwrite(mem, room.raw[:used], buf)
    os.pwrite(mem, IFCONF.pack(used, buf), argp)


def answer(listener, nid, pid, fd, request, argp, sock):
    """Serve one stopped ioctl: (0, 0) when answered, or (0, -errno);
    raises Continue for a call the kernel should run."""
    request &= 0xFFFFFFFF
    if request not in REQUESTS or not _is_socket(pid, fd & 0xFFFFFFFF):
        raise Continue()
    mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        # The pid was the caller's when the call stopped; is it still?
        fcntl.ioctl(listener, NOTIF_ID_VALID, struct.pack("=Q", nid))
        try:
            if request == SIOCGIFCONF:
                _ifconf(mem, argp, sock)
            else:
                _ifreq(mem, argp, request, sock)
        except OSError as e:
            return 0, -(e.errno or errno.EIO)
        return 0, 0
    finally:
        os.close(mem)

"""The bpf() system call through ctypes, for the few map operations that the
hot path needs: opening a pinned map and updating, reading and deleting keys.
Importing bcc for this would cost ~50 ms per spawn; libbpf may be absent."""
import ctypes
import errno
import os

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}.get(
    os.uname().machine, 321)

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_ANY = 0
BPF_NOEXIST = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32)]


def _bpf(cmd, attr):
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def obj_get(path):
    """Open a pinned BPF object; returns an fd the caller closes."""
    raw = os.fsencode(path) + b"\0"
    buf = ctypes.create_string_buffer(raw)
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(buf)))


def _addr(obj):
    return ctypes.addressof(obj) if obj is not None else 0


def update(fd, key, value, flags=BPF_ANY):
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags))


def lookup(fd, key, value):
    """Fill `value` for `key`; False when the key is absent."""
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def delete(fd, key):
    """Delete `key`; False when it was absent."""
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key)))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def keys(fd, key_type):
    """Every key of a map, as instances of key_type."""
    out = []
    prev = None
    while True:
        nxt = key_type()
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, _MapElemAttr(map_fd=fd, key=_addr(prev), value=_addr(nxt)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out
            raise
        out.append(nxt)
        prev = nxt


BPF_OBJ_PIN = 6
BPF_LINK_CREATE = 28


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("_rest", ctypes.c_uint64 * 6)]


def link_create(prog_fd, target_fd, attach_type):
    """A BPF link attaching a program to a target (a netns for sk_lookup)."""
    return _bpf(BPF_LINK_CREATE, _LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type))


def obj_pin(fd, path):
    raw = ctypes.create_string_buffer(os.fsencode(path) + b"\0")
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(raw), bpf_fd=fd))


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32)]


def probe():
    """Can this process use bpf()?  Creates and closes a one-entry array map."""
    BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2
    os.close(_bpf(BPF_MAP_CREATE, _MapCreateAttr(BPF_MAP_TYPE_ARRAY, 4, 4, 1)))

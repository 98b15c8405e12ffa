"""Starting a program inside a vhost's cgroup.

First choice: the _launch library built from launch.c, clone3(CLONE_INTO_CGROUP), so the child
is born in the cgroup and nothing migrates.  Fallback, where the library is not
built or the kernel predates 5.7: posix_spawn of a /bin/sh trampoline that
moves itself into the cgroup, then execs (one migration, 5-25 ms)."""
import ctypes
import errno
import _signal as signal  # signal's enums cost ms per spawn
import os

from vaddr.errors import VaddrError

# Moves itself into the cgroup, then execs; the command runs nothing before the move.
_TRAMPOLINE = 'echo 0 > "$0" || exit 125; exec "$@"'
_lib = False


VIEW_FAILED = 0x40000000  # view_filter.h: the errno came from setting up the interface view


class _View(ctypes.Structure):
    _fields_ = [("sock_path", ctypes.c_char_p), ("message", ctypes.c_char_p), ("own_unix", ctypes.c_int)]


class ViewUnavailable(Exception):
    """The child could not hand its interface view to the daemon (errno in args[0])."""


class _Ids(ctypes.Structure):
    _fields_ = [("uid", ctypes.c_int), ("gid", ctypes.c_int), ("ngroups", ctypes.c_int),
                ("groups", ctypes.POINTER(ctypes.c_uint))]


def _library():
    global _lib
    if _lib is False:
        here = os.path.dirname(os.path.abspath(__file__))
        built = [n for n in os.listdir(here) if n.startswith("_launch") and n.endswith(".so")]
        try:
            _lib = ctypes.CDLL(os.path.join(here, built[0]))
            _lib.vaddr_launch.restype = ctypes.c_long
        except (IndexError, OSError):
            _lib = None
    return _lib


def _cstrings(items):
    arr = (ctypes.c_char_p * (len(items) + 1))()
    arr[:-1] = [os.fsencode(s) for s in items]
    return arr


def launch(cgroup_path, path, argv, env, dups=(), user=None, view=None):
    """pid of argv (path resolved) running in the cgroup, stdio per dups [(fd, target)].
    view: (daemon socket, message, own_unix) to give the process tree the
    vhost's own interface view, and with own_unix its own abstract Unix
    socket names (view_filter.h); raises ViewUnavailable if that failed."""
    env = os.environ if env is None else env
    lib = _library()
    if lib is not None:
        pid = _clone_into(lib, cgroup_path, path, argv, env, dups, user, view)
        if pid is not None:
            return pid
    return _trampoline(cgroup_path, path, argv, env, dups, user)


def _clone_into(lib, cgroup_path, path, argv, env, dups, user, view):
    ids = _Ids(-1, -1, -1, None)
    if user is not None:
        groups = os.getgrouplist(user.name, user.gid)
        ids = _Ids(user.uid, user.gid, len(groups), (ctypes.c_uint * len(groups))(*groups))
    flat = [n for pair in dups for n in pair]
    failed = ctypes.c_int(0)
    try:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise VaddrError(f"the vhost's cgroup is gone: {e.strerror}", "retry; see vaddr ls") from None
    view_arg = _View(os.fsencode(view[0]), os.fsencode(view[1]), view[2]) if view else None
    try:
        pid = lib.vaddr_launch(fd, os.fsencode(path), _cstrings(argv),
                               _cstrings([f"{k}={v}" for k, v in env.items()]),
                               (ctypes.c_int * max(1, len(flat)))(*flat), len(dups),
                               ctypes.byref(ids), ctypes.byref(view_arg) if view_arg is not None else None,
                               ctypes.byref(failed))
    finally:
        os.close(fd)
    if pid >= 0:
        return pid
    err = -pid
    if failed.value and err & VIEW_FAILED:
        raise ViewUnavailable(err & ~VIEW_FAILED)
    if failed.value:
        code = 127 if err == errno.ENOENT else 126
        raise VaddrError(f"cannot run {path}: {os.strerror(err)}", "check the program and its permissions",
                         exit_code=code)
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.E2BIG):
        return None  # no clone3 or CLONE_INTO_CGROUP here (or seccomp): fall back
    raise VaddrError(f"cannot start a process: {os.strerror(err)}", "see vaddr doctor")


def _trampoline(cgroup_path, path, argv, env, dups, user):
    procs = os.path.join(cgroup_path, "cgroup.procs")
    if user is not None:
        # setpriv (util-linux) drops privileges after the move, which needs root.
        argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", path, *argv[1:]]
        path = "setpriv"
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in dups]
    # No signal blocked and SIGPIPE at its default, whatever the Python caller had.
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", _TRAMPOLINE, procs, path, *argv[1:]], env,
                         file_actions=actions, setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    # Populated before the caller releases the lock, so no clean-up takes the
    # vhost from under a child that has not moved itself in yet.
    try:
        with open(procs, "w") as f:
            f.write(str(pid))
    except OSError:
        pass  # already gone; the trampoline's own move decides
    return pid

"""What separates lab hosts beyond their addresses, under the eBPF backend
(root): a UTS namespace, so `hostname` inside says the host's name, and a
mount namespace for `private` folders.  Only these two are separated: the
network stays the machine's, as with every vhost.

The command runs through util-linux's unshare and a few lines of sh (about
3 ms): hostname and bind mounts are set as root, then privileges are dropped
with setpriv when the host has a `user`.  Later commands in the host
(`vaddr exec`, `vaddr shell`, Host.run) enter the same namespaces with
nsenter, found through a pid recorded per host."""
import os

from vaddr import runtime

_SETUP = r'''
h=$1; n=$2; cd_to=$3; shift 3
printf %s "$h" > /proc/sys/kernel/hostname || exit 125
while [ "$n" -gt 0 ]; do mount --bind "$1" "$2" || exit 125; shift 2; n=$((n-1)); done
cd "$cd_to" || exit 125
exec "$@"
'''
_CD = 'cd "$0" || exit 125; exec "$@"'


def available(backend):
    return backend == "ebpf" and os.geteuid() == 0


def start_argv(argv, hostname, binds, cwd, user):
    """argv that starts a host's command in new UTS and mount namespaces."""
    flat = [p for pair in binds for p in pair]
    tail = list(argv)
    if user is not None:
        tail = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *tail]
    return ["unshare", "--uts", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _SETUP, "sh",
            hostname, str(len(binds)), cwd, *flat, *tail]


def cd_argv(argv, cwd):
    """argv that runs in cwd (posix_spawn has no chdir on every Python we support)."""
    return ["/bin/sh", "-c", _CD, cwd, *argv]


def _ns_dir():
    return os.path.join(runtime.RUN_DIR, "hostns")


def record(name, pid):
    os.makedirs(_ns_dir(), exist_ok=True)
    with open(os.path.join(_ns_dir(), name), "w") as f:
        f.write(str(pid))


def forget(name):
    try:
        os.unlink(os.path.join(_ns_dir(), name))
    except FileNotFoundError:
        pass


def holder(name):
    """A live pid in the host's namespaces, or None (no namespaces, or the
    process that held them is gone)."""
    try:
        with open(os.path.join(_ns_dir(), name)) as f:
            pid = int(f.read())
        if os.readlink(f"/proc/{pid}/ns/uts") != os.readlink("/proc/self/ns/uts"):
            return pid
    except (OSError, ValueError):
        pass
    return None


def enter_argv(name, argv, user=None):
    """argv that runs inside the host's namespaces, if it has any; with the
    user applied after entering (nsenter needs root)."""
    pid = holder(name)
    if pid is None:
        return list(argv), user
    tail = list(argv)
    if user is not None:
        tail = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *tail]
    return ["nsenter", "-t", str(pid), "-u", "-m", "--", *tail], None

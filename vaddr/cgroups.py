"""cgroup v2: where it is mounted, vaddr's parent cgroup, and one cgroup per vhost."""
import errno
import os

from vaddr import smallfile
from vaddr.errors import VaddrError

PARENT = "vaddr"
VHOST_PREFIX = "vh-"

_mount = None


def mount_point():
    """The cgroup2 mount: /sys/fs/cgroup on pure v2 systems, .../unified on hybrid ones."""
    global _mount
    if _mount is None:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[sep + 1] == "cgroup2":
                    _mount = fields[4]
                    break
        if _mount is None:
            raise VaddrError("no cgroup v2 is mounted",
                             "mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with systemd.unified_cgroup_hierarchy=1")
    return _mount


def parent_path():
    return os.path.join(mount_point(), PARENT)


def vhost_path(name):
    return os.path.join(parent_path(), VHOST_PREFIX + name)


def ensure_parent():
    try:
        os.mkdir(parent_path())
    except FileExistsError:
        pass
    return parent_path()


def cgroup_id(path):
    """The id bpf_get_current_cgroup_id() returns: the directory's inode number."""
    return os.stat(path).st_ino


def create(name):
    path = vhost_path(name)
    os.mkdir(path)
    return path


def move(path, pid=0):
    """Move a process (0: the caller) into the cgroup."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def _gone(err):
    """A cgroup removed under us: ENOENT for its path, ENODEV (kernfs) for a
    file of it opened while it was being removed."""
    if err.errno not in (errno.ENOENT, errno.ENODEV):
        raise err


def nothing_nested():
    """True when no vhost's cgroup has one below it: the parent's descendants
    are exactly its subdirectories.  One check for `ls`, rather than a stat a
    vhost (10,000: 30 ms).  Read twice around, so a vhost made meanwhile
    cannot make the counts agree by chance."""
    parent = parent_path()
    try:
        before = os.stat(parent).st_nlink
        text = smallfile.read(parent + "/cgroup.stat").decode()
        after = os.stat(parent).st_nlink
    except OSError:
        return False
    count = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("nr_descendants ")), -1)
    return before == after and count == before - 2


def vhosts_pids(names):
    """{name: pids} of many vhosts' cgroups (ls): opened relative to the
    parent, a shorter path walk each (10,000: 75 ms rather than 90), and one
    look for cgroups nested below any of them."""
    if len(names) < 50 or not nothing_nested():
        return {n: pids(vhost_path(n)) for n in names}
    out = {}
    parent = os.open(parent_path(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n in names:
            try:
                fd = os.open(f"{VHOST_PREFIX}{n}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=parent)
            except OSError as err:
                _gone(err)
                out[n] = []
                continue
            try:
                chunks = [os.read(fd, 65536)]
                while len(chunks[-1]) == 65536:
                    chunks.append(os.read(fd, 65536))
                out[n] = sorted(int(p) for p in b"".join(chunks).split())
            except OSError as err:
                _gone(err)
                out[n] = []
            finally:
                os.close(fd)
    finally:
        os.close(parent)
    return out


def pids(path):
    """Every process in the cgroup and in cgroups a root process made below it.
    A cgroup directory's link count is 2 + its subdirectories (kernfs), so
    one stat tells whether there is anything below to walk: `ls` does this
    for every vhost, and a walk of ~30 files each cost 10,000 vhosts 0.4 s."""
    try:
        found = [int(p) for p in smallfile.read(path + "/cgroup.procs").split()]
        below = os.stat(path).st_nlink != 2
    except OSError as err:
        _gone(err)  # removed meanwhile
        return []
    if below:
        for top, _, _ in os.walk(path):
            if top == path:
                continue
            try:
                with open(os.path.join(top, "cgroup.procs")) as f:
                    found += [int(p) for p in f.read().split()]
            except OSError as err:
                _gone(err)  # removed while we walked
    return sorted(found)


def signal_all(path, sig):
    for pid in pids(path):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def freeze(path, frozen):
    """cgroup.freeze (5.2+): every process stops where it is, uncatchably and
    unseen by its parent, and no fork escapes; else SIGSTOP/SIGCONT."""
    try:
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1" if frozen else "0")
    except OSError as err:
        _gone(err)
        signal_all(path, 19 if frozen else 18)  # SIGSTOP / SIGCONT


def populated(path):
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            for line in f:
                if line.startswith("populated "):
                    return line.split()[1] == "1"
    except OSError as err:
        _gone(err)
        return False
    return False


def kill_all(path, reuse=False):
    """cgroup.kill (5.14+) ends every process at once, descendants' included,
    and no fork escapes it.  reuse: the cgroup will get new processes, so
    SIGKILL each one instead: on 6.18 a child started later with
    clone3(CLONE_INTO_CGROUP) into a cgroup that was once cgroup.kill'ed is
    killed at birth (the kill sequence it samples is its parent cgroup's)."""
    if reuse:
        signal_all(path, 9)
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except OSError as err:
        _gone(err)
        if not os.path.isdir(path):
            return
    signal_all(path, 9)  # SIGKILL; older kernels: per pid, repeated by the caller


def remove(path):
    """rmdir the cgroup and any a root process made below it, deepest first;
    False while processes remain (EBUSY).  Walked only when something is
    below (a cgroup directory's link count is 2 + its subdirectories): a
    walk lists ~30 control files, 2.7 ms a vhost on the development VM."""
    try:
        flat = os.stat(path).st_nlink == 2
    except FileNotFoundError:
        return True
    tops = [path] if flat else [top for top, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/"))]
    for top in tops:
        try:
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            raise
    return True


def vhost_dirs():
    try:
        names = os.listdir(parent_path())
    except OSError as err:
        _gone(err)
        return []
    return [n[len(VHOST_PREFIX):] for n in names if n.startswith(VHOST_PREFIX)]

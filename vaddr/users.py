"""Other users' LD_PRELOAD labs, for root's `ls`, `rm` and `reset` with
--all-users.

Root's commands act on root's state folder only.  Asked for every user's,
root finds their folders and runs vaddr in each *as that user*: the kernel
then lets it signal that user's processes and no one else's, and a folder
whose owner wrote misleading paths into its claim gains nothing from root.

Folders are found where vaddr puts them (/run/user/UID/vaddr,
/tmp/vaddr-UID) and where a user's claim on a real address range names them
(a user with VADDR_RUN_DIR set records it there: backends/preload.py)."""
import glob
import json
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass

from vaddr import runtime
from vaddr.errors import VaddrError


@dataclass(frozen=True)
class User:
    uid: int
    name: str
    run_dir: str


def _candidates():
    for path in glob.glob("/run/user/*/vaddr"):
        yield path
    for path in glob.glob("/tmp/vaddr-*"):
        if path.rsplit("-", 1)[-1].isdigit():
            yield path
    from vaddr.backends import preload
    for path in preload.claim_files():
        try:
            with open(path) as f:
                yield from (line.strip() for line in f.readlines()[1:] if line.startswith("/"))
        except OSError:
            pass


def others():
    """Every other user's state folder that holds vhost records: a real
    folder (not a link) owned by that user."""
    me, found = os.geteuid(), {}
    for path in _candidates():
        path = os.path.normpath(path)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid in (me, 0) or path == os.path.normpath(runtime.RUN_DIR):
            continue
        if not os.path.isdir(os.path.join(path, "vhosts")):
            continue
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = str(st.st_uid)
        found[path] = User(st.st_uid, name, path)
    return sorted(found.values(), key=lambda u: (u.name, u.run_dir))


def recorded(user):
    """How many vhost records a user's folder holds (root's ls mentions them
    without running anything as the user)."""
    try:
        return len(os.listdir(os.path.join(user.run_dir, "vhosts")))
    except OSError:
        return 0


def require_root():
    if os.geteuid() != 0:
        raise VaddrError("--all-users needs root: a user acts on their own vhosts only",
                         "run it with sudo, or leave out --all-users")


def run_as(user, *args, timeout=120):
    """This vaddr's CLI as `user` on their folder: their uid, gid and groups,
    a clean environment."""
    entry = pwd.getpwuid(user.uid) if user.name != str(user.uid) else None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "VADDR_RUN_DIR": user.run_dir,
           "HOME": entry.pw_dir if entry else "/", "USER": user.name, "LOGNAME": user.name}
    if os.path.isdir(f"/run/user/{user.uid}"):
        env["XDG_RUNTIME_DIR"] = f"/run/user/{user.uid}"
    gid = entry.pw_gid if entry else user.uid
    groups = os.getgrouplist(entry.pw_name, gid) if entry else []
    return subprocess.run([sys.executable, "-m", "vaddr.entry", *args], env=env, user=user.uid, group=gid,
                          extra_groups=groups, capture_output=True, text=True, timeout=timeout, cwd="/")


def _checked(user, proc, what):
    if proc.returncode:
        line = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise VaddrError(f"{what} as {user.name} ({user.run_dir}) failed: {line}",
                         f"run it as that user: sudo -u {user.name} VADDR_RUN_DIR={user.run_dir} vaddr ...")
    return proc.stdout


def list_vhosts(user):
    """A user's vhosts, as `vaddr ls --json` gives them."""
    return json.loads(_checked(user, run_as(user, "ls", "--json"), "vaddr ls"))


def owner_of(target):
    """The one other user whose lab holds a vhost named or addressed target,
    or None."""
    holders = [u for u in others()
               if any(target in (h["name"], h["ip4"], h["ip6"]) for h in list_vhosts(u))]
    if len(holders) > 1:
        raise VaddrError(f"{target} names vhosts of {', '.join(u.name for u in holders)}",
                         f"remove it as its user: sudo -u {holders[0].name} vaddr rm {target}")
    return holders[0] if holders else None


def remove(user, target, timeout):
    """`vaddr rm` as the user; its output line."""
    return _checked(user, run_as(user, "rm", target, "--timeout", str(timeout), timeout=timeout + 60),
                    "vaddr rm").strip()


def reset(user):
    """`vaddr reset --json` as the user; the counts it removed."""
    return json.loads(_checked(user, run_as(user, "reset", "--json"), "vaddr reset"))

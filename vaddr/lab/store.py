"""Where a lab lives on disk.

- RUN_DIR/labs/NAME/state.json: the spec and each host's state, rewritten on
  every change by the process that runs the lab (its owner), so `vaddr
  status` and `vaddr down` work from any shell, and after the owner died.
- RUN_DIR/labs/NAME/control: the owner's socket, for commands that need the
  parent of the hosts' processes (start, restart) or should be seen by it.
- The work folders (one per host: {dir}, output.log, private folders):
  [lab] workdir, else $VADDR_LAB_DIR/NAME, else /var/lib/vaddr/labs/NAME for
  root and ~/.local/state/vaddr/labs/NAME for a user.  Not under RUN_DIR:
  that folder is root's alone (0700), and a host with a `user` must reach
  its own folder."""
import json
import os

from vaddr import runtime
from vaddr.errors import VaddrError


def labs_dir():
    return os.path.join(runtime.RUN_DIR, "labs")


def lab_dir(name):
    return os.path.join(labs_dir(), name)


def state_path(name):
    return os.path.join(lab_dir(name), "state.json")


def control_path(name):
    return os.path.join(lab_dir(name), "control")


def default_root(name, workdir=None, base=None):
    if workdir:
        return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(workdir)))
    if os.environ.get("VADDR_LAB_DIR"):
        return os.path.join(os.environ["VADDR_LAB_DIR"], name)
    if os.geteuid() == 0:
        return os.path.join("/var/lib/vaddr/labs", name)
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "vaddr", "labs", name)


def save(name, state):
    os.makedirs(lab_dir(name), mode=0o755, exist_ok=True)
    tmp = state_path(name) + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path(name))


def load(name):
    try:
        with open(state_path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # being replaced: the next read sees the new one


def names():
    try:
        return sorted(n for n in os.listdir(labs_dir()) if os.path.exists(state_path(n)))
    except FileNotFoundError:
        return []


def forget(name):
    import shutil
    shutil.rmtree(lab_dir(name), ignore_errors=True)


def owner_alive(state):
    """Whether the process that runs the lab is still there (and is that process)."""
    pid, started = state.get("owner"), state.get("owner_start")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        # A zombie has ended; its parent (init, after the double fork) may reap it late.
        return fields[0] != "Z" and fields[19] == str(started)
    except (OSError, IndexError, TypeError):
        return False


def process_start(pid):
    """The start time of pid in clock ticks, which tells a pid's reuse apart."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[19]


def find_host(host):
    """(lab name, state) of the running lab that has a host named host."""
    found = [(n, s) for n in names() for s in [load(n)] if s and any(h["name"] == host for h in s["spec"]["hosts"])]
    if not found:
        running = names()
        raise VaddrError(f"no lab has a host named '{host}'",
                         "see vaddr status" if running else "start a lab with vaddr up")
    if len(found) > 1:
        raise VaddrError(f"host '{host}' is in labs {', '.join(n for n, _ in found)}", "say which with --lab NAME")
    return found[0]


def pick(name=None, path=None):
    """The lab a command is about: named, else the one of the lab file, else the only one running."""
    if name and name.endswith(".toml") and os.path.isfile(name):
        name, path = None, name  # vaddr down kv.toml: the lab of that file
    if name:
        if load(name) is None:
            raise VaddrError(f"no lab named '{name}' is up", "see vaddr status, or start it with vaddr up")
        return name
    running = names()
    if path and os.path.exists(path):
        from vaddr.lab import spec
        own = spec.load(path).name
        if own in running:
            return own
        raise VaddrError(f"lab {own} (from {path}) is not up", "start it with vaddr up")
    if len(running) == 1:
        return running[0]
    if not running:
        raise VaddrError("no lab is up", "start one with vaddr up (-f FILE)")
    raise VaddrError(f"{len(running)} labs are up: {', '.join(running)}", "name one, e.g. vaddr down " + running[0])

"""Lab host names that every program on the machine resolves.

As root, each lab owns one clearly marked block of /etc/hosts, which glibc,
Java, and Go's own resolver all read (no resolver daemon to run, nothing to
configure per program).  The file is rewritten whole and swapped in with a
rename, so a reader never sees half a block; where /etc/hosts is a bind mount
(a container), the rename cannot cross it and the file is rewritten in place.

Without root /etc/hosts is out of reach: the LD_PRELOAD shim answers lab
names itself from RUN_DIR/hosts, which is written the same way."""
import os

from vaddr import runtime

ETC_HOSTS = "/etc/hosts"
_BEGIN = "# BEGIN vaddr lab {} (vaddr down or vaddr reset removes this block)"
_END = "# END vaddr lab {}"


def hosts_file():
    """The file that lab names go into for this user."""
    return ETC_HOSTS if os.geteuid() == 0 else shim_hosts_file()


def shim_hosts_file():
    return os.path.join(runtime.RUN_DIR, "hosts")


def _strip(lines, lab):
    """lines without lab's block (every lab's when lab is None)."""
    out, inside = [], False
    for line in lines:
        tag = line.rstrip("\n")
        if tag.startswith("# BEGIN vaddr lab ") and (lab is None or tag.split()[4] == lab):
            inside = True
        elif inside and tag.startswith("# END vaddr lab "):
            inside = False
        elif not inside:
            out.append(line)
    return out


def _rewrite(path, change):
    try:
        with open(path) as f:
            lines = f.readlines()
        st = os.stat(path)
    except FileNotFoundError:
        lines, st = [], None
    new = change(lines)
    if new == lines:
        return
    text = "".join(new)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.vaddr-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        with open(path, "w") as f:  # a bind-mounted /etc/hosts: rename cannot replace it
            f.write(text)


def publish(lab, entries, path=None):
    """Give lab's hosts their names: entries is [(ip, name)].  Replaces the
    lab's previous block."""
    def change(lines):
        kept = _strip(lines, lab)
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        block = [_BEGIN.format(lab) + "\n"] + [f"{ip}\t{name}\n" for ip, name in entries] + [_END.format(lab) + "\n"]
        return kept + block
    with runtime.Lock():
        _rewrite(path or hosts_file(), change)


def withdraw(lab, path=None, locked=False):
    """Remove lab's names (every lab's when lab is None).  locked: the caller
    holds the runtime lock (reset)."""
    path = path or hosts_file()
    if not os.path.exists(path):
        return
    if not locked:
        with runtime.Lock():
            return withdraw(lab, path, locked=True)
    _rewrite(path, lambda lines: _strip(lines, lab))


def labs_named(path=None):
    """Labs that have a block in the file: what a leak check looks for."""
    try:
        with open(path or hosts_file()) as f:
            return [line.split()[4] for line in f if line.startswith("# BEGIN vaddr lab ")]
    except FileNotFoundError:
        return []

"""One small record per vhost under RUN_DIR/vhosts: the facts `ls`, `rm` and
the clean-up need and the kernel does not keep (name, addresses, routes made).

Written before any kernel state is made, so that whatever a killed vaddr
left half-made is named by a record and can be undone.  Plain key=value
lines: json would add ~7 ms of imports to every spawn."""
import os
import time

from vaddr import runtime, smallfile

FIELDS = ("name", "backend", "ip4", "ip6", "cgid", "keep", "created", "routes", "host_loopback", "owner", "command",
          "host_interfaces", "loopback")


class Record:
    __slots__ = FIELDS

    def __init__(self, name, backend="ebpf", ip4="", ip6="", cgid=0, keep=False, created=None, routes=(),
                 host_loopback=False, owner=None, command="", host_interfaces=False, loopback=()):
        self.name = name
        self.backend = backend
        self.ip4 = ip4
        self.ip6 = ip6
        self.cgid = cgid
        self.keep = keep
        self.created = created if created is not None else time.time()
        self.routes = tuple(routes)
        self.host_loopback = host_loopback  # 127.0.0.1 is the machine's, not the vhost's own
        self.owner = os.getuid() if owner is None else owner  # who made it
        self.command = command  # the command line it was made with, for ls
        self.host_interfaces = host_interfaces  # sees the machine's interfaces, not a view of its own
        self.loopback = tuple(loopback)  # the shim's real addresses for its 127.0.0.1 and ::1

    @property
    def ips(self):
        return tuple(ip for ip in (self.ip4, self.ip6) if ip)

    def dump(self):
        return "".join(f"{k}={_encode(getattr(self, k))}\n" for k in FIELDS)

    def to_dict(self):
        return {k: getattr(self, k) for k in FIELDS}


def _encode(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).replace("\n", " ")


def _dir():
    return os.path.join(runtime.RUN_DIR, "vhosts")


def _addr_dir():
    """addrs/IP -> NAME symlinks: finding a vhost by address reads one link,
    not every record (a lab may hold a thousand)."""
    return os.path.join(runtime.RUN_DIR, "addrs")


def path(name):
    return os.path.join(_dir(), name)


def _is_name(name):
    """Could this be a vhost's record?  Names never start with '.' (the CLI
    refuses them), so '.', '..' and our temporary files are never records."""
    return bool(name) and "/" not in name and not name.startswith(".")


def save(record):
    os.makedirs(_dir(), mode=0o700, exist_ok=True)
    # A temporary name no vhost can have: a vhost named "x.tmp" is a vhost.
    tmp = os.path.join(_dir(), f".tmp-{record.name}")
    with open(tmp, "w") as f:
        f.write(record.dump())
    os.replace(tmp, path(record.name))
    os.makedirs(_addr_dir(), mode=0o700, exist_ok=True)
    for ip in record.ips:
        link = os.path.join(_addr_dir(), ip)
        try:
            if os.readlink(link) == record.name:
                continue
            os.unlink(link)  # a discarded vhost's; owners were checked under the lock
        except FileNotFoundError:
            pass
        os.symlink(record.name, link)


def clear_temporaries():
    """Remove half-written records: a vaddr killed inside save() leaves its
    temporary file, which no listing reads.  Caller holds the runtime lock,
    under which every save runs, so any left now is no one's."""
    try:
        names = os.listdir(_dir())
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".tmp-"):
            try:
                os.unlink(os.path.join(_dir(), name))
            except FileNotFoundError:
                pass


def load(name):
    if not _is_name(name):
        return None
    try:
        text = smallfile.read(path(name)).decode()
    except FileNotFoundError:
        return None
    raw = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
    return Record(name=raw["name"], backend=raw.get("backend", "ebpf"), ip4=raw.get("ip4", ""),
                  ip6=raw.get("ip6", ""), cgid=int(raw.get("cgid") or 0), keep=raw.get("keep") == "1",
                  created=float(raw.get("created") or 0),
                  routes=tuple(r for r in raw.get("routes", "").split(",") if r),
                  host_loopback=raw.get("host_loopback") == "1", owner=int(raw["owner"]) if raw.get("owner") else None,
                  command=raw.get("command", ""), host_interfaces=raw.get("host_interfaces") == "1",
                  loopback=tuple(a for a in raw.get("loopback", "").split(",") if a))


def delete(name, record=None):
    """Remove a record and its address links (record: the caller's copy,
    saving a read)."""
    record = record or load(name)
    for ip in record.ips if record else ():
        link = os.path.join(_addr_dir(), ip)
        try:
            if os.readlink(link) == name:
                os.unlink(link)
        except FileNotFoundError:
            pass
    try:
        os.unlink(path(name))
    except FileNotFoundError:
        pass


def names():
    try:
        return sorted(n for n in os.listdir(_dir()) if _is_name(n))
    except FileNotFoundError:
        return []


def all_records():
    """Every record.  With many, from one snapshot file while the folder is
    unchanged (RUN_DIR/vhosts.snapshot): 10,000 records are 10,000 files to
    open, and `ls` reads them all."""
    try:
        st = os.stat(_dir())
    except FileNotFoundError:
        return []
    snap = _read_snapshot(st)
    if snap is not None:
        return snap
    records = [r for r in (load(n) for n in names()) if r]
    if len(records) >= SNAPSHOT_FROM:
        _write_snapshot(st, records)
    return records


SNAPSHOT_FROM = 200  # records: below this, reading them is as quick as the snapshot
# A folder's mtime ticks with the kernel's coarse clock: a change in the same
# tick as the one a snapshot saw would leave the mtime as it was.  So a
# snapshot is only made of a folder whose last change is older than this
# (seconds), as git treats an index written in the same second as its files.
SNAPSHOT_SETTLED = 0.1


def _snapshot_path():
    return os.path.join(runtime.RUN_DIR, "vhosts.snapshot")  # outside vhosts/: writing it changes nothing there


def _stamp(st):
    import sys
    return (sys.version_info[:2], st.st_ino, st.st_mtime_ns, st.st_size)


def _read_snapshot(st):
    import marshal
    try:
        stamp, rows = marshal.loads(smallfile.read(_snapshot_path()))
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if tuple(stamp) != _stamp(st):
        return None
    return [Record(*row) for row in rows]


def _write_snapshot(st, records):
    """Saved only if the folder is as stat()ed before the records were read,
    and settled; a reader checks the stamp again, so a snapshot is never
    trusted after any change to the folder."""
    import marshal
    if time.time() - st.st_mtime_ns / 1e9 < SNAPSHOT_SETTLED:
        return
    rows = [tuple(getattr(r, k) for k in FIELDS) for r in records]
    tmp = f"{_snapshot_path()}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(marshal.dumps((_stamp(st), rows)))
        os.replace(tmp, _snapshot_path())
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def find(key):
    """A record by name or by one of its addresses."""
    if not _is_name(key):
        return None
    rec = load(key)
    if rec:
        return rec
    try:
        return load(os.readlink(os.path.join(_addr_dir(), _canonical(key))))
    except OSError:
        return None


def _canonical(ip):
    from vaddr import addresses
    return addresses.canonical(ip) or ip

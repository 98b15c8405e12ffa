"""The LD_PRELOAD backend: no root, no cgroups, no BPF.

Unprivileged, vaddr cannot make addresses local, so each vIP is mapped to a
distinct real address in 127.0.0.0/8, where every address already is local,
and the shim (preload/) translates both ways so programs only see vIPs.  The
map is one file (RUN_DIR/preload.map, "VIP REAL" lines) that every process of
the lab reads: independently started processes agree without a daemon, and
allocation under the runtime lock keeps two vhosts from sharing a real address.

A vhost's processes are those holding its member file's lock at a fixed
descriptor (members.py): not the environment, which daemons overwrite when
they set their process title.  The shim keeps VADDR_VIP, VADDR_MAP and
VADDR_MEMBER_FD across exec."""
import os
import signal
import socket
import stat

from vaddr import elf, runtime
from vaddr.backends import members
from vaddr.errors import VaddrError

# Where a user claims its 127.X.0.0/16, machine-wide: /tmp's sticky bit lets
# only a claim's owner (or root) remove it, and O_EXCL lets one user make it.
CLAIM_DIR = "/tmp"
FIRST_NET, NETS = 128, 127  # 127.128.0.0 .. 127.254.0.0


def _claim_path(x):
    return os.path.join(CLAIM_DIR, f"vaddr-net-127.{x}")


def _real_net():
    """127.X.0.0/16 for this user: labs of different users on one machine must
    not hand out the same real address, so X is claimed by a file only this
    user can make and remove, tried from the uid on (uids that differ by 127
    once shared one X, and one user's client reached another's server)."""
    uid = os.geteuid()
    for i in range(NETS):
        x = FIRST_NET + (uid + i) % NETS
        path = _claim_path(x)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # its owner just released it: try the next; a retry of this one would race
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                _note_run_dir(path)
                return (127, x)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{uid}\n{os.path.abspath(runtime.RUN_DIR)}\n")
        return (127, x)
    raise VaddrError(f"every loopback range for LD_PRELOAD vhosts is claimed by other users ({_claim_path('*')})",
                     "ask them to run vaddr reset, or run as root with the eBPF backend")


def _note_run_dir(path):
    """The claim also names each state folder of its owner's, so root's
    --all-users finds folders set by VADDR_RUN_DIR (vaddr/users.py)."""
    here = os.path.abspath(runtime.RUN_DIR)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
    except OSError:
        return
    with os.fdopen(fd, "r+") as f:
        if here not in f.read().splitlines():
            f.write(here + "\n")


def claim_files():
    prefix = os.path.basename(_claim_path(""))
    return [os.path.join(CLAIM_DIR, n) for n in os.listdir(CLAIM_DIR) if n.startswith(prefix)]


def release_claims():
    """Give back this user's ranges (vaddr reset): only files this user owns."""
    uid = os.geteuid()
    for x in range(FIRST_NET, FIRST_NET + NETS):
        path = _claim_path(x)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                os.unlink(path)
        except FileNotFoundError:
            pass
ENV_VARS = ("LD_PRELOAD", "VADDR_MAP", "VADDR_VIP", "VADDR_VIP6", "VADDR_MEMBER_FD", "VADDR_LOOPBACK")


def shim_path():
    """vaddr/_preload*.so, built by pip install (or in place by make setup)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in sorted(os.listdir(here)):
        if name.startswith("_preload") and name.endswith(".so"):
            return os.path.join(here, name)
    raise VaddrError("the LD_PRELOAD shim is not built", "run make setup (or pip install .) to build preload/")


def map_path():
    return os.path.join(runtime.RUN_DIR, "preload.map")


LOW_PORT_BASE = 64512  # preload/translate.h


def real_port(port):
    """Where the shim really puts a vIP's port: 1..1023 need privilege, so
    they travel as LOW_PORT_BASE + port (and back: the swap is its own inverse)."""
    if 1 <= port < 1024:
        return port + LOW_PORT_BASE
    if LOW_PORT_BASE < port < LOW_PORT_BASE + 1024:
        return port - LOW_PORT_BASE
    return port


def read_map():
    try:
        with open(map_path()) as f:
            return dict(line.split() for line in f if len(line.split()) == 2)
    except FileNotFoundError:
        return {}


def _write_map(mapping):
    """Replace the map atomically; the shim re-reads it on inode change."""
    tmp = map_path() + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{vip} {real}\n" for vip, real in mapping.items()))
    os.replace(tmp, map_path())


def _allocate(mapping, vip):
    """A real address no vhost holds.  Allocation rotates from a random start
    rather than reusing the lowest free one: a server's TIME_WAIT on an address
    just given back would make the next vhost's bind fail with EADDRINUSE."""
    if vip.startswith("127."):
        return vip  # already a distinct local address
    used = set(mapping.values())
    a, b = _real_net()
    counter = os.path.join(runtime.RUN_DIR, "preload.next")
    try:
        start = int(open(counter).read())
    except (OSError, ValueError):
        start = int.from_bytes(os.urandom(2), "big")
    for step in range(1 << 16):
        n = (start + step) % (1 << 16)
        real = f"{a}.{b}.{n >> 8}.{n & 255}"
        if n & 255 not in (0, 255) and real not in used:
            with open(counter, "w") as f:
                f.write(str(n + 1))
            return real
    raise VaddrError("no free loopback address left for the shim", "vaddr rm some vhosts")


def refuse_unservable(path):
    """A static or Go executable would silently use the host's address."""
    what = elf.kind(path)
    if what in ("static", "go"):
        label = "a static binary" if what == "static" else "a Go program"
        raise VaddrError(f"{path} is {label}: the LD_PRELOAD shim cannot give it an address",
                         "run it with the eBPF backend: sudo vaddr spawn --backend ebpf ...")


def _key(record):
    """A vhost's member file is named for its first address (the shim's
    VADDR_VIP, else VADDR_VIP6)."""
    return record.ip4 or record.ip6


def _loopback_keys(record):
    """The map's names for a vhost's own 127.0.0.1 and ::1, which keep their
    real addresses from other vhosts: lines the shim's map parser skips (not
    an address); the shim reads them from VADDR_LOOPBACK (the record's)."""
    return (f"lo4@{_key(record)}", f"lo6@{_key(record)}")


class PreloadBackend:
    name = "preload"

    def check(self):
        shim_path()

    def prepare(self):
        return False

    def create(self, record, save):
        mapping = read_map()
        for ip in filter(None, (record.ip4, record.ip6)):  # an IPv6 vIP rides a real IPv4 address of its own
            mapping[ip] = _allocate(mapping, ip)
        if not record.host_loopback:  # its own 127.0.0.1 and ::1 (preload/loopback.c)
            for key in _loopback_keys(record):
                mapping[key] = _allocate(mapping, key)
            record.loopback = tuple(mapping[key] for key in _loopback_keys(record))
        record.routes = ()
        save(record)
        os.makedirs(runtime.RUN_DIR, exist_ok=True)
        _write_map(mapping)

    def env_for(self, record, env=None):
        env = dict(os.environ if env is None else env)
        preload = shim_path()
        if preload not in env.get("LD_PRELOAD", "").split():
            env["LD_PRELOAD"] = " ".join(filter(None, [preload, env.get("LD_PRELOAD", "")]))
        env["VADDR_MAP"] = map_path()
        env.pop("VADDR_HOST_INTERFACES", None)  # one vhost's choice, not its children's in another
        for var in ("VADDR_VIP", "VADDR_VIP6", "VADDR_MEMBER_FD"):
            env.pop(var, None)  # a client has no address of its own; a vhost sets what it has
        env.pop("VADDR_LOOPBACK", None)
        if record is not None:
            env.update({k: v for k, v in (("VADDR_VIP", record.ip4), ("VADDR_VIP6", record.ip6)) if v})
            if record.loopback:
                env["VADDR_LOOPBACK"] = " ".join(record.loopback)
            env["VADDR_MEMBER_FD"] = str(members.member_fd())
            if record.host_interfaces:
                env["VADDR_HOST_INTERFACES"] = "1"
        return env

    def launch(self, record, path, argv, env=None, user=None, dups=()):
        refuse_unservable(path)
        if user is not None:
            raise VaddrError("--user needs root, and the LD_PRELOAD backend runs without it",
                             "run vaddr as the user you want")
        member = members.hold(_key(record))
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in dups]
            actions.append((os.POSIX_SPAWN_DUP2, member, members.member_fd()))
            return os.posix_spawn(path, argv, self.env_for(record, env), file_actions=actions,
                                  setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        finally:
            os.close(member)

    def pids(self, record):
        return members.pids(_key(record))

    def listed_pids(self, records):
        shimmed = members.scan()  # once, not once a vhost: 200 vhosts in ~1 ms
        return {r.name: sorted(shimmed.get(_key(r), [])) for r in records}

    def alive(self, record):
        return members.alive(_key(record))

    def signal(self, record, sig):
        for pid in self.pids(record):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, record, reuse=False):
        self.signal(record, signal.SIGKILL)

    def freeze(self, record, frozen):
        """No freezer without cgroups: SIGSTOP, which a process sees (as its
        parent may) but cannot catch."""
        self.signal(record, signal.SIGSTOP if frozen else signal.SIGCONT)

    def answers_on_loopback(self, record, port):
        """Whether the vhost's own 127.0.0.1 (or ::1) has a TCP listener at
        port: its real loopback addresses, tried from the machine."""
        for real in record.loopback:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((real, real_port(port))) == 0:
                    return True
        return False

    def teardown(self, record, maps=None):
        if self.alive(record):
            return False
        mapping = read_map()
        if [mapping.pop(key) for key in (record.ip4, record.ip6, *_loopback_keys(record)) if key in mapping]:
            _write_map(mapping)
        members.remove(_key(record))
        return True

"""The API: vhosts and the processes that run in them.

    import vaddr
    proc = vaddr.spawn(["redis-server"], ip="198.18.0.2")
    ...
    proc.kill(); proc.wait()

Every change to vhosts happens under the runtime lock, so concurrent spawns
(from many shells or threads) see a consistent set of vhosts."""
import _signal as signal  # signal's enums cost ms per spawn
import os
import time

from vaddr import addresses, backends, registry, runtime
from vaddr.errors import VaddrError

PIPE = -1
STDOUT = -2  # stderr=STDOUT: to wherever stdout goes, as in subprocess
DEVNULL = -3
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


class User:
    """A user to run a vhost's command as (--user)."""

    def __init__(self, spec):
        import pwd
        try:
            entry = pwd.getpwuid(int(spec)) if str(spec).isdigit() else pwd.getpwnam(spec)
        except KeyError:
            raise VaddrError(f"no such user '{spec}'", "give a user name or uid from /etc/passwd")
        self.name, self.uid, self.gid = entry.pw_name, entry.pw_uid, entry.pw_gid
        self.home, self.shell = entry.pw_dir, entry.pw_shell or "/bin/sh"

    def can_enter(self, path):
        """Whether this user may work in folder path (search permission on
        it and every folder above it), asked of the kernel as the user."""
        if self.uid == os.geteuid():
            return True
        import subprocess
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                               "test", "-x", path], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0

    def environ(self, env=None):
        """env (default: ours) as `runuser -l` would set it for this user:
        programs find their config and caches under the user's HOME."""
        return dict(os.environ if env is None else env, HOME=self.home, USER=self.name, LOGNAME=self.name,
                    SHELL=self.shell)


def _check_name(name):
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS or name[0] in ".-":
        raise VaddrError(f"'{name}' is not a usable vhost name",
                         "use up to 64 letters, digits, '.', '_', ':' or '-', not starting with '.' or '-'")


def _check_name_is_not_another_address(name, ip4, ip6):
    """A name that parses as an address must be the vhost's own: else `exec
    ADDR` would find the wrong vhost and that address could never be used."""
    as_ip = addresses.canonical(name)
    if as_ip is not None and as_ip not in (ip4, ip6):
        raise VaddrError(f"name '{name}' is an address, not one of this vhost's",
                         "pick a name that is not an address, or leave --name out")


def resolve_command(argv, env=None):
    """The program's path; as a shell would, exit 127 when there is none and
    126 when it cannot be run (a folder, no execute permission)."""
    if not argv:
        raise VaddrError("no command given", "put the command after --, e.g. vaddr spawn --ip 10.0.0.2 -- sh")
    cmd = argv[0]
    if "/" in cmd:
        if os.path.isdir(cmd):
            raise VaddrError(f"{cmd}: is a directory", "name a program to run", exit_code=126)
        if os.path.exists(cmd):
            if os.access(cmd, os.X_OK):
                return cmd
            raise VaddrError(f"{cmd}: Permission denied", f"chmod +x {cmd}, or run it through its interpreter",
                             exit_code=126)
    else:
        for d in (env or os.environ).get("PATH", os.defpath).split(":"):
            path = os.path.join(d or ".", cmd)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    raise VaddrError(f"command not found: {cmd}", "check the name and PATH", exit_code=127)


_USER_NAMES = {}  # uid -> name: each lookup reads /etc/passwd, and ls names 10,000 owners


def _user_name(uid):
    if uid not in _USER_NAMES:
        import pwd
        try:
            _USER_NAMES[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USER_NAMES[uid] = str(uid)
    return _USER_NAMES[uid]


class Vhost:
    """A vhost: a name, one or two addresses, and the processes inside it."""

    def __init__(self, record, pids=None, backend=None):
        self._record = record
        self._backend = backend or backends.get(record.backend)
        self._listed_pids = pids  # seen by list_vhosts in one pass for all

    name = property(lambda self: self._record.name)
    ip4 = property(lambda self: self._record.ip4 or None)
    ip6 = property(lambda self: self._record.ip6 or None)
    ips = property(lambda self: self._record.ips)
    keep = property(lambda self: self._record.keep)
    backend = property(lambda self: self._record.backend)
    owner = property(lambda self: self._record.owner)  # uid of the user that made it
    owner_name = property(lambda self: _user_name(self._record.owner))
    command = property(lambda self: self._record.command)  # what it was made to run
    host_loopback = property(lambda self: self._record.host_loopback)
    host_interfaces = property(lambda self: self._record.host_interfaces)

    @property
    def ip(self):
        return self._record.ip4 or self._record.ip6

    @property
    def uptime(self):
        return max(0.0, time.time() - self._record.created)

    def pids(self):
        """The processes inside.  A Vhost from list_vhosts() answers with
        what the listing saw (one pass over /proc for every vhost at once)."""
        if self._listed_pids is not None:
            return self._listed_pids
        return self._backend.pids(self._record)

    def alive(self):
        return self._backend.alive(self._record)

    def signal(self, sig):
        """Send sig to every process in the vhost (no grace, no removal)."""
        self._backend.signal(self._record, sig)

    def pause(self):
        """Freeze every process (the cgroup freezer, or SIGSTOP): a host that
        hangs rather than dies.  resume() thaws it."""
        self._backend.freeze(self._record, True)

    def resume(self):
        self._backend.freeze(self._record, False)

    def answers_on_loopback(self, port):
        """Whether a program in the vhost listens on TCP port at its own
        127.0.0.1 or ::1 (a daemon's local-only control port)."""
        return self._backend.answers_on_loopback(self._record, port)

    def spawn(self, argv, **kwargs):
        """Start another process in this vhost."""
        return spawn(argv, name=self.name, backend=self.backend, **kwargs)

    def remove(self, timeout=None):
        """Stop every process in the vhost (SIGTERM, SIGKILL after `timeout`
        seconds) and remove it."""
        return remove(self.name, timeout=GRACE if timeout is None else timeout)

    def to_dict(self):
        return {"name": self.name, "ip4": self.ip4, "ip6": self.ip6, "backend": self.backend,
                "keep": self.keep, "pids": self.pids(), "uptime": round(self.uptime, 3),
                "owner": self.owner_name, "command": self.command, "host_loopback": self.host_loopback,
                "host_interfaces": self.host_interfaces}

    def __repr__(self):
        return f"Vhost({self.name!r}, {', '.join(self.ips)})"


class Process:
    """A command running in a vhost, like subprocess.Popen."""

    def __init__(self, pid, vhost, stdin=None, stdout=None, stderr=None):
        self.pid = pid
        self.vhost = vhost
        self.returncode = None
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def poll(self):
        if self.returncode is None:
            pid, status = self._reap(os.WNOHANG)
            if pid:
                self._finish(status)
        return self.returncode

    def _reap(self, flags):
        """waitpid; a process already reaped counts as ended with status 0,
        as subprocess.Popen takes it: an exception raised by a signal
        handler (Ctrl-C in vaddr run) can land after waitpid returned and
        before the status was kept."""
        try:
            return os.waitpid(self.pid, flags)
        except ChildProcessError:
            return self.pid, 0

    def wait(self, timeout=None):
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            self._finish(self._reap(0)[1])
            return self.returncode
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def _finish(self, status):
        self.returncode = os.waitstatus_to_exitcode(status)
        if self.vhost is not None:
            release(self.vhost._record)

    def send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # reaped by a wait that a signal handler's exception cut short (see _reap)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.poll() is None:
            self.kill()
        self.wait()


def spawn(argv, ip=None, name=None, user=None, keep=False, backend="auto", env=None,
          stdin=None, stdout=None, stderr=None, host_loopback=False, host_interfaces=False, command=None):
    """Run argv in a vhost, creating it unless one with this name or address runs.

    ip: one address or a list of one IPv4 and one IPv6.  backend: "ebpf",
    "preload" or "auto" (eBPF when root and the kernel allow).  host_loopback:
    127.0.0.1 and ::1 in the vhost, and abstract Unix socket names, are the
    machine's instead of its own.  host_interfaces: programs see the
    machine's interfaces and routes (getifaddrs, netlink) instead of the
    vhost's own.  command: what `vaddr ls`
    shows as a new vhost's command, when argv wraps it (default: argv).
    Returns a Process."""
    ips = [ip] if isinstance(ip, str) else list(ip or ())
    path = resolve_command(argv, env)
    user = User(user) if user is not None and not isinstance(user, User) else user
    if user is not None:
        env = user.environ(env)
    if backend == "auto":
        # Join a running vhost on its own backend; else the best one here.
        known = [registry.find(k) for k in [name, *ips] if k]
        backend = next((r.backend for r in known if r), None) or backends.choose()
    impl = backends.get(backend)
    impl.check()
    dups, files, close = _stdio(stdin, stdout, stderr)
    try:
        with runtime.Lock():
            impl.prepare()
            sweep()
            record = _acquire(impl, ips, name, keep, host_loopback, argv if command is None else command,
                              host_interfaces)
            try:
                pid = impl.launch(record, path, list(argv), env=env, user=user, dups=dups)
            except BaseException:
                release(record, locked=True)
                raise
    finally:
        for fd in close:
            os.close(fd)
    return Process(pid, Vhost(record), **files)


def _stdio(stdin, stdout, stderr):
    """(fd, target) pairs for the child, our ends of pipes, fds to close after launch."""
    dups, files, close = [], {}, []
    for target, value, name in ((0, stdin, "stdin"), (1, stdout, "stdout"), (2, stderr, "stderr")):
        if value is None:
            continue
        if value == PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            child, mine = (r, w) if target == 0 else (w, r)
            dups.append((child, target))
            close.append(child)
            files[name] = os.fdopen(mine, "wb" if target == 0 else "rb")
        elif value == DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            dups.append((fd, target))
            close.append(fd)
        elif value == STDOUT and target == 2:
            dups.append((1, 2))  # applied in order, so after stdout's own
        elif isinstance(value, int) and value < 0:
            raise ValueError(f"{name}={value}: give PIPE, DEVNULL, {'STDOUT, ' if target == 2 else ''}"
                             "a file or a descriptor")
        else:
            dups.append((value if isinstance(value, int) else value.fileno(), target))
    return dups, files, close


def _acquire(impl, ips, name, keep, host_loopback=False, argv=(), host_interfaces=False):
    """The vhost to run in: an existing one named by name or address, or a new one.
    Caller holds the runtime lock."""
    ip4, ip6 = addresses.split_ips(ips)
    if name is None and not (ip4 or ip6):
        raise VaddrError("no address given", "add --ip ADDR (IPv4 or IPv6), or name a running vhost")
    if name is not None:
        _check_name(name)
        if ip4 or ip6:  # joining by name alone (`vaddr exec ADDR`) makes no name
            _check_name_is_not_another_address(name, ip4, ip6)
    existing = registry.load(name) if name else None
    for ip in (ip4, ip6):
        if not ip:
            continue
        owner = registry.find(ip)
        if owner and not reclaim_if_dead(owner):
            owner = None
        if owner and name and owner.name != name:
            raise VaddrError(f"{ip} belongs to vhost '{owner.name}'",
                             f"pick another address, or join it with --name {owner.name}")
        existing = existing or owner
    if existing and not reclaim_if_dead(existing):
        existing = None
    if existing:
        wanted = {ip for ip in (ip4, ip6) if ip}
        if wanted and wanted != set(existing.ips):
            raise VaddrError(f"vhost '{existing.name}' has address {', '.join(existing.ips)}, not {', '.join(sorted(wanted))}",
                             "give the same addresses to join it, or another name for a new vhost")
        if host_loopback and not existing.host_loopback:
            raise VaddrError(f"vhost '{existing.name}' was made with a loopback of its own",
                             f"vaddr rm {existing.name}, then spawn it again with --host-loopback")
        if host_interfaces and not existing.host_interfaces:
            raise VaddrError(f"vhost '{existing.name}' was made with an interface view of its own",
                             f"vaddr rm {existing.name}, then spawn it again with --host-interfaces")
        if existing.backend != impl.name:
            raise VaddrError(f"vhost '{existing.name}' runs on the {existing.backend} backend",
                             f"join it with --backend {existing.backend}")
        return existing
    if not (ip4 or ip6):
        raise VaddrError(f"no vhost named '{name}' is running", "give --ip ADDR to create it")
    # Kept only once whole: a vaddr killed half-way through create() leaves
    # a record with no processes and no keep, which the next sweep reclaims
    # instead of joining a vhost that lacks its route or map entries.
    record = registry.Record(name or ip4 or ip6, backend=impl.name, ip4=ip4, ip6=ip6, keep=False,
                             host_loopback=host_loopback, command=" ".join(argv), host_interfaces=host_interfaces)
    registry.save(record)
    try:
        impl.create(record, registry.save)
    except BaseException as e:
        if impl.teardown(record):  # else the record stays, naming what is left
            registry.delete(record.name)
        if isinstance(e, OSError):
            raise VaddrError(f"could not create vhost '{record.name}': {e.strerror}", "run vaddr doctor") from None
        raise
    if keep:
        record.keep = True
        registry.save(record)
    return record


def is_live(record):
    """A vhost exists while it holds processes or was made to be kept.  A
    read: it changes nothing, so it is safe outside the lock."""
    return record.keep or backends.get(record.backend).alive(record)


def reclaim_if_dead(record):
    """True for a live vhost; a leftover (its last process gone, or its maker
    killed) is removed, and False returned.  The one place where leftovers
    are cleaned: caller holds the runtime lock."""
    if is_live(record):
        return True
    _discard(backends.get(record.backend), record)
    return False


SWEEP_EVERY = 10.0  # seconds: spawns look for leftovers at most this often


def sweep(force=False):
    """Remove every leftover vhost (its last process gone, its maker killed);
    returns their names.  Caller holds the runtime lock.  spawn calls it at
    most every SWEEP_EVERY seconds, so a killed vaddr's routes and cgroups
    do not wait for a reset; rm and reset call it with force."""
    stamp = os.path.join(runtime.RUN_DIR, "swept")
    if not force:
        try:
            if time.time() - os.stat(stamp).st_mtime < SWEEP_EVERY:
                return []
        except FileNotFoundError:
            pass
    removed = []
    registry.clear_temporaries()
    for record in registry.all_records():
        try:
            if not reclaim_if_dead(record):
                removed.append(record.name)
        except VaddrError:
            pass  # its cgroup is busy: the record stays, naming it, for rm to report
    with open(stamp, "w"):
        pass
    return removed


def _discard(impl, record):
    """Undo a dead vhost's state, then forget its record.  A teardown that
    cannot finish keeps the record (it names what is left) and says so."""
    if not impl.teardown(record):
        raise VaddrError(f"vhost '{record.name}' could not be removed: its cgroup is still busy",
                         "see vaddr ls; vaddr rm it again, or vaddr reset")
    registry.delete(record.name)


def release(record, locked=False):
    """After a process of ours ends: remove its vhost if nothing else runs there."""
    if record.keep:
        return
    impl = backends.get(record.backend)
    if impl.alive(record):
        return
    if not locked:
        with runtime.Lock():
            return release(record, locked=True)
    current = registry.load(record.name)
    if current and current.cgid == record.cgid and not current.keep and not impl.alive(current):
        if impl.teardown(current):  # else it stays a leftover, for rm or reset to name
            registry.delete(current.name)


def spawn_client(argv, env=None, user=None, stdin=None, stdout=None, stderr=None):
    """Run argv with no address of its own, able to reach every vhost: under
    the LD_PRELOAD backend through the shim, else as a plain process (the
    kernel already routes the host to eBPF vhosts).  user: run as that user
    (root only), with its groups."""
    from vaddr.backends import preload
    path = resolve_command(argv, env)
    if user is not None:
        user = user if isinstance(user, User) else User(user)
        if os.geteuid() != 0:
            raise VaddrError("--user needs root", "run vaddr as the user you want, or with sudo")
        # setpriv drops privileges as the trampoline does (launch.py).
        argv, path = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", path,
                      *argv[1:]], resolve_command(["setpriv"])
    dups, files, close = _stdio(stdin, stdout, stderr)
    run_env = dict(os.environ if env is None else env)
    if any(r.backend == "preload" for r in registry.all_records()):
        preload.refuse_unservable(path)
        run_env = preload.PreloadBackend().env_for(None, env)
    try:
        pid = os.posix_spawn(path, list(argv), run_env, file_actions=[(os.POSIX_SPAWN_DUP2, fd, t) for fd, t in dups],
                             setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        for fd in close:
            os.close(fd)
    return Process(pid, None, **files)


def find(key):
    """The running vhost with this name or address, or None.  A read: a
    leftover is not reported, and not cleaned either (spawn, rm and reset
    do that under the lock)."""
    rec = registry.find(key)
    return Vhost(rec) if rec and is_live(rec) else None


def list_vhosts():
    """Every running vhost (a read, like find)."""
    records = registry.all_records()
    impls = {name: backends.get(name) for name in {r.backend for r in records}}
    listed = {}
    for name, impl in impls.items():
        # The processes, read once for all: they answer whether each is
        # alive too (cgroup.procs files; the shim's one pass over /proc).
        listed.update(impl.listed_pids([r for r in records if r.backend == name]))
    out = []
    for r in records:
        pids, impl = listed[r.name], impls[r.backend]
        if pids or r.keep or impl.alive(r):  # alive() only for the rare empty one (a zombie, a pause)
            out.append(Vhost(r, pids, impl))
    return out


GRACE = 10.0  # seconds between SIGTERM and SIGKILL, as `docker stop` and systemd give


def remove(key, timeout=GRACE):
    """Stop a vhost as an operator would and remove it: SIGTERM to every
    process, up to `timeout` seconds for them to exit, then SIGKILL, again
    and again, for what is left (and for children forked meanwhile).
    Returns the pids that needed SIGKILL.  The grace period runs outside the
    lock, so other vhosts can start and stop meanwhile."""
    return _stop(key, timeout, discard=True)


def remove_many(keys, timeout=GRACE, missing_ok=False):
    """remove() for many vhosts at once, as `vaddr rm a b c ...` and a lab's
    down need it: every name checked before anything is signalled, SIGTERM
    to all, one grace period for all, one SIGKILL round for what is left,
    and the maps opened once.  Returns {key: pids that needed SIGKILL}.
    missing_ok: a key naming no vhost (one that ended meanwhile) is passed over."""
    records, asked_as = [], {}
    for key in keys:
        rec = registry.find(key)
        if not rec and missing_ok:
            continue
        if not rec:
            raise VaddrError(f"no vhost named or addressed '{key}'", "see vaddr ls")
        if rec.name not in asked_as:
            asked_as[rec.name] = key
            records.append(rec)
    if timeout > 0:
        for rec in records:
            backends.get(rec.backend).signal(rec, signal.SIGTERM)
        wait_all_gone(records, timeout)
    killed = {}
    with runtime.Lock():
        current = [c for c, r in ((registry.load(r.name), r) for r in records)
                   if c is not None and c.cgid == r.cgid]  # not removed, nor re-made, meanwhile
        for rec in current:
            impl = backends.get(rec.backend)
            if impl.alive(rec):
                killed[asked_as[rec.name]] = impl.pids(rec)
                impl.kill(rec)
        wait_all_gone(current, 5.0)
        for rec in current:  # a fork between one kill and the next: the single path, with its retries
            if backends.get(rec.backend).alive(rec):
                _kill_until_empty(backends.get(rec.backend), rec)
        maps, busy = open_maps(current), []
        try:
            for rec in current:  # one that cannot go yet keeps its record, and the rest still go
                if backends.get(rec.backend).teardown(rec, maps=maps):
                    registry.delete(rec.name, rec)
                else:
                    busy.append(rec.name)
        finally:
            if maps is not None:
                maps.close()
    if busy:
        raise VaddrError(f"vhost {', '.join(map(repr, busy))} could not be removed: its cgroup is still busy",
                         "see vaddr ls; vaddr rm it again, or vaddr reset")
    return killed


def wait_all_gone(records, timeout):
    deadline, delay, left = time.monotonic() + timeout, 0.002, list(records)
    while left:
        left = [r for r in left if backends.get(r.backend).alive(r)]
        if not left or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def open_maps(records):
    if os.geteuid() == 0 and runtime.ready() and any(r.backend == "ebpf" for r in records):
        from vaddr.maps import Maps
        return Maps()
    return None


def stop(key, timeout=GRACE):
    """End every process of a vhost as remove() does, but keep the vhost:
    its address stays this machine's (a lab host that is down answers with
    a refusal; its packets never follow the machine's routes elsewhere)."""
    return _stop(key, timeout, discard=False)


def _stop(key, timeout, discard):
    rec = registry.find(key)
    if not rec:
        raise VaddrError(f"no vhost named or addressed '{key}'", "see vaddr ls")
    impl = backends.get(rec.backend)
    if timeout > 0:
        impl.signal(rec, signal.SIGTERM)
        _wait_gone(impl, rec, timeout)
    with runtime.Lock():
        current = registry.load(rec.name)
        if current is None or current.cgid != rec.cgid:
            return []  # removed (and perhaps re-made) meanwhile by another command
        killed = []
        if impl.alive(current):  # an empty vhost (a lab's down waited for all at once) needs no kill round
            killed = impl.pids(current)
            _kill_until_empty(impl, current, reuse=not discard)
        if discard:
            _discard(impl, current)
    return killed


def _wait_gone(impl, rec, timeout):
    deadline = time.monotonic() + timeout
    delay = 0.002
    while impl.alive(rec) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill_until_empty(impl, rec, timeout=5.0, reuse=False):
    """SIGKILL until nothing is left: a process forking in a loop can add a
    child between one kill and the next.  reuse: the vhost stays for new
    processes (see cgroups.kill_all)."""
    deadline = time.monotonic() + timeout
    while True:
        impl.kill(rec, reuse)
        _wait_gone(impl, rec, 0.1)
        if not impl.alive(rec):
            return
        if time.monotonic() > deadline:
            left = ", ".join(f"{pid} ({_state(pid)})" for pid in impl.pids(rec)[:5])
            raise VaddrError(f"vhost '{rec.name}' still has processes after SIGKILL: {left}",
                             "processes in state D wait for the kernel (I/O, NFS); retry vaddr rm later")


def _state(pid):
    """"state X, NAME" from /proc, for naming a survivor truthfully."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, _, rest = f.read().rpartition(")")
        return f"{head.split('(', 1)[1]}, state {rest.split()[0]}"
    except (OSError, IndexError):
        return "gone"

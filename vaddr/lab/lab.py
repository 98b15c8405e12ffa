"""The lab API: hosts, links and faults of a whole cluster as one object.

    lab = vaddr.Lab.from_file("kv.toml")        # or vaddr.Lab("pair") and add_host(...)
    with lab:                                    # up(), then down() whatever happens
        lab["n1"].run(["etcdctl", "member", "list"])
        with lab.partitioned(["n1"], ["n2", "n3"]):
            ...
        lab["n3"].kill(); lab["n3"].start(); lab["n3"].wait_ready()

The process that calls up() owns the lab: it is the parent of every host's
main process and keeps RUN_DIR/labs/NAME/state.json current, and it serves
the lab's control socket so that `vaddr stop n1` from another shell reaches
it.  down() works from any process, from that file alone."""
import contextlib
import os
import threading
import time

from vaddr import backends, links, nets
from vaddr import vhost as vhosts
from vaddr.errors import VaddrError
from vaddr.lab import isolate, names, spec, store
from vaddr.lab.host import Host
from vaddr.lab.reaper import Reaper


class Link:
    """The link between two hosts of a lab (names or "host"), both ways unless oneway."""

    def __init__(self, lab, a, b, oneway=False):
        self.lab, self.a, self.b, self.oneway = lab, a, b, oneway

    def set(self, **settings):
        """delay="20ms", jitter, loss="1%", rate="10mbit", duplicate, corrupt."""
        links.set_link(self.lab.address_of(self.a), self.lab.address_of(self.b), oneway=self.oneway, **settings)
        with self.lab.mutex:
            key = [self.a, self.b, self.oneway]
            if key not in self.lab.links_set:
                self.lab.links_set.append(key)
        self.lab.changed()
        return self

    def clear(self):
        links.clear_link(self.lab.address_of(self.a), self.lab.address_of(self.b), oneway=self.oneway)


class Lab:
    def __init__(self, name, subnet=None, backend="auto", workdir=None, grace=10.0, _spec=None):
        where = spec.code_where(name)
        if _spec is None:
            if not spec._NAME.match(str(name)):
                raise where.error("lab.name", f"'{name}' is not a usable lab name", "use letters, digits, '-' and '_'")
            subnets = [subnet] if isinstance(subnet, str) else list(subnet or [])
            _spec = spec.LabSpec(name, [], [], subnets, backend, workdir, float(grace))
        self.spec, self.name = _spec, _spec.name
        self.hosts = [Host(self, h) for h in _spec.hosts]
        base = os.path.dirname(_spec.path) if _spec.path else os.getcwd()
        self.cwd = base  # a host's default folder: `python3 worker.py` finds the file beside the lab file
        self.root = store.default_root(self.name, _spec.workdir, base)
        self.grace = _spec.grace
        self.mutex = threading.RLock()  # host states and the state file
        self.op_lock = threading.Lock()  # control requests, one at a time
        self.made_subnets, self.made_mount_points, self.links_set, self.partitions = [], set(), [], []
        self.is_up, self._owner, self._batch, self._dirty, self._server = False, False, False, False, None
        self._backend = None
        self.made_by = "vaddr"  # "pytest": the next pytest run removes it if its owner was killed
        self.down_event = threading.Event()
        self.reaper = None  # made by up(), closed by down()

    # ---- building -----------------------------------------------------------

    @classmethod
    def from_file(cls, path="vaddr.toml"):
        return cls(None, _spec=spec.load(path))

    def add_host(self, name, ip, cmd=None, env=None, cwd=None, user=None, backend=None, ready=None, private=(),
                 after=(), count=None, host_loopback=None, host_interfaces=None):
        """A host (or `count` of them, NAME1..NAMEn from consecutive addresses)
        with the keys of a lab file's [hosts.NAME]; returns the Host (a list with count)."""
        table = {k: v for k, v in dict(ip=ip, cmd=cmd, env=env, cwd=cwd, user=user, backend=backend, ready=ready,
                                       after=list(after), private=list(private), count=count,
                                       host_loopback=host_loopback, host_interfaces=host_interfaces).items()
                 if v not in (None, [], {})}
        where = spec.code_where(self.name)
        made = spec.host_table(name, table, where)
        for h in made:
            if self.spec.host(h.name):
                raise where.error(f"hosts.{name}", f"host name '{h.name}' is used twice", "give each host its own name")
        self.spec.hosts.extend(made)
        new = [Host(self, h) for h in made]
        self.hosts.extend(new)
        return new if count is not None else new[0]

    def add_link(self, a, b, oneway=False, **settings):
        table = dict(settings, **({"from": a, "to": b} if oneway else {"between": [a, b]}))
        self.spec.links.append(spec.link_table(table, {h.name for h in self.spec.hosts}, spec.code_where(self.name)))

    def __getitem__(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"lab {self.name} has no host named {name!r}")

    def __iter__(self):
        return iter(self.hosts)

    def __contains__(self, name):
        return any(h.name == name for h in self.hosts)

    @property
    def backend(self):
        if self._backend is None:
            self._backend = backends.choose() if self.spec.backend == "auto" else self.spec.backend
        return self._backend

    def address_of(self, endpoint):
        if endpoint == links.HOST:
            return endpoint
        return self[endpoint].ip

    # ---- state --------------------------------------------------------------

    def changed(self):
        if self._owner is False:
            return
        if self._batch:
            self._dirty = True
            return
        with self.mutex:
            store.save(self.name, self.to_state())

    def to_state(self):
        return {"spec": self.spec.to_dict(), "owner": os.getpid(), "owner_start": store.process_start(os.getpid()),
                "root": self.root, "cwd": self.cwd, "made_subnets": self.made_subnets,
                "made_mount_points": sorted(self.made_mount_points), "links_set": self.links_set,
                "partitions": self.partitions, "up": self.is_up, "made_by": self.made_by,
                "hosts": {h.name: {"state": h.state, "exit_code": h.exit_code, "started": h.started,
                                   "restarts": h.restarts, "backend": h.backend} for h in self.hosts}}

    @classmethod
    def attach(cls, name):
        """The lab `name` as its state file describes it, for a process that
        does not own it (down, status); its hosts have no process handles."""
        state = store.load(name)
        if state is None:
            raise VaddrError(f"no lab named '{name}' is up", "see vaddr status")
        lab = cls(None, _spec=spec.LabSpec.from_dict(state["spec"]))
        lab.root, lab.cwd, lab.is_up = state["root"], state["cwd"], state["up"]
        lab.made_subnets, lab.made_mount_points = state["made_subnets"], set(state["made_mount_points"])
        lab.links_set, lab.partitions = state["links_set"], state["partitions"]
        lab.made_by = state.get("made_by", "vaddr")
        for h in lab.hosts:
            saved = state["hosts"].get(h.name, {})
            h.state, h.exit_code = saved.get("state", "defined"), saved.get("exit_code")
            h.started, h.restarts = saved.get("started"), saved.get("restarts", 0)
            lab._backend = saved.get("backend", lab._backend)
        lab.owner_alive = store.owner_alive(state)
        return lab

    # ---- up and down --------------------------------------------------------

    def _refuse_conflicts(self):
        where = spec.code_where(self.name) if not self.spec.path else spec._Where(self.spec.path, "")
        spec.validate(self.spec, where)
        old = store.load(self.name)
        if old is not None:
            if store.owner_alive(old):
                raise VaddrError(f"lab {self.name} is already up", f"vaddr down {self.name} first, or vaddr status")
            Lab.attach(self.name).down()  # left by an owner that was killed: clear it first
        if self.spec.links and (os.geteuid() != 0 or self.backend == "preload"):
            raise VaddrError(f"lab {self.name} has [[links]]: link settings need the eBPF backend (root)",
                             "run the lab with sudo, or remove its [[links]]")
        for h in self.hosts:
            for key in (h.name, *h.spec.ips):
                other = vhosts.find(key)
                if other is not None:
                    raise VaddrError(f"lab {self.name}: host {h.name}: {key} is taken by running vhost '{other.name}'",
                                     f"vaddr rm {other.name}, or rename the host / change its address")
            h.check()

    def up(self, on_progress=None):
        """Start every host in `after` order, each once those it waits for are
        ready, wait for all to be ready, then set the links.  If a host exits
        or misses its ready timeout, what was started is taken down again and
        a VaddrError names the host with the last lines of its output."""
        if not self.hosts:
            raise VaddrError(f"lab {self.name} has no hosts", "add one with lab.add_host(...)")
        self._refuse_conflicts()
        try:
            os.makedirs(self.root, mode=0o755, exist_ok=True)
        except OSError as e:
            # A system user's home may not exist (useradd --system).
            raise VaddrError(f"cannot make lab {self.name}'s folder {self.root}: {e.strerror}",
                             "set workdir in the lab file's [lab] table, or VADDR_LAB_DIR, to a folder "
                             "you can write") from None
        self._owner, self._batch = True, True
        self.reaper = Reaper()
        store.save(self.name, self.to_state())  # first: a killed up leaves a file naming what to undo
        try:
            for prefix in self.spec.subnets:
                if nets.parse_prefix(prefix) not in nets.list_nets():
                    self.made_subnets.append(nets.add(prefix))
            self._publish_names()
            from vaddr.lab import control
            self._server = control.serve(self)
            self._start_all(on_progress or (lambda event, host: None))
            self._set_spec_links()
            self.is_up = True
        except BaseException:
            self._batch = False
            self.down(keep_logs=True)  # the failing host's whole output stays readable
            raise
        self._batch = False
        self.changed()
        return self

    def _publish_names(self):
        entries = [(ip, h.name) for h in self.hosts for ip in h.spec.ips]
        if os.geteuid() == 0 or self.backend == "preload":
            names.publish(self.name, entries)

    def _start_all(self, progress):
        pending = list(self.hosts)
        starting, ready = [], set()
        deadlines = {}
        delay = 0.002
        while pending or starting:
            for h in [h for h in pending if set(h.spec.after) <= ready]:
                pending.remove(h)
                progress("starting", h)
                h.start()
                starting.append(h)
                deadlines[h.name] = time.monotonic() + (h.spec.ready or {}).get("timeout", 0)
            for h in list(starting):
                if h.state == "ready" or (h.running() and h.probe()):
                    h.state = "ready"
                    starting.remove(h)
                    ready.add(h.name)
                    progress("ready", h)
                elif not h.running():
                    h._settle()
                    raise h.failure("exited before it was ready")
                elif time.monotonic() > deadlines[h.name]:
                    from vaddr.lab.host import describe_ready
                    raise h.failure(f"was not ready after {h.spec.ready['timeout']:g}s "
                                    f"(waiting for {describe_ready(h.fields()['ready'])})")
            if self._dirty:
                self._dirty = False
                with self.mutex:
                    store.save(self.name, self.to_state())
            if starting:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            elif pending and not any(set(h.spec.after) <= ready for h in pending):
                raise VaddrError("hosts wait for each other", "check after")  # validate() rules this out

    def down(self, keep_data=False, keep_logs=False):
        """Stop every host (SIGTERM, SIGKILL after the grace period), remove
        their vhosts, the lab's links, partitions, names and subnet, and the
        work folders unless keep_data (keep_logs: all but the output logs).
        Returns {host: pids that needed SIGKILL}."""
        self.is_up = False
        # Hosts ending one by one would each rewrite the lab's state file
        # (1,000 hosts: 1,000 writes of it); it is forgotten at the end.
        self._batch = True
        self._heal_own()
        for a, b, oneway in list(self.links_set):
            with contextlib.suppress(VaddrError):
                Link(self, a, b, oneway).clear()
        killed = self._stop_hosts()
        if os.geteuid() == 0:  # the shim's labs have no links
            with contextlib.suppress(VaddrError):
                links.forget([ip for h in self.hosts for ip in (h.ip4, h.ip6)])
        names.withdraw(self.name)
        for h in self.hosts:
            isolate.forget(h.name)
        for prefix in self.made_subnets:
            with contextlib.suppress(VaddrError):
                nets.remove(prefix)
        for path in sorted(self.made_mount_points, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        import shutil
        if keep_logs and not keep_data:
            for h in self.hosts:
                for sub in ("work", "private"):
                    shutil.rmtree(os.path.join(h.folder, sub), ignore_errors=True)
        elif not keep_data:
            shutil.rmtree(self.root, ignore_errors=True)
        if self._server is not None:
            self._server.close()
        if self.reaper is not None:
            self.reaper.close()  # its thread and descriptors: a pytest session may make hundreds of labs
            self.reaper = None
        store.forget(self.name)
        self._owner = False
        self.down_event.set()
        return killed

    def _stop_hosts(self):
        """SIGTERM to every host at once, then one shared grace period."""
        running = [(h, vh) for h in self.hosts for vh in [vhosts.find(h.name)] if vh is not None]
        for h, vh in running:
            h._stopping = True
            with contextlib.suppress(OSError, VaddrError):
                if h.state == "paused":
                    vh.resume()  # a frozen process cannot act on SIGTERM
                vh.signal(15)
        self._wait_empty(running, self.grace)  # one grace period for all, not one per host
        killed = {}
        for h, vh in running:
            if vh.alive():
                killed[h.name] = vh.pids()  # named: these needed SIGKILL
                vh.signal(9)
        self._wait_empty(running, 5.0)
        # Empty by now: one batch removes them all (one lock, the maps opened once).
        with contextlib.suppress(VaddrError):  # what cannot go yet is left for reset to name
            for name, got in vhosts.remove_many([h.name for h, _ in running], timeout=0, missing_ok=True).items():
                killed.setdefault(name, []).extend(got)
        for h, _ in running:
            h._settle()
        return killed

    @staticmethod
    def _wait_empty(running, timeout):
        deadline = time.monotonic() + timeout
        delay, left = 0.002, [vh for _, vh in running]
        while time.monotonic() < deadline:
            left = [vh for vh in left if vh.alive()]  # each emptied one is not looked at again
            if not left:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def detach(self):
        """Leave the lab running after this process ends (for inspection):
        `vaddr status`, `vaddr down` and `vaddr reset` still find it."""
        self.made_by = "kept"
        self.changed()
        if self._server is not None:
            self._server.close()
        self._owner = False

    def __enter__(self):
        if not self.is_up:
            self.up()
        return self

    def __exit__(self, *exc):
        self.down()

    # ---- links and partitions -----------------------------------------------

    def link(self, a, b, oneway=False):
        for end in (a, b):
            if end != links.HOST and end not in self:
                raise VaddrError(f"lab {self.name} has no host named '{end}'", "name a host of the lab, or 'host'")
        return Link(self, a, b, oneway)

    def partition(self, *groups):
        """partition(["n1"], ["n2", "n3"]): nothing crosses between groups."""
        groups = [[g] if isinstance(g, str) else list(g) for g in groups]
        for g in groups:
            self.link(g[0], g[-1])  # names checked
        pairs = links.partition([[self.address_of(h) for h in g] for g in groups])
        with self.mutex:
            self.partitions.extend([list(p) for p in pairs])
        self.changed()
        return pairs

    def heal(self):
        healed = self._heal_own()
        self.changed()
        return healed

    def _heal_own(self):
        if not self.partitions:
            return 0
        healed = links.heal(only=self.partitions)
        self.partitions = []
        return healed

    @contextlib.contextmanager
    def partitioned(self, *groups):
        self.partition(*groups)
        try:
            yield self
        finally:
            self.heal()

    def _set_spec_links(self):
        """The lab file's links, in one batch (vaddr.links.set_links)."""
        if not self.spec.links:
            return
        links.set_links([(self.address_of(l.a), self.address_of(l.b), l.settings, l.oneway)
                         for l in self.spec.links])
        with self.mutex:
            for l in self.spec.links:
                if [l.a, l.b, l.oneway] not in self.links_set:
                    self.links_set.append([l.a, l.b, l.oneway])
        self.changed()

    def restore(self):
        """Undo a test's faults: heal the lab's partitions, put the links back
        as the lab defines them, thaw paused hosts, start stopped or exited
        ones again and wait until every host is ready."""
        self._heal_own()
        for a, b, oneway in list(self.links_set):
            with contextlib.suppress(VaddrError):
                Link(self, a, b, oneway).clear()
        self.links_set = []
        self._set_spec_links()
        for h in self.hosts:
            if h.state == "paused":
                h.resume()
            if not h.running():
                h.stop(0)  # leftovers a crashed main process left behind
                h.start()
        for h in self.hosts:
            h.wait_ready()
        self.changed()

    def needs_ebpf(self):
        """Why this lab cannot run on the LD_PRELOAD backend, or None."""
        from vaddr import elf
        if self.spec.links:
            return "it sets links ([[links]]), which need the eBPF backend (root)"
        for h in self.hosts:
            if h.spec.private:
                return f"host {h.name} has private folders, which need the eBPF backend (root)"
            argv = h.fields()["argv"]
            try:
                path = vhosts.resolve_command(argv, dict(os.environ, **h.spec.env))
            except VaddrError:
                continue  # up names it
            kind = elf.kind(path)
            if kind in ("static", "go"):
                return f"host {h.name} runs {path}, {'a Go program' if kind == 'go' else 'a static binary'}, " \
                       "which only the eBPF backend can give an address"
        return None

    def status(self):
        return {"name": self.name, "up": self.is_up, "root": self.root,
                "hosts": [h.to_dict() for h in self.hosts], "links": self._link_rows()}

    def _link_rows(self):
        ips = {ip: h.name for h in self.hosts for ip in h.spec.ips}
        try:
            rows = links.list_links() if os.geteuid() == 0 else []
        except VaddrError:
            rows = []
        return [dict(r, src_name=ips.get(r["src"], r["src_name"]), dst_name=ips.get(r["dst"], r["dst_name"]))
                for r in rows if r["src"] in ips or r["dst"] in ips]

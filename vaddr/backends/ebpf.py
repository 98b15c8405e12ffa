"""The eBPF backend: a vhost is a cgroup under vaddr's parent cgroup, and the
socket hooks attached there read its addresses from pinned maps."""
import os
import socket

from vaddr import addresses, cgroups, runtime
from vaddr.maps import Maps


class EbpfBackend:
    name = "ebpf"

    def check(self):
        """Fail early, before any state is made, when this backend cannot run."""
        runtime.require_root()
        cgroups.mount_point()

    def prepare(self):
        """Load the hooks if no vaddr has yet.  Caller holds the runtime lock."""
        return runtime.ensure_ready()

    def create(self, record, save):
        """Make the cgroup, map entries and routes; `save` persists the record
        before each step so that a killed vaddr leaves nothing unnamed."""
        needs_route = tuple(ip for ip in record.ips if not addresses.is_local(ip))
        for ip in set(record.ips) - set(needs_route):
            _refuse_machine_address(ip)
        path = cgroups.create(record.name)
        record.cgid = cgroups.cgroup_id(path)
        record.routes = needs_route
        save(record)
        with Maps() as maps:
            maps.add_vhost(record.cgid, record.ip4 or None, record.ip6 or None, record.host_loopback)
        if needs_route:
            from vaddr import routes
            for ip in needs_route:
                routes.make_local(ip)

    def launch(self, record, path, argv, env=None, user=None, dups=()):
        """Caller holds the runtime lock (the view daemon may be started)."""
        from vaddr import launch, views
        cgroup = cgroups.vhost_path(record.name)
        view = None if record.host_interfaces else views.request(record)
        if view:
            env = views.with_procview(env)
        try:
            return launch.launch(cgroup, path, argv, env, dups, user, view)
        except launch.ViewUnavailable as e:
            views.restart_after(e.args[0])  # the daemon was gone: once more with a new one
        view = views.request(record)
        if view:
            env = views.with_procview(env)
        try:
            return launch.launch(cgroup, path, argv, env, dups, user, view)
        except launch.ViewUnavailable as e:
            views.give_up(e.args[0])

    def pids(self, record):
        return cgroups.pids(cgroups.vhost_path(record.name))

    def listed_pids(self, records):
        return cgroups.vhosts_pids([r.name for r in records])

    def alive(self, record):
        return cgroups.populated(cgroups.vhost_path(record.name))

    def signal(self, record, sig):
        cgroups.signal_all(cgroups.vhost_path(record.name), sig)

    def kill(self, record, reuse=False):
        cgroups.kill_all(cgroups.vhost_path(record.name), reuse)

    def freeze(self, record, frozen):
        cgroups.freeze(cgroups.vhost_path(record.name), frozen)

    def answers_on_loopback(self, record, port):
        """Whether a TCP connection to port is accepted on the vhost's own
        loopback, tried from inside as a health check on a host would: a
        forked child joins the cgroup (no exec: 3.9 ms a try, measured here)."""
        path = cgroups.vhost_path(record.name)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                cgroups.move(path)
                for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                    with socket.socket(family, socket.SOCK_STREAM) as s:
                        s.settimeout(0.5)
                        if s.connect_ex((addr, port)) == 0:
                            code = 0
                            break
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

    def teardown(self, record, maps=None):
        """Undo create(); safe on a half-made vhost and when run twice.
        maps: open Maps to reuse (a removal of many opens them once)."""
        path = cgroups.vhost_path(record.name)
        cgid = record.cgid
        if not cgid and os.path.isdir(path):
            cgid = cgroups.cgroup_id(path)
        if not cgroups.remove(path):
            return False
        if cgid and maps is not None:
            maps.remove_vhost(cgid, record.ips)
        elif cgid and runtime.ready():
            with Maps() as opened:
                opened.remove_vhost(cgid, record.ips)
        if record.routes:
            from vaddr import routes
            for ip in record.routes:
                routes.unmake_local(ip)
        return True


def _refuse_machine_address(ip):
    """A local address that is neither loopback nor in a lab subnet is one of
    the machine's own (an interface's): a vhost there would not be distinct
    from the machine, whose own programs already answer on it."""
    if ip.startswith("127.") or ip == "::1":
        return
    from vaddr import nets
    if ":" not in ip and any(nets.contains(prefix, ip) for prefix in nets.list_nets()):
        return
    from vaddr.errors import VaddrError
    raise VaddrError(f"{ip} is one of this machine's own addresses: a vhost there would not be distinct from it",
                     "pick an address the machine does not have, e.g. in 10.0.0.0/24 or a lab subnet")

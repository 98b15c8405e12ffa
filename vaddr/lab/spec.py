"""Lab files: TOML read into plain host and link specs, every mistake found
before anything starts.

    [lab]                      name, subnet, backend, workdir, grace
    [hosts.NAME]               ip, cmd, env, cwd, user, backend, ready, private, after, count,
                               host_loopback, host_interfaces
    [[links]]                  between = [A, B] | from/to, and delay, jitter, loss, rate, duplicate, corrupt

Errors name the file, the line where the key was found, the key, and the
fix, like a compiler: `kv.toml:12: hosts.n2.after: unknown host 'n9' (fix: ...)`."""
import os
import re

from vaddr import addresses, links
from vaddr.errors import VaddrError
from vaddr.lab.linkspec import LinkSpec, parse_links as _links
from vaddr.lab.placeholders import expand_all

LAB_KEYS = {"name", "subnet", "backend", "workdir", "grace"}
HOST_KEYS = {"ip", "cmd", "env", "cwd", "user", "backend", "ready", "private", "after", "count", "host_loopback",
             "host_interfaces"}
# The ways out of a vhost's own loopback and interface view (vaddr spawn --host-loopback, --host-interfaces).
HOST_FLAGS = ("host_loopback", "host_interfaces")
READY_KINDS = ("tcp", "log", "cmd")
DEFAULT_READY_TIMEOUT = 30.0
MAX_COUNT = 100_000
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,62})$")  # a DNS label, as /etc/hosts wants


class HostSpec:
    """One host of a lab, its command not yet expanded (placeholders need every host's address)."""

    def __init__(self, name, ip4="", ip6="", cmd=None, env=None, cwd=None, user=None, backend=None,
                 ready=None, private=(), after=(), index=1, group=None, host_loopback=False,
                 host_interfaces=False):
        self.name, self.ip4, self.ip6 = name, ip4, ip6
        self.host_loopback, self.host_interfaces = host_loopback, host_interfaces
        self.cmd = cmd            # a list (argv) or a str (split like a shell line); None: sleep until stopped
        self.env = dict(env or {})
        self.cwd, self.user, self.backend = cwd, user, backend
        self.ready = ready        # None or {"kind": "tcp"|"log"|"cmd", "value": ..., "timeout": seconds}
        self.private = list(private)
        self.after = list(after)
        self.index = index        # 1..count within its [hosts.X] table
        self.group = group or name

    @property
    def ips(self):
        return [ip for ip in (self.ip4, self.ip6) if ip]

    def to_dict(self):
        return {k: getattr(self, k) for k in ("name", "ip4", "ip6", "cmd", "env", "cwd", "user", "backend",
                                              "ready", "private", "after", "index", "group", *HOST_FLAGS)}

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class LabSpec:
    def __init__(self, name, hosts, links=(), subnets=(), backend="auto", workdir=None, grace=10.0, path=None):
        self.name, self.hosts, self.links = name, list(hosts), list(links)
        self.subnets, self.backend, self.workdir, self.grace, self.path = list(subnets), backend, workdir, grace, path

    def host(self, name):
        return next((h for h in self.hosts if h.name == name), None)

    def to_dict(self):
        return {"name": self.name, "hosts": [h.to_dict() for h in self.hosts], "links": [l.to_dict() for l in self.links],
                "subnets": self.subnets, "backend": self.backend, "workdir": self.workdir, "grace": self.grace,
                "path": self.path}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], [HostSpec.from_dict(h) for h in d["hosts"]], [LinkSpec.from_dict(l) for l in d["links"]],
                   d["subnets"], d["backend"], d["workdir"], d["grace"], d["path"])


class _Where:
    """Turns a key path into 'file:line: key' for messages.  tomllib keeps no
    positions, so the line is found in the text: the table's header, then the
    key's own line inside that table."""

    def __init__(self, path, text):
        self.path, self.lines = path, text.splitlines()

    def _line(self, table, key, nth=0):
        """Line of `key` in the nth table headed [table] (or [[table]]); of the header when key is None."""
        header, seen = None, -1
        for i, line in enumerate(self.lines):
            s = line.split("#", 1)[0].strip().replace(" ", "")
            if s in (f"[{table}]", f"[[{table}]]") or (key is None and s.startswith(f"[{table}.")):
                seen += 1
                if seen == nth:
                    header = i
                    if key is None:
                        return i + 1
                    continue
            if header is None:
                continue
            if s.startswith("["):
                break
            if key and re.match(rf"\s*{re.escape(key)}\s*=", line):
                return i + 1
        return header + 1 if header is not None else None

    def error(self, keypath, message, hint):
        parts, nth = keypath.split("."), 0
        if parts[0] == "hosts" and len(parts) >= 2:
            table, key = f"hosts.{parts[1]}", parts[2] if len(parts) > 2 else None
        elif parts[0].startswith("links["):
            table, key, nth = "links", parts[1] if len(parts) > 1 else None, int(parts[0][6:-1])
        else:
            table, key = parts[0], parts[1] if len(parts) > 1 else None
        line = self._line(table, key, nth)
        where = f"{self.path}:{line}" if line else self.path
        return VaddrError(f"{where}: {keypath}: {message}", hint)


def load(path):
    """The LabSpec of a lab file, or a VaddrError naming the first mistake."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise VaddrError(f"no lab file {path}", "give one with -f FILE, or write vaddr.toml here (see README: Labs)")
    except OSError as e:
        raise VaddrError(f"cannot read {path}: {e.strerror}", "check the path and its permissions")
    return parse(raw.decode("utf-8", "replace"), path)


def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    return tomllib


def parse(text, path="vaddr.toml"):
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise VaddrError(f"{path}: not valid TOML: {e}", "fix the syntax at that line and column")
    where = _Where(path, text)
    unknown = set(data) - {"lab", "hosts", "links"}
    if unknown:
        key = sorted(unknown)[0]
        raise where.error(key, "unknown table", "a lab file has [lab], [hosts.NAME] and [[links]]")
    lab = _table(data.get("lab", {}), "lab", where)
    _known(lab, LAB_KEYS, "lab", where)
    name = lab.get("name") or os.path.splitext(os.path.basename(path))[0]
    if not isinstance(name, str) or not _NAME.match(name):
        raise where.error("lab.name", f"'{name}' is not a usable lab name", "use letters, digits, '-' and '_'")
    backend = lab.get("backend", "auto")
    _check_backend(backend, "lab.backend", where)
    subnets = lab.get("subnet", [])
    subnets = [subnets] if isinstance(subnets, str) else subnets
    for i, s in enumerate(subnets):
        from vaddr import nets
        try:
            nets.parse_prefix(s)
        except VaddrError as e:
            raise where.error("lab.subnet", e.message, e.hint)
    grace = _seconds(lab.get("grace", "10s"), "lab.grace", where)
    hosts_table = _table(data.get("hosts", {}), "hosts", where)
    if not hosts_table:
        raise where.error("hosts", "the lab has no hosts", "add one: [hosts.n1] with ip = \"10.0.0.1\" and cmd = \"...\"")
    hosts = []
    for group, table in hosts_table.items():
        hosts.extend(_hosts(group, _table(table, f"hosts.{group}", where), where))
    link_specs = _links(data.get("links", []), {h.name for h in hosts}, where)
    spec = LabSpec(name, hosts, link_specs, subnets, backend, lab.get("workdir"), grace, os.path.abspath(path))
    validate(spec, where)
    return spec


def validate(spec, where):
    """Checks across hosts: names and addresses used once, `after` naming
    hosts and free of cycles, placeholders known."""
    names = {}
    for h in spec.hosts:
        if h.name in names:
            raise where.error(f"hosts.{h.group}", f"host name '{h.name}' is used twice (also by [hosts.{names[h.name]}])",
                              "rename one of them, or change a count")
        names[h.name] = h.group
    _unique_addresses(spec.hosts, where)
    _check_after(spec.hosts, where)
    expand_all(spec, where)  # unknown placeholders are file errors too


def host_table(group, table, where):
    """HostSpecs of one [hosts.NAME] table (several with count); for labs built in code."""
    return _hosts(group, _table(table, f"hosts.{group}", where), where)


def link_table(table, names, where):
    return _links([table], names, where)[0]


def code_where(lab):
    """Error positions for a lab built in Python: its name instead of a file."""
    return _Where(f"lab {lab}", "")


def _table(value, key, where):
    if not isinstance(value, dict):
        raise where.error(key, "must be a table", f"write it as [{key}] with key = value lines")
    return value


def _known(table, allowed, key, where):
    for k in table:
        if k not in allowed:
            raise where.error(f"{key}.{k}", "unknown key", f"known keys of [{key.split('.')[0]}{'.NAME' if key.startswith('hosts') else ''}]: "
                              + ", ".join(sorted(allowed)))


def _check_backend(value, key, where):
    if value not in ("auto", "ebpf", "preload"):
        raise where.error(key, f"unknown backend '{value}'", "use \"ebpf\", \"preload\" or \"auto\"")


def _seconds(value, key, where):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        us = links._number_unit(value, {"ms": 1000, "s": 1000000, "m": 60000000, "": 1000000}, "timeout", "30s")
    except VaddrError:
        raise where.error(key, f"'{value}' is not a duration", "write it like \"30s\", \"500ms\" or \"2m\"")
    return us / 1e6


def _ips(value, key, where):
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise where.error(key, "must be an address or a list of an IPv4 and an IPv6 address",
                          "write ip = \"10.0.0.1\" or ip = [\"10.0.0.1\", \"fd00::1\"]")
    try:
        parsed = [addresses.parse_vip(v) for v in values]
        return addresses.split_ips([ip for _, ip in parsed])
    except VaddrError as e:
        raise where.error(key, e.message, e.hint)


def _step(ip, n):
    """The address n after ip, same family."""
    import ipaddress
    return str(ipaddress.ip_address(ip) + n) if ip else ""


def _hosts(group, table, where):
    key = f"hosts.{group}"
    _known(table, HOST_KEYS, key, where)
    count = table.get("count", None)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT):
        raise where.error(f"{key}.count", f"'{count}' is not a number of hosts", f"give a whole number from 1 to {MAX_COUNT}")
    if "ip" not in table:
        raise where.error(key, "no address", "add ip = \"10.0.0.1\" (with count: the first of consecutive addresses)")
    ip4, ip6 = _ips(table["ip"], f"{key}.ip", where)
    cmd = table.get("cmd")
    if cmd is not None and not ((isinstance(cmd, str) and cmd.strip()) or
                                (isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd))):
        raise where.error(f"{key}.cmd", "must be a command line or a list of arguments",
                          "write cmd = \"redis-server --port 6379\" or cmd = [\"redis-server\", \"--port\", \"6379\"]")
    env = table.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) for v in env.values()):
        raise where.error(f"{key}.env", "must be a table of strings", "write env = { NAME = \"value\" }")
    for opt in ("cwd", "user"):
        if opt in table and not isinstance(table[opt], (str, int)):
            raise where.error(f"{key}.{opt}", "must be a string", f"write {opt} = \"...\"")
    backend = table.get("backend")
    if backend is not None:
        _check_backend(backend, f"{key}.backend", where)
    private = table.get("private", [])
    if not isinstance(private, list) or not all(isinstance(p, str) and p.startswith("/") and p != "/" for p in private):
        raise where.error(f"{key}.private", "must be a list of absolute folder paths other than /",
                          "write private = [\"/run/postgresql\"]")
    after = table.get("after", [])
    after = [after] if isinstance(after, str) else after
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise where.error(f"{key}.after", "must be a list of host names", "write after = [\"n1\"]")
    ready = _ready(table.get("ready"), f"{key}.ready", where)
    for flag in HOST_FLAGS:
        if not isinstance(table.get(flag, False), bool):
            raise where.error(f"{key}.{flag}", "must be true or false", f"write {flag} = true")
    n = count or 1
    out = []
    for i in range(1, n + 1):
        name = f"{group}{i}" if count is not None else group
        if not _NAME.match(name):
            raise where.error(key, f"'{name}' is not a usable host name",
                              "use letters, digits, '-' and '_' (a DNS label), starting with a letter or digit")
        try:
            h4, h6 = _step(ip4, i - 1), _step(ip6, i - 1)
            if h4:
                addresses.parse_vip(h4)
            if h6:
                addresses.parse_vip(h6)
        except (VaddrError, ValueError):
            raise where.error(f"{key}.ip", f"count = {n} runs past the end of usable addresses from {ip4 or ip6}",
                              "start lower, or use fewer hosts")
        out.append(HostSpec(name, h4, h6, cmd=cmd, env={k: str(v) for k, v in env.items()},
                            cwd=table.get("cwd"), user=table.get("user"), backend=backend, ready=ready,
                            private=private, after=after, index=i, group=group,
                            **{flag: table.get(flag, False) for flag in HOST_FLAGS}))
    return out


def _ready(value, key, where):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise where.error(key, "must be a table", "write ready = { tcp = 2379 }, { log = \"ready\" } or { cmd = \"...\" }")
    kinds = [k for k in READY_KINDS if k in value]
    extra = set(value) - set(READY_KINDS) - {"timeout"}
    if extra:
        raise where.error(f"{key}.{sorted(extra)[0]}", "unknown key", "ready takes one of tcp, log, cmd, and timeout")
    if len(kinds) != 1:
        raise where.error(key, "needs exactly one of tcp, log, cmd", "write ready = { tcp = 2379, timeout = \"30s\" }")
    kind = kinds[0]
    what = value[kind]
    if kind == "tcp" and (not isinstance(what, int) or isinstance(what, bool) or not 1 <= what <= 65535):
        raise where.error(f"{key}.tcp", f"'{what}' is not a port", "give a port number from 1 to 65535")
    if kind == "log" and not (isinstance(what, str) and what):
        raise where.error(f"{key}.log", "must be the text to wait for", "write ready = { log = \"ready to serve\" }")
    if kind == "cmd" and not (isinstance(what, str) and what.strip() or isinstance(what, list) and what):
        raise where.error(f"{key}.cmd", "must be a command", "write ready = { cmd = \"etcdctl endpoint health\" }")
    timeout = _seconds(value.get("timeout", DEFAULT_READY_TIMEOUT), f"{key}.timeout", where)
    return {"kind": kind, "value": what, "timeout": timeout}


def _unique_addresses(hosts, where):
    seen = {}
    for h in hosts:
        for ip in h.ips:
            if ip in seen:
                raise where.error(f"hosts.{h.group}.ip", f"{ip} is given to both {seen[ip]} and {h.name}",
                                  "give each host its own address")
            seen[ip] = h.name


def _check_after(hosts, where):
    names = {h.name for h in hosts}
    groups = {}
    for h in hosts:
        groups.setdefault(h.group, []).append(h.name)
    for h in hosts:
        expanded = []
        for a in h.after:
            if a in names:
                expanded.append(a)
            elif a in groups:  # after = ["worker"]: every worker
                expanded.extend(groups[a])
            else:
                raise where.error(f"hosts.{h.group}.after", f"unknown host '{a}'",
                                  "name a host of this file (known: " + ", ".join(sorted(groups)) + ")")
        h.after = [a for a in expanded if a != h.name] if h.group in h.after else expanded
        if h.name in h.after:
            raise where.error(f"hosts.{h.group}.after", f"{h.name} waits for itself", "remove it from its own after")
    cycle = find_cycle({h.name: h.after for h in hosts})
    if cycle:
        first = next(h for h in hosts if h.name == cycle[0])
        raise where.error(f"hosts.{first.group}.after", "a cycle: " + " -> ".join(cycle + [cycle[0]]),
                          "break it: one of these hosts must start without waiting for the others")


def find_cycle(graph):
    """One cycle in {node: [nodes it waits for]} as a list, or None."""
    state = {}
    for start in graph:
        if state.get(start):
            continue
        stack = [(start, iter(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
                path.append(nxt)
    return None

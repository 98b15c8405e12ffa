"""`vaddr save`: what runs now, written as a lab file that `vaddr up`
reproduces: a lab's own hosts as they were given (placeholders kept), or
plain vhosts with the command line of their first process; and the link
settings in force now, including those set after up."""
import json

from vaddr import links, vhost as vhosts
from vaddr.lab import spec as labspec


def _value(v):
    """A TOML value: json's strings, numbers and lists are TOML's too."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, ensure_ascii=False)


def _key(k):
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def from_vhosts():
    """A LabSpec of the running vhosts (no lab file behind them)."""
    hosts = []
    for vh in vhosts.list_vhosts():
        pids = vh.pids()
        argv = _cmdline(pids[0]) if pids else None
        hosts.append(labspec.HostSpec(vh.name, vh.ip4 or "", vh.ip6 or "", cmd=argv or None, backend=vh.backend))
    return labspec.LabSpec("saved", hosts)


def current_links(spec):
    """[[links]] for the settings in force between the spec's hosts now;
    a pair set the same both ways is written once, with between."""
    names = {ip: h.name for h in spec.hosts for ip in h.ips}
    names.update({ip: links.HOST for ip in ("127.0.0.1", "::1")})
    try:
        rows = links.list_links()
    except Exception:
        rows = []
    settings = {}
    for r in rows:
        a, b = names.get(r["src"]), names.get(r["dst"])
        if not a or not b or (a == links.HOST and b == links.HOST):
            continue
        s = {}
        if r["delay_us"]:
            s["delay"] = f"{r['delay_us'] / 1000:g}ms"
        if r["jitter_us"]:
            s["jitter"] = f"{r['jitter_us'] / 1000:g}ms"
        for k in ("loss", "duplicate", "corrupt"):
            if r[k]:
                s[k] = f"{r[k] * 100:g}%"
        if r["rate_bps"]:
            s["rate"] = f"{r['rate_bps']}bit"
        if s:
            settings[(a, b)] = s
    out = []
    for (a, b), s in sorted(settings.items()):
        if (b, a) in settings and settings[(b, a)] == s:
            if a < b:
                out.append(labspec.LinkSpec(a, b, False, s))
        else:
            out.append(labspec.LinkSpec(a, b, True, s))
    return out


def dump(spec, link_specs):
    lines = ["# written by vaddr save; vaddr up -f THIS_FILE starts it again", "", "[lab]",
             f"name = {_value(spec.name)}"]
    if spec.subnets:
        lines.append(f"subnet = {_value(spec.subnets if len(spec.subnets) > 1 else spec.subnets[0])}")
    if spec.backend != "auto":
        lines.append(f"backend = {_value(spec.backend)}")
    groups = {}
    for h in spec.hosts:
        groups.setdefault(h.group, []).append(h)
    for group, members in groups.items():
        h = members[0]
        counted = group != h.name  # [hosts.worker] count = N made worker1..workerN
        lines += ["", f"[hosts.{group}]"] + ([f"count = {len(members)}"] if counted else [])
        lines.append(f"ip = {_value(h.ips if len(h.ips) > 1 else h.ips[0])}")
        if h.cmd:
            lines.append(f"cmd = {_value(h.cmd)}")
        for key in ("env", "cwd", "user", "backend", "private", "after"):
            value = getattr(h, key)
            if value:
                lines.append(f"{key} = {_value(value)}")
        if h.ready:
            timeout = f"{h.ready['timeout']:g}s"
            lines.append(f"ready = {_value({h.ready['kind']: h.ready['value'], 'timeout': timeout})}")
    for l in link_specs:
        ends = [f"from = {_value(l.a)}", f"to = {_value(l.b)}"] if l.oneway else [f"between = {_value([l.a, l.b])}"]
        lines += ["", "[[links]]", *ends, *(f"{k} = {_value(v)}" for k, v in l.settings.items())]
    return "\n".join(lines) + "\n"

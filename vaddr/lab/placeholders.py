"""Placeholders in a lab host's cmd, env, cwd and ready cmd: {name}, {ip},
{ip6}, {index}, {dir}, {lab}, {labdir} (the lab file's folder), {hosts.NAME.ip},
{hosts.NAME.ip6}, {hosts.NAME.name}.
{{ and }} are literal braces.  A string cmd is split like a shell line first,
then each word is expanded, so a {dir} with spaces stays one argument."""
import os
import re
import shlex

from vaddr.errors import VaddrError

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
KNOWN = "{name}, {ip}, {ip6}, {index}, {dir}, {lab}, {labdir}, {hosts.NAME.ip}, {hosts.NAME.ip6}"


def _value(field, host, spec, workdir):
    own = {"name": host.name, "ip": host.ip4, "ip6": host.ip6, "index": str(host.index), "dir": workdir,
           "lab": spec.name, "labdir": os.path.dirname(spec.path) if spec.path else os.getcwd()}
    if field in own:
        if field in ("ip", "ip6") and not own[field]:
            raise LookupError(f"{{{field}}}: {host.name} has no {'IPv4' if field == 'ip' else 'IPv6'} address",
                              "give the host one, or use the other family's placeholder")
        return own[field]
    parts = field.split(".")
    if len(parts) == 3 and parts[0] == "hosts" and parts[2] in ("ip", "ip6", "name"):
        other = spec.host(parts[1])
        if other is None:
            raise LookupError(f"{{{field}}}: no host named '{parts[1]}'",
                              "name a host of this lab (a count group's hosts are NAME1, NAME2, ...)")
        value = {"ip": other.ip4, "ip6": other.ip6, "name": other.name}[parts[2]]
        if not value:
            raise LookupError(f"{{{field}}}: {other.name} has no {'IPv4' if parts[2] == 'ip' else 'IPv6'} address",
                              "give it one, or use the other family's placeholder")
        return value
    raise LookupError(f"unknown placeholder {{{field}}}", f"known: {KNOWN}; write {{{{ and }}}} for literal braces")


def expand(text, host, spec, workdir):
    def one(m):
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        return _value(m.group(1).strip(), host, spec, workdir)
    return _FIELD.sub(one, text)


def split(cmd):
    """argv of a cmd: a list as given, a string split like a shell line."""
    if isinstance(cmd, list):
        return list(cmd)
    try:
        return shlex.split(cmd)
    except ValueError as e:
        raise LookupError(f"cannot split the command line: {e}", "close the quote")


def host_fields(host, spec, workdir):
    """{"argv", "env", "cwd", "ready"} of a host with every placeholder filled;
    LookupError(message, hint, key) naming the first bad one and where."""
    def at(key, fn):
        try:
            return fn()
        except LookupError as e:
            raise LookupError(*e.args[:2], key) from None

    argv = at("cmd", lambda: [expand(a, host, spec, workdir) for a in split(host.cmd)]) if host.cmd \
        else ["sleep", "infinity"]
    env = {k: at(f"env.{k}", lambda v=v: expand(v, host, spec, workdir)) for k, v in host.env.items()}
    cwd = at("cwd", lambda: expand(host.cwd, host, spec, workdir)) if host.cwd else None
    ready = dict(host.ready) if host.ready else None
    if ready and ready["kind"] == "cmd":
        ready["argv"] = at("ready.cmd", lambda: [expand(a, host, spec, workdir) for a in split(ready["value"])])
    if ready and ready["kind"] == "log":
        ready["value"] = at("ready.log", lambda: expand(ready["value"], host, spec, workdir))
    return {"argv": argv, "env": env, "cwd": cwd, "ready": ready}


def expand_all(spec, where):
    """Check every placeholder of every host now, so a typo stops the file
    before anything starts."""
    for h in spec.hosts:
        try:
            fields = host_fields(h, spec, "/DIR")
            if not fields["argv"]:
                raise LookupError("the command is empty", "write the program and its arguments", "cmd")
        except LookupError as e:
            message, hint, key = e.args
            raise where.error(f"hosts.{h.group}.{key}", message, hint) from None

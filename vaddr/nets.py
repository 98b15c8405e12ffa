"""Lab subnets: IPv4 prefixes whose every address is local to this machine
(one "AnyIP" route) and counts as a lab destination for the hooks.

A vhost whose address lies in a lab subnet needs no route of its own, so its
spawn never loads pyroute2 (~130 ms).  The price, stated in `vaddr net --help`:
every address of the subnet is this machine's, vhost or not."""
import os

from vaddr import registry, runtime
from vaddr.errors import VaddrError
from vaddr.maps import Maps


def parse_prefix(text):
    import _socket
    ip, sep, bits = text.partition("/")
    if not sep:
        raise VaddrError(f"'{text}' needs a prefix length", "write it like 10.0.0.0/24")
    try:
        raw = _socket.inet_pton(_socket.AF_INET, ip)
        plen = int(bits)
    except (OSError, ValueError):
        if ":" in ip:
            raise VaddrError(f"'{text}': IPv6 lab subnets are not supported",
                             "give each IPv6 vhost its address with --ip; IPv6 needs one address per vhost on lo")
        raise VaddrError(f"'{text}' is not an IPv4 prefix", "write it like 10.0.0.0/24")
    if not 8 <= plen <= 32:
        raise VaddrError(f"'{text}' needs a prefix length from /8 to /32", "write it like 10.0.0.0/24")
    value = int.from_bytes(raw, "big") & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
    network = _socket.inet_ntop(_socket.AF_INET, value.to_bytes(4, "big"))
    if raw[0] == 127 or raw[0] >= 224 or value == 0:
        raise VaddrError(f"{text} cannot be a lab subnet", "pick unicast space such as 10.0.0.0/24 (127/8 is local already)")
    return f"{network}/{plen}"


def _dir():
    return os.path.join(runtime.RUN_DIR, "nets")


def _path(prefix):
    return os.path.join(_dir(), prefix.replace("/", "_"))


def list_nets():
    try:
        return sorted(n.replace("_", "/") for n in os.listdir(_dir()))
    except FileNotFoundError:
        return []


def add(text):
    prefix = parse_prefix(text)
    runtime.require_root()
    from vaddr import routes
    with runtime.Lock():
        runtime.ensure_ready()
        known = prefix in list_nets()
        if not known:
            for other in list_nets():
                if _overlaps(prefix, other):
                    raise VaddrError(f"{prefix} overlaps lab subnet {other}", f"remove it first: vaddr net rm {other}")
            os.makedirs(_dir(), exist_ok=True)
            open(_path(prefix), "w").close()  # named before made, for clean-up
        # Made again when known too: a vaddr killed after writing the record
        # left the route or the map entry unmade, and this repairs it.
        try:
            routes.make_local_net(prefix)
            with Maps() as maps:
                maps.add_lab_net(prefix)
        except VaddrError:  # another's route: nothing was made
            if not known:
                os.unlink(_path(prefix))
            raise
        except Exception:
            if not known:
                routes.unmake_local_net(prefix)
                os.unlink(_path(prefix))
            raise
    return prefix


def remove(text):
    prefix = parse_prefix(text)
    runtime.require_root()
    from vaddr import routes
    with runtime.Lock():
        if prefix not in list_nets():
            raise VaddrError(f"{prefix} is not a lab subnet", "see vaddr net ls")
        users = [r.name for r in registry.all_records() if r.ip4 and contains(prefix, r.ip4)]
        if users:
            raise VaddrError(f"vhosts still use {prefix}: {', '.join(users)}", "vaddr rm them first")
        routes.unmake_local_net(prefix)
        if runtime.ready():
            with Maps() as maps:
                maps.remove_lab_net(prefix)
        os.unlink(_path(prefix))
    return prefix


def _to_int(ip):
    import _socket
    return int.from_bytes(_socket.inet_pton(_socket.AF_INET, ip), "big")


def contains(prefix, ip):
    net, plen = prefix.split("/")
    shift = 32 - int(plen)
    return _to_int(net) >> shift == _to_int(ip) >> shift


def _overlaps(a, b):
    return contains(a, b.split("/")[0]) or contains(b, a.split("/")[0])

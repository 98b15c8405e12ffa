"""Links between vhosts: impairments per directed pair of addresses, and
partitions between groups of hosts.

    vaddr.links.set_link("n1", "n2", loss="1%")      # both directions
    vaddr.links.partition([["n1", "n2"], ["n3"]])     # nothing crosses
    vaddr.links.heal()

An endpoint is a vhost's name, an address (a vhost may take it later: the
setting applies when it appears), or "host" (127.0.0.1 and ::1, where
processes outside any vhost come from)."""
from vaddr import addresses, maps, registry, runtime, shaping
from vaddr.errors import VaddrError

HOST = "host"


def parse_percent(text, what="loss"):
    """A probability from "1%", "0.5%" or "1" (a percentage either way)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1] if raw.endswith("%") else raw)
    except ValueError:
        raise VaddrError(f"--{what} {text}: not a percentage", f"write it like --{what} 1% or --{what} 0.1%")
    if not 0 <= value <= 100:
        raise VaddrError(f"--{what} {text}: must be between 0% and 100%", f"write it like --{what} 1%")
    return value / 100


_TIME_UNITS = {"us": 1, "usec": 1, "ms": 1000, "msec": 1000, "s": 1000000, "sec": 1000000}
# tc's units: bit for bits per second, bps for bytes per second.
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}


def _number_unit(text, units, what, example):
    import re
    m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in units:
        raise VaddrError(f"--{what} {text}: unknown value or unit",
                         f"write it like --{what} {example} (units: {', '.join(units)})")
    value = float(m.group(1)) * units[m.group(2).lower()]
    if value < 0:
        raise VaddrError(f"--{what} {text}: cannot be negative", f"write it like --{what} {example}")
    return value


def parse_duration(text, what="delay"):
    """Microseconds from "20ms", "500us", "1s"."""
    us = _number_unit(text, _TIME_UNITS, what, "20ms")
    if us > 60_000_000:
        raise VaddrError(f"--{what} {text}: more than a minute", f"write it like --{what} 20ms")
    return int(round(us))


MAX_RATE_BPS = 10 ** 13


def parse_rate(text):
    """Bits per second from tc's units: "10mbit", "1gbit", "500kbps"."""
    bps = _number_unit(text, _RATE_UNITS, "rate", "10mbit")
    if bps < 8000:
        raise VaddrError(f"--rate {text}: below 8 kbit/s", "write it like --rate 10mbit")
    if bps > MAX_RATE_BPS:
        # Bounded well below 2^64 bit/s, where the map's u64 would wrap.
        raise VaddrError(f"--rate {text}: above 10 tbit/s, faster than loopback can go",
                         "write it like --rate 10gbit, or clear the rate with vaddr link clear")
    return int(bps)


def resolve(endpoint):
    """The addresses an endpoint stands for."""
    if endpoint == HOST:
        return list(addresses.HOST_LAB_ADDRS)
    try:
        ip = addresses.parse_vip(endpoint)[1]
    except VaddrError:
        ip = None
    rec = registry.find(ip or endpoint) if "/" not in endpoint else None
    if (rec is None or rec.backend != "preload") and not (ip and _in_shim_lab(ip)):
        if ip:
            return [ip]
        if rec is None:
            raise VaddrError(f"unknown host '{endpoint}'", "give a vhost name from vaddr ls, an address, or 'host'")
        return list(rec.ips)
    # The shim's packets travel between real 127.x addresses that the tc
    # program does not know: a setting would be shown and do nothing.
    raise VaddrError(f"{endpoint} is an LD_PRELOAD vhost: link settings reach only eBPF vhosts",
                     "run the lab as root on the eBPF backend (sudo vaddr spawn --backend ebpf ...)")


def _in_shim_lab(ip):
    """Whether a shim lab on this machine (any user's whose map we can read)
    holds ip."""
    import glob
    for path in glob.glob("/run/user/*/vaddr/preload.map") + glob.glob("/tmp/vaddr-*/preload.map"):
        try:
            with open(path) as f:
                if any(line.split()[:1] == [ip] for line in f):
                    return True
        except OSError:
            pass
    return False


def _pairs(a, b, oneway):
    """Directed (src, dst) pairs of the same family between two endpoints."""
    out = []
    xs, ys = resolve(a), resolve(b)
    if set(xs) & set(ys):
        raise VaddrError(f"{a} and {b} are the same host: a link joins two", "name two different hosts")
    for x in xs:
        for y in ys:
            if (":" in x) == (":" in y) and x != y:
                out.append((x, y))
                if not oneway:
                    out.append((y, x))
    if not out:
        raise VaddrError(f"{a} and {b} share no address family", "link an IPv4 host to an IPv4 host, IPv6 to IPv6")
    return out


def _require_root():
    import os
    if os.geteuid() != 0:
        raise VaddrError("link shaping needs root (a tc program and a delay line on lo)",
                         "run vaddr link, partition and heal with sudo")


def _attached():
    runtime.ensure_ready()  # the pin folder and bpffs
    shaping.ensure_attached()


def set_link(a, b, loss=None, delay=None, jitter=None, rate=None, duplicate=None, corrupt=None, oneway=False):
    """Set impairments on the link a->b (and b->a unless oneway): loss "1%",
    delay "20ms" (one way), jitter "2ms", rate "10mbit", duplicate "0.1%",
    corrupt "0.1%".  Values are checked before anything changes, so a bad one
    leaves the old settings in force."""
    settings = {"loss": loss, "delay": delay, "jitter": jitter, "rate": rate, "duplicate": duplicate,
                "corrupt": corrupt}
    return set_links([(a, b, settings, oneway)])


def _fields(settings):
    """LinkCfg fields from settings as written ("20ms", "1%"), parsed."""
    parsers = {"loss": lambda v: shaping.loss_units(parse_percent(v)),
               "duplicate": lambda v: shaping.loss_units(parse_percent(v, "duplicate")),
               "corrupt": lambda v: shaping.loss_units(parse_percent(v, "corrupt")),
               "delay": parse_duration, "jitter": lambda v: parse_duration(v, "jitter"), "rate": parse_rate}
    names = {"delay": "delay_us", "jitter": "jitter_us", "rate": "rate_bps"}
    unknown = set(settings) - set(parsers)
    if unknown:
        raise VaddrError(f"unknown link setting {sorted(unknown)[0]!r}", f"use one of {', '.join(parsers)}")
    return {names.get(k, k): parsers[k](v) for k, v in settings.items() if v is not None}


def set_links(items):
    """Many links at once, [(a, b, settings, oneway)], settings as set_link's
    keywords: one lock, one check of the kernel parts, one map opening (a
    lab's links, a mesh).  Every value and endpoint is checked first."""
    changes = [(_pairs(a, b, oneway), _fields(settings)) for a, b, settings, oneway in items]
    _require_root()
    with runtime.Lock():
        _attached()
        with shaping.LinkMaps() as lm:
            cfgs = []
            for pairs, new in changes:
                for src, dst in pairs:
                    cfg = lm.get(src, dst) or maps.LinkCfg()
                    for field, value in new.items():
                        setattr(cfg, field, value)
                    cfgs.append((src, dst, cfg))
            if any(c.delay_us or c.jitter_us or c.rate_bps for _, _, c in cfgs):
                shaping.ensure_delay_line()
            for src, dst, cfg in cfgs:
                lm.put(src, dst, cfg)
    return [pair for pairs, _ in changes for pair in pairs]


def clear_link(a, b, oneway=False):
    """Remove impairments from a link (a partition across it stays until heal)."""
    pairs = _pairs(a, b, oneway)
    with runtime.Lock():
        if not shaping.ready():
            return pairs
        with shaping.LinkMaps() as lm:
            for src, dst in pairs:
                cfg = lm.get(src, dst)
                if cfg and cfg.flags & maps.LINK_PARTITIONED:
                    lm.put(src, dst, maps.LinkCfg(flags=maps.LINK_PARTITIONED))
                else:
                    lm.delete(src, dst)
    return pairs


def partition(groups):
    """No packet crosses between groups; links inside a group are untouched."""
    if len(groups) < 2:
        raise VaddrError("a partition needs at least two groups", "vaddr partition n1,n2 n3")
    members = {}
    for i, group in enumerate(groups):
        for endpoint in group:
            if endpoint in members and members[endpoint] != i:
                raise VaddrError(f"{endpoint} is in two groups", "put each host in one group")
            members[endpoint] = i
    pairs = []
    for i, gi in enumerate(groups):
        for j, gj in enumerate(groups):
            if i < j:
                pairs += [p for a in gi for b in gj for p in _pairs(a, b, oneway=False)]
    _require_root()
    with runtime.Lock():
        _attached()
        with shaping.LinkMaps() as lm:
            for src, dst in pairs:
                cfg = lm.get(src, dst) or maps.LinkCfg()
                cfg.flags |= maps.LINK_PARTITIONED
                lm.put(src, dst, cfg)
    return pairs


def heal(only=None):
    """End every partition (or those of the directed pairs in `only`, as a
    lab heals its own); impairments set with set_link stay."""
    only = None if only is None else {tuple(p) for p in only}
    healed = 0
    with runtime.Lock():
        if not shaping.ready():
            return 0
        with shaping.LinkMaps() as lm:
            for (src, dst), (cfg, _) in lm.all().items():
                if cfg is None or not cfg.flags & maps.LINK_PARTITIONED or (only is not None and (src, dst) not in only):
                    continue
                healed += 1
                cfg.flags &= ~maps.LINK_PARTITIONED
                if cfg.loss or cfg.delay_us or cfg.jitter_us or cfg.rate_bps or cfg.duplicate or cfg.corrupt:
                    lm.put(src, dst, cfg)
                else:
                    lm.delete(src, dst)
    return healed


def forget(ips):
    """Remove every link (settings, partition, counters) with an endpoint
    among ips: what a lab's down does for its hosts' addresses, so that one
    partitioned or shaped from the command line is not found so by the next
    lab on those addresses.  Returns how many directed links went."""
    import ipaddress
    ips = {str(ipaddress.ip_address(ip)) for ip in ips if ip}
    gone = 0
    with runtime.Lock():
        if not shaping.ready():
            return 0
        with shaping.LinkMaps() as lm:
            for src, dst in lm.all():
                if src in ips or dst in ips:
                    lm.delete(src, dst)
                    gone += 1
    return gone


def list_links():
    """Every link with a setting or counters: endpoints, settings, counters."""
    if not shaping.ready():
        return []
    names = {ip: r.name for r in registry.all_records() for ip in r.ips}
    names.update({ip: HOST for ip in addresses.HOST_LAB_ADDRS})
    out = []
    with shaping.LinkMaps() as lm:
        for (src, dst), (cfg, stats) in sorted(lm.all().items()):
            out.append({
                "src": src, "dst": dst, "src_name": names.get(src), "dst_name": names.get(dst),
                "loss": round(shaping.loss_fraction(cfg.loss), 6) if cfg else 0.0,
                "delay_us": cfg.delay_us if cfg else 0, "jitter_us": cfg.jitter_us if cfg else 0,
                "rate_bps": cfg.rate_bps if cfg else 0, "delayed": stats.delayed if stats else 0,
                "duplicate": round(shaping.loss_fraction(cfg.duplicate), 6) if cfg else 0.0,
                "corrupt": round(shaping.loss_fraction(cfg.corrupt), 6) if cfg else 0.0,
                "partitioned": bool(cfg and cfg.flags & maps.LINK_PARTITIONED),
                "packets": stats.packets if stats else 0, "bytes": stats.bytes if stats else 0,
                "dropped": stats.dropped if stats else 0, "dropped_bytes": stats.dropped_bytes if stats else 0,
            })
    return out


DELAY_LINE_HOLDS = 65536  # HEAP_MAX in delayline.c: the queue length it asks for; edt.HOLDS alike


def delay_holder():
    """What holds delayed packets here, as link ls names it."""
    from vaddr import edt
    return f"the kernel's fq on {edt.IFB}" if edt.active() else "the delay line"


def delay_line_drops():
    """Delayed packets lost with the holder's queue full (or, for the delay
    line, its socket's buffer), since it started: counted by the kernel per
    queue, not per link."""
    from vaddr import delaylines, edt
    return edt.dropped() if edt.active() else delaylines.dropped()

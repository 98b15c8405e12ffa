"""Making virtual addresses local, through pyroute2 (imported only here: it costs
~140 ms, so spawns that need no routing never import this module; an IPv4
vIP's own route is one message through the standard library, rtnl.py).

An IPv4 vIP gets a `local` host route in table local; an IPv6 vIP must be an
address on an interface to be bindable, so it goes on lo (nodad).  Either way
the route then gets a preferred source, the host's lab address, so a process
outside any vhost that connects to a vIP comes from that address instead of
from the destination's own address."""
import errno

RTPROT_VADDR = 0x76  # marks our routes so `vaddr reset` can find them
HOST_ADDR = {4: "127.0.0.1", 6: "::1"}
TABLE_LOCAL = 255


class _Shared:
    """One netlink socket per process: a test suite making hundreds of vhosts
    pays for opening it once."""
    ipr = None

    def __enter__(self):
        if _Shared.ipr is None:
            from pyroute2 import IPRoute
            _Shared.ipr = IPRoute()
        return _Shared.ipr

    def __exit__(self, *exc):
        pass


def _ipr():
    return _Shared()


def _lo(ipr):
    return ipr.link_lookup(ifname="lo")[0]


def _family(ip):
    import socket
    return (socket.AF_INET6, 6) if ":" in ip else (socket.AF_INET, 4)


def make_local(ip):
    af, version = _family(ip)
    if version == 4:  # the spawn path: one message, no pyroute2 (rtnl.py)
        from vaddr import rtnl
        rtnl.local_route4("add", ip, RTPROT_VADDR, prefsrc=HOST_ADDR[4])
        return
    plen = 128
    with _ipr() as ipr:
        lo = _lo(ipr)
        route = dict(family=af, dst=ip, dst_len=plen, type="local", table=TABLE_LOCAL, oif=lo, scope=254)
        ipr.addr("add", index=lo, address=ip, prefixlen=plen, flags=0x02)  # IFA_F_NODAD
        # The kernel's own local route for the address has no preferred
        # source, so source selection would pick the address itself.  It
        # is inserted from the DAD work item, nodad or not: wait for it.
        _wait_kernel_route(ipr, ip)
        _ignore_missing(ipr.route, "del", **route)
        # prefsrc is accepted only once the address is local: add, then replace.
        ipr.route("replace", proto=RTPROT_VADDR, prefsrc=HOST_ADDR[version], **route)


def unmake_local(ip):
    af, version = _family(ip)
    if version == 4:
        from vaddr import rtnl
        try:
            rtnl.local_route4("del", ip, RTPROT_VADDR)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT):
                raise
        return
    plen = 128
    with _ipr() as ipr:
        lo = _lo(ipr)
        _ignore_missing(ipr.addr, "del", index=lo, address=ip, prefixlen=plen)
        # The kernel matches scope on delete: host scope, as the route was made.
        _ignore_missing(ipr.route, "del", family=af, dst=ip, dst_len=plen, type="local",
                        table=TABLE_LOCAL, oif=lo, scope=254)


def _wait_kernel_route(ipr, ip, timeout=1.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in ipr.route("dump", family=10, table=TABLE_LOCAL):
            if r.get_attr("RTA_DST") == ip and r["proto"] == 2:  # RTPROT_KERNEL
                return
        time.sleep(0.002)


def _ignore_missing(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as e:  # pyroute2's NetlinkError: already gone is fine
        if getattr(e, "code", None) not in (errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT):
            raise


def make_local_net(prefix):
    """An IPv4 "AnyIP" route: every address of the prefix local at once, so
    vhosts in it need no route of their own.  Idempotent: a route of ours
    already there (a vaddr killed after making it) is kept; a route of
    anyone else's is refused, never replaced."""
    dst, plen = prefix.split("/")
    with _ipr() as ipr:
        route = dict(family=2, dst=dst, dst_len=int(plen), type="local", table=TABLE_LOCAL, oif=_lo(ipr),
                     scope=254, proto=RTPROT_VADDR)
        there = [r for r in ipr.route("dump", family=2, table=TABLE_LOCAL)
                 if r.get_attr("RTA_DST") == dst and r["dst_len"] == int(plen)]
        if there and there[0]["proto"] != RTPROT_VADDR:
            from vaddr.errors import VaddrError
            raise VaddrError(f"{prefix} already has a local route that vaddr did not make",
                             "see ip route show table local; pick another prefix")
        if not there:
            ipr.route("add", **route)
        ipr.route("replace", prefsrc=HOST_ADDR[4], **route)


def unmake_local_net(prefix):
    dst, plen = prefix.split("/")
    with _ipr() as ipr:
        _ignore_missing(ipr.route, "del", family=2, dst=dst, dst_len=int(plen), type="local",
                        table=TABLE_LOCAL, oif=_lo(ipr), scope=254)


def vaddr_routes():
    """Every route vaddr made, found by its protocol mark: "ip" for a vhost's
    own address, "ip/len" for a lab subnet."""
    out = []
    with _ipr() as ipr:
        for af, host_len in ((2, 32), (10, 128)):
            for r in ipr.route("dump", family=af, table=TABLE_LOCAL):
                if r["proto"] == RTPROT_VADDR:
                    dst = r.get_attr("RTA_DST")
                    out.append(dst if r["dst_len"] == host_len else f"{dst}/{r['dst_len']}")
    return out

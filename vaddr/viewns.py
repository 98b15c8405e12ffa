"""What a vhost sees of its interfaces: the contents of its view namespace
(see viewd).  A host of its own has `lo` and one interface with its address
on a subnet, and default routes through that interface; programs that look
for "my address" (NATS, Consul, `hostname -I`) take the first non-loopback
one, and programs that serve only "local" networks (dnsmasq's default) take
the subnet as the neighbourhood.

The subnet: the lab subnet that holds the address (`vaddr net`), else /8 in
127.0.0.0/8, else /24 (IPv4) and /64 (IPv6), as on a typical LAN."""
import ipaddress

IFNAME = "eth0"
# Interface kinds that stand alone (no peer), in order of preference: dummy
# is what a host's spare interface is; not every kernel builds it, and ifb
# (an otherwise idle traffic-control device) serves the same purpose.
KINDS = ("dummy", "ifb")


def prefix_len(ip):
    addr = ipaddress.ip_address(ip)
    if addr.version == 4 and addr in ipaddress.ip_network("127.0.0.0/8"):
        return 8
    from vaddr import nets
    for net in nets.list_nets():
        network = ipaddress.ip_network(net)
        if network.version == addr.version and addr in network:
            return network.prefixlen
    return 24 if addr.version == 4 else 64


def _sysctl(path, value):
    # /proc/sys/net is the namespace of whoever opens it: ours, here.
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)


def configure(ip4, ip6):
    """Set up the current (new, empty) network namespace as the view."""
    from pyroute2 import IPRoute
    # No link-local fe80:: address on eth0: it would be offered as one of
    # the vhost's addresses, and nothing on the machine answers there.
    _sysctl("ipv6/conf/default/addr_gen_mode", "1")
    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")  # lo: 127.0.0.1 and ::1
        error = None
        for kind in KINDS:
            try:
                ipr.link("add", ifname=IFNAME, kind=kind)
                break
            except Exception as e:  # pyroute2's NetlinkError: this kernel lacks the kind
                error = e
        else:
            raise OSError(getattr(error, "code", 95), f"no dummy or ifb interface in this kernel ({error})")
        index = ipr.link_lookup(ifname=IFNAME)[0]
        if not ip6:
            _sysctl(f"ipv6/conf/{IFNAME}/disable_ipv6", "1")
        ipr.link("set", index=index, state="up")
        for ip in (ip4, ip6):
            if ip:
                ipr.addr("add", index=index, address=ip, prefixlen=prefix_len(ip),
                         flags=0x02 if ":" in ip else 0)  # IFA_F_NODAD: usable at once
                ipr.route("add", dst="::/0" if ":" in ip else "0.0.0.0/0", oif=index)

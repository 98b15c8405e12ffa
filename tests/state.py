"""Everything of vaddr's on this machine, read without changing any of it.

The per-test leak check, the session-end check and the fault suite stand on
these reads.  Nothing here calls into vaddr code that cleans up: records are
listed from the folder, cgroups from cgroupfs, map entries through bpf(),
routes and tc filters through netlink, rules through both iptables front
ends, processes from /proc.

State comes in two kinds.  Objects (records, vhost cgroups, map entries,
routes, lo addresses, shim map lines) belong to one vhost, link or subnet and
must go with it.  Infrastructure (the parent cgroup with its hooks, pins, the
tc program, the delay line and its rules) is loaded once and stays until
`vaddr reset`, so a test may leave it, but only whole (see broken_infra)."""
import ctypes
import os
import shutil
import subprocess

from vaddr import bpfsys, cgroups, delaylines, maps, runtime

INFRA = ("parent cgroup", "pin", "tc filter", "udp ports filter", "clsact", "NFQUEUE rule", "delay line", "view daemon",
         "edt filter", "edt device")
SAFE_LO_PREFIXES = ("198.18.", "198.19.", "fd76:6164:")


def snapshot():
    """A set of "kind: item" strings, one per object of vaddr's on the machine."""
    found = set()
    found |= _run_dir_files()
    found |= _cgroup_dirs()
    found |= _map_entries()
    found |= _routes_and_addresses()
    found |= _tc_filters()
    found |= _nfqueue_rules()
    found |= {f"delay line: pid {pid}" for pid in delay_line_pids()}
    found |= _view_daemon()
    found |= _lab_traces()
    return found


def _lab_traces():
    """Labs' state files, namespace records, work folders and names: every
    /etc/hosts block of vaddr's counts, whoever's it is (a machine-wide file)."""
    run = runtime.RUN_DIR
    found = {f"lab: {n}" for n in _listdir(os.path.join(run, "labs"))}
    found |= {f"host namespaces: {n}" for n in _listdir(os.path.join(run, "hostns"))}
    if os.environ.get("VADDR_LAB_DIR"):
        found |= {f"lab folder: {n}" for n in _listdir(os.environ["VADDR_LAB_DIR"])}
    for path in ("/etc/hosts", os.path.join(run, "hosts")):
        try:
            with open(path) as f:
                found |= {f"names: {path}: {line.split()[4]}" for line in f if line.startswith("# BEGIN vaddr lab ")}
        except OSError:
            pass
    return found


def objects(state):
    """The per-object part of a snapshot: what must not outlive a test."""
    return {s for s in state if s.split(":")[0] not in INFRA}


def leaked(before, after):
    """Objects present after a test that were not there before it, sorted."""
    return sorted(objects(after) - objects(before))


def broken_infra(state):
    """Infrastructure present only in part: what the next command would trip on."""
    kinds = {s.split(":")[0] for s in state}
    problems = []
    if "NFQUEUE rule" in kinds and "delay line" not in kinds:
        problems.append("an NFQUEUE rule sends packets to a queue no delay line reads (they are dropped)")
    if "delay line" in kinds and "NFQUEUE rule" not in kinds:
        problems.append("a delay line runs, but no NFQUEUE rule feeds it (delays silently do nothing)")
    shape_pinned = "pin: shape" in state
    filters = {s for s in state if s.startswith("tc filter:")}
    if shape_pinned and len(filters) != 2:
        problems.append(f"the shaping program is pinned but lo has {sorted(filters)} (want ingress and egress)")
    if filters and not shape_pinned:
        problems.append(f"tc filters {sorted(filters)} on lo with no pinned shaping program")
    udp_filter = "udp ports filter: lo ingress" in state
    if ("pin: udp_ports" in state and "pin: ready" in state) != udp_filter and _udp_ports_on():
        problems.append("the UDP port hooks are loaded but lo lacks their filter, or the reverse"
                        f" (filter {'present' if udp_filter else 'missing'})")
    links = sorted(s.split(": ", 1)[1] for s in state if s.startswith("links map:"))
    if links and not (shape_pinned and len(filters) == 2):
        problems.append(f"links {links[:3]} are set, but the shaping program is not attached to lo (not enforced)")
    delayed = sorted(s.split(": ", 1)[1] for s in state if s.startswith("delayed link:"))
    in_kernel = "edt filter" in kinds and "edt device" in kinds
    if delayed and not (in_kernel or ("delay line" in kinds and "NFQUEUE rule" in kinds)):
        problems.append(f"links {delayed[:3]} have delays, but neither the delay line with its rule nor the "
                        "EDT device with its filter is there")
    if ("edt filter" in kinds) != ("edt device" in kinds):
        problems.append("the EDT filter on lo or its ifb device is missing (delayed packets pass undelayed)")
    lines = [s for s in state if s.startswith("delay line:")]
    if len(lines) > delaylines.count():  # one per queue
        problems.append(f"{len(lines)} delay lines run ({sorted(lines)}), more than the {delaylines.count()} "
                        "queues: one is an orphan reset cannot find")
    return problems


def _udp_ports_on():
    try:
        with open(os.path.join(runtime.RUN_DIR, "udp-ports")) as f:
            return f.read().strip() == "on"
    except OSError:
        return False


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _run_dir_files():
    run = runtime.RUN_DIR
    found = {f"record: {n}" for n in _listdir(os.path.join(run, "vhosts"))}
    found |= {f"address link: {n}" for n in _listdir(os.path.join(run, "addrs"))}
    found |= {f"subnet record: {n}" for n in _listdir(os.path.join(run, "nets"))}
    try:
        with open(os.path.join(run, "preload.map")) as f:
            found |= {f"shim map: {line.strip()}" for line in f if line.strip()}
    except FileNotFoundError:
        pass
    return found


def _cgroup_dirs():
    try:
        parent = cgroups.parent_path()
    except Exception:
        return set()  # no cgroup v2 here
    if not os.path.isdir(parent):
        return set()
    found = {"parent cgroup: " + parent}
    for top, dirs, _ in os.walk(parent):
        for d in dirs:
            found.add("cgroup: " + os.path.relpath(os.path.join(top, d), parent))
    return found


def _map_entries():
    found = {f"pin: {n}" for n in _listdir(maps.PIN_DIR)}
    fds = {}
    try:
        for name in maps.MAP_NAMES + maps.LINK_MAP_NAMES:
            path = os.path.join(maps.PIN_DIR, name)
            if os.path.exists(path):
                fds[name] = bpfsys.obj_get(path)
        if "vhosts" in fds:
            found |= {f"vhosts map: cgroup {k.value}" for k in bpfsys.keys(fds["vhosts"], ctypes.c_uint64)}
        if "owners" in fds:
            for k in bpfsys.keys(fds["owners"], maps.AddrKey):
                found.add(f"owners map: {maps._addr_text(bytes(k.ip6))}")
        if "loopbacks" in fds:
            for k in bpfsys.keys(fds["loopbacks"], maps.AddrKey):
                owner = ctypes.c_uint64()
                if bpfsys.lookup(fds["loopbacks"], k, owner):
                    found.add(f"loopbacks map: cgroup {owner.value}")
        if "lab_nets" in fds:
            for k in bpfsys.keys(fds["lab_nets"], maps.LabPrefix):
                ip = maps._addr_text(bytes(k.ip6))
                found.add(f"lab_nets map: {ip}/{k.prefixlen - (0 if ':' in ip else 96)}")
        found |= {f"udp_ports map: {ip} {port}" for ip, port in maps.udp_ports()}
        for name in maps.LINK_MAP_NAMES:
            if name in fds:
                for k in bpfsys.keys(fds[name], maps.LinkKey):
                    found.add(f"{name} map: {'>'.join(maps.key_addrs(k))}")
                    cfg = maps.LinkCfg()
                    if name == "links" and bpfsys.lookup(fds[name], k, cfg) and (
                            cfg.delay_us or cfg.jitter_us or cfg.rate_bps):
                        found.add(f"delayed link: {'>'.join(maps.key_addrs(k))}")
    finally:
        for fd in fds.values():
            os.close(fd)
    return found


def _routes_and_addresses():
    from vaddr import routes
    found = {f"route: {r}" for r in routes.vaddr_routes()}
    with routes._ipr() as ipr:
        for a in ipr.get_addr(index=routes._lo(ipr)):
            ip = a.get_attr("IFA_ADDRESS")
            if ip and ip.startswith(SAFE_LO_PREFIXES):
                found.add(f"lo address: {ip}")
    return found


def _tc_filters():
    from vaddr import edt, routes, shaping
    found = set()
    with routes._ipr() as ipr:
        lo = routes._lo(ipr)
        for q in ipr.get_qdiscs(index=lo):
            if q.get_attr("TCA_KIND") == "clsact":
                found.add("clsact: lo")
        for parent, side in ((0xFFFFFFF2, "ingress"), (0xFFFFFFF3, "egress")):
            try:
                filters = ipr.get_filters(index=lo, parent=parent)
            except Exception:
                continue  # no clsact
            for f in filters:
                if f["info"] >> 16 == shaping.FILTER_PRIO and f.get_attr("TCA_KIND") == "bpf":
                    found.add(f"tc filter: lo {side}")
                if f["info"] >> 16 == shaping.UDP_PORTS_PRIO and f.get_attr("TCA_KIND") == "bpf":
                    found.add(f"udp ports filter: lo {side}")
                if f["info"] >> 16 == edt.TAKE_PRIO and f.get_attr("TCA_KIND") == "bpf":
                    found.add(f"edt filter: lo {side}")
        if ipr.link_lookup(ifname=edt.IFB):
            found.add(f"edt device: {edt.IFB}")
    return found


def _nfqueue_rules():
    found = set()
    for tool in ("iptables-legacy", "ip6tables-legacy", "iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        out = subprocess.run([tool, "-w", "-t", "mangle", "-S", "PREROUTING"], capture_output=True, text=True).stdout
        found |= {f"NFQUEUE rule: {tool} {line}" for line in out.splitlines() if "NFQUEUE" in line}
    return found


def delay_line_pids():
    return _pids_running(b"vaddr.delayd")


def _pids_running(*args):
    """Processes whose command line holds args, in order."""
    pids = []
    n = len(args)
    for entry in _listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(tuple(argv[i:i + n]) == args for i in range(len(argv))):
                pids.append(int(entry))
    return pids


def _view_daemon():
    """The interface-view daemon (infrastructure) and the vhost views it
    holds (objects: each must go when its vhost's last process does)."""
    found = set()
    for pid in _pids_running(b"vaddr.viewd", os.path.join(runtime.RUN_DIR, "view.sock").encode()):
        found.add(f"view daemon: pid {pid}")
        namespaces = set()
        for fd in _listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("net:"):
                namespaces.add(target)
        namespaces.discard(os.readlink("/proc/self/ns/net"))  # the machine's: its home
        found |= {f"view namespace: {ns}" for ns in namespaces}
    return found


def inconsistencies(state=None):
    """Kernel state that no record describes, and infrastructure in part: what
    a killed command may leave only until the next command repairs it."""
    state = snapshot() if state is None else state
    from vaddr import registry
    records = {r.name: r for r in registry.all_records()}
    nets = {s.split(": ", 1)[1].replace("_", "/") for s in state if s.startswith("subnet record:")}
    described_ips = {ip for r in records.values() for ip in r.ips}
    problems = list(broken_infra(state))
    for s in sorted(state):
        kind, _, item = s.partition(": ")
        if kind == "cgroup":
            top = item.split("/")[0]
            if not top.startswith(cgroups.VHOST_PREFIX) or top[len(cgroups.VHOST_PREFIX):] not in records:
                problems.append(f"cgroup {item} has no record")
        elif kind == "owners map" and item not in described_ips:
            problems.append(f"owners map entry {item} has no record")
        elif kind == "route" and item not in described_ips and item not in nets:
            problems.append(f"route {item} has no record")
        elif kind == "lo address" and item not in described_ips:
            problems.append(f"lo address {item} has no record")
        elif kind == "lab_nets map" and item not in nets:
            problems.append(f"lab subnet {item} in the map has no record")
        elif kind == "record" and item.endswith(".tmp"):
            problems.append(f"a temporary record {item} was left")
    problems += _unmade(state, records, nets)
    cgids = {r.cgid for r in records.values() if r.cgid}
    for s in state:
        if s.startswith(("vhosts map: cgroup ", "loopbacks map: cgroup ")):
            cgid = int(s.rsplit(" ", 1)[1])
            if cgid not in cgids:
                problems.append(f"{s.split(':')[0]} entry for cgroup {cgid} has no record")
    return problems


def _unmade(state, records, nets):
    """What a running vhost or a lab subnet should have in the kernel and
    lacks: the other half of "exactly the state the records describe"."""
    from vaddr import nets as lab_nets
    from vaddr.vhost import is_live
    problems = []
    for net in sorted(nets):
        if f"route: {net}" not in state:
            problems.append(f"lab subnet {net} has no local route")
        if f"lab_nets map: {net}" not in state:
            problems.append(f"lab subnet {net} is missing from the lab_nets map")
    for r in records.values():
        if r.backend != "ebpf" or not is_live(r):
            continue
        need = [f"cgroup: {cgroups.VHOST_PREFIX}{r.name}", f"vhosts map: cgroup {r.cgid}",
                f"loopbacks map: cgroup {r.cgid}"]
        need += [f"owners map: {ip}" for ip in r.ips]
        for ip in r.ips:
            if not any(lab_nets.contains(net, ip) for net in nets if ":" not in ip):
                if not ip.startswith("127.") and ip != "::1":
                    need.append(f"route: {ip}")
        problems += [f"running vhost {r.name} lacks {n}" for n in need if n not in state]
    return problems

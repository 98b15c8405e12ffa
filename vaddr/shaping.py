"""Kernel plumbing for link impairments: the tc program on lo (bpf/shape.c),
attached once through pyroute2, and its pinned maps read and written through
bpf() as the socket hooks' are."""
import errno
import os

from vaddr import bpfsys, maps, runtime
from vaddr.errors import VaddrError

SHAPE_PIN = os.path.join(maps.PIN_DIR, "shape")
FILTER_PRIO = 0x7661  # "va": finds our filter among any others on lo
# The UDP port rewriting (bpf/udp_ports.h) runs before the shaping program,
# and the multicast copies (bpf/mcast.h) before the duplicating one: tc runs
# filters in ascending priority.
UDP_PORTS_PRIO = 0x7660
CLSACT_MARK = "clsact-ours"  # in RUN_DIR: vaddr added lo's clsact, so reset removes it


def ready():
    return os.path.exists(SHAPE_PIN)


def _filters_attached():
    """How many of our two filters lo has (ingress shaping, egress duplicates).
    Counted by hook, not by entry: the kernel lists a filter's priority once
    on its own and once with its handle."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        count = 0
        for parent in (0xFFFFFFF2, 0xFFFFFFF3):
            try:
                count += any(f["info"] >> 16 == FILTER_PRIO for f in ipr.get_filters(index=lo, parent=parent))
            except Exception:
                pass  # no clsact
        return count


def ensure_attached():
    """Compile and attach the tc program unless done.  Caller holds the lock.
    The filters are looked for, not only the pin: a reset killed half-way, or
    another tool clearing lo's qdiscs, leaves a pin that enforces nothing."""
    if ready() and _filters_attached() == 2:
        return
    runtime.ensure_bpffs()
    from vaddr import edt, loader
    from pyroute2 import IPRoute
    bpf, fn, dup, take, why_not_edt = _load()
    with IPRoute() as ipr:
        lo = _ensure_clsact(ipr)
        # A vaddr killed after attaching but before pinning left our filters
        # behind: replace them, so the next command repairs rather than fails.
        for parent in ("ffff:fff2", "ffff:fff3"):
            try:
                ipr.tc("del-filter", "bpf", lo, parent=parent, prio=FILTER_PRIO)
            except Exception:
                pass  # none there
        ipr.tc("add-filter", "bpf", lo, ":1", fd=fn.fd, name="vaddr_shape", parent="ffff:fff2",
               classid=1, direct_action=True, prio=FILTER_PRIO)
        ipr.tc("add-filter", "bpf", lo, ":1", fd=dup.fd, name="vaddr_duplicate", parent="ffff:fff3",
               classid=1, direct_action=True, prio=FILTER_PRIO)
    if take is not None:
        _repin(take, edt.TAKE_PIN)
        why_not_edt = edt.setup(take)
    edt.record(why_not_edt)
    _repin(fn, SHAPE_PIN)  # last: the pin says all of it is in place


def _repin(fn, path):
    from vaddr import loader
    if os.path.exists(path):
        os.unlink(path)
    loader.pin(fn, path)


def _load():
    """(bpf, shaping, duplicating, EDT classifier or None, why not EDT):
    departure times where the kernel should have them (edt.predict) and
    the verifier agrees; else the same programs marking for the delay line."""
    from vaddr import edt, loader
    why = edt.predict()
    if why is None:
        try:
            with loader.quiet_stderr() as said:
                bpf = loader.compile_program("shape.c", edt=True)
                fns = [bpf.load_func(name, 3) for name in (b"vaddr_shape", b"vaddr_duplicate", b"vaddr_edt_take")]
            return (bpf, *fns, None)
        except Exception as e:
            why = f"the kernel refused departure times ({said.reason or loader._last_line(e)})"
    bpf = loader.compile_program("shape.c")
    return bpf, bpf.load_func(b"vaddr_shape", 3), bpf.load_func(b"vaddr_duplicate", 3), None, why


def _ensure_clsact(ipr):
    """lo's index, with a clsact qdisc (marked as ours if vaddr added it)."""
    lo = ipr.link_lookup(ifname="lo")[0]
    try:
        ipr.tc("add", "clsact", lo)
        open(os.path.join(runtime.RUN_DIR, CLSACT_MARK), "w").close()
    except Exception as e:
        if getattr(e, "code", None) != errno.EEXIST:
            raise VaddrError(f"cannot add a clsact qdisc to lo: {e}", "the kernel needs CONFIG_NET_SCH_INGRESS")
    return lo


def attach_udp_ports(ports_fn, mcast_fn=None):
    """The UDP port rewriting on lo's ingress and the multicast copies on its
    egress (replacing any a killed vaddr left).  With the socket hooks, under
    the lock; reset removes them."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        lo = _ensure_clsact(ipr)
        for parent, fn, name in (("ffff:fff2", ports_fn, "vaddr_udp_ports"), ("ffff:fff3", mcast_fn, "vaddr_mcast")):
            try:
                ipr.tc("del-filter", "bpf", lo, parent=parent, prio=UDP_PORTS_PRIO)
            except Exception:
                pass  # none there
            if fn is None:
                continue  # the kernel refused the multicast copies (loader.multicast says why)
            try:
                ipr.tc("add-filter", "bpf", lo, ":1", fd=fn.fd, name=name, parent=parent,
                       classid=1, direct_action=True, prio=UDP_PORTS_PRIO)
            except Exception as e:
                raise VaddrError(f"cannot attach {name} to lo: {e}", "run vaddr doctor") from None


def ensure_delay_line():
    """Make sure delayed packets are held: by fq (vaddr.edt) where this
    kernel allows, its parts repaired if a tool removed one; else by the
    delay lines and their rules (vaddr.delaylines), started unless done."""
    from vaddr import delaylines, edt
    if edt.active() and (edt.intact() or edt.repair()):
        return
    delaylines.ensure()


def detach():
    """Remove our filters (shaping, UDP ports), and lo's clsact if vaddr
    added it; stop the delay line and its rules, or remove the EDT device.
    For reset."""
    from vaddr import delaylines, edt
    delaylines.stop()
    edt.stop()
    marker = os.path.join(runtime.RUN_DIR, CLSACT_MARK)
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for parent, prio in (("ffff:fff2", FILTER_PRIO), ("ffff:fff3", FILTER_PRIO),  # ingress, egress
                             ("ffff:fff2", UDP_PORTS_PRIO), ("ffff:fff3", UDP_PORTS_PRIO)):
            try:
                ipr.tc("del-filter", "bpf", lo, parent=parent, prio=prio)
            except Exception:
                pass  # not attached
        if os.path.exists(marker):
            try:
                ipr.tc("del", "clsact", lo)
            except Exception:
                pass
            os.unlink(marker)


class LinkMaps:
    """The link maps, open for a batch of changes.  On leaving, the links
    generation is bumped once, so each delay line re-reads what changed."""

    def __init__(self):
        self.changed = False
        try:
            self.fds = {n: bpfsys.obj_get(os.path.join(maps.PIN_DIR, n)) for n in maps.LINK_MAP_NAMES}
        except OSError as e:
            raise VaddrError(f"cannot open the link maps: {e.strerror}", "run as root; vaddr link set loads them")
        try:
            self.gen_fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "links_gen"))
        except OSError:
            self.gen_fd = None  # pinned by an older vaddr: its delay line reads every packet's link
        try:
            self.clocks_fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "link_clocks"))
        except OSError:
            self.clocks_fd = None  # no departure times on this kernel

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.changed and self.gen_fd is not None:
            import ctypes
            gen, zero = ctypes.c_uint64(), ctypes.c_uint32(0)
            bpfsys.lookup(self.gen_fd, zero, gen)
            gen.value += 1
            bpfsys.update(self.gen_fd, zero, gen)
        for fd in [*self.fds.values(), self.gen_fd, self.clocks_fd]:
            if fd is not None:
                os.close(fd)

    def get(self, src, dst):
        cfg = maps.LinkCfg()
        return cfg if bpfsys.lookup(self.fds["links"], maps.link_key(src, dst), cfg) else None

    def put(self, src, dst, cfg):
        maps.update(self.fds, "links", maps.link_key(src, dst), cfg)
        self.changed = True

    def delete(self, src, dst):
        key = maps.link_key(src, dst)
        bpfsys.delete(self.fds["links"], key)
        bpfsys.delete(self.fds["link_stats"], key)
        if self.clocks_fd is not None:  # a link set again later starts on a fresh clock
            bpfsys.delete(self.clocks_fd, key)
        self.changed = True

    def all(self):
        """{(src, dst): (LinkCfg or None, LinkStats or None)} for set links and counted ones."""
        out = {}
        for name in ("links", "link_stats"):
            for key in bpfsys.keys(self.fds[name], maps.LinkKey):
                value = maps.LinkCfg() if name == "links" else maps.LinkStats()
                if bpfsys.lookup(self.fds[name], key, value):
                    pair = maps.key_addrs(key)
                    cfg, stats = out.get(pair, (None, None))
                    out[pair] = (value, stats) if name == "links" else (cfg, value)
        return out


def loss_units(fraction):
    """A probability as the program compares it: a share of 2^32."""
    return min(int(round(fraction * 2 ** 32)), 2 ** 32 - 1)


def loss_fraction(units):
    return units / 2 ** 32



"""Delays in the kernel: departure times (EDT) held by sch_fq on an ifb
device, where the kernel has bpf_skb_set_tstamp (5.18+), ifb and sch_fq;
the delay line (vaddr.delaylines) serves elsewhere.  Kernel plumbing, used
by vaddr.shaping.

bpf/shape.c gives a delayed packet its release time on lo's ingress and
passes it to vaddr_edt_take, a classifier whose mirred action redirects it
to IFB.  fq there releases it at that time (`nopacing`: only the times we
set), and ifb hands it back to lo's receive path, past tc.  The choice,
and why EDT is not used where it is not, is kept in RUN_DIR (PATH_FILE)."""
import ctypes
import os

from vaddr import bpfsys, maps, runtime

IFB = "vaddr-edt"
TAKE_PRIO = 0x7662  # just after shaping.FILTER_PRIO on lo's ingress
TAKE_PIN = os.path.join(maps.PIN_DIR, "shape-take")
PATH_FILE = "delay-path"  # in RUN_DIR: "edt", or "delay line: why not EDT"
HOLDS = 65536  # packets fq holds, as many as one delay line: beyond that, counted drops
# fq drops what departs further ahead than its horizon: a minute's delay,
# a minute's jitter, and room for a rate-limited link's backlog.
HORIZON_US = 600 * 10 ** 6


def record(why_not):
    """Write the delay path this machine uses: EDT, or the delay line and why."""
    with open(os.path.join(runtime.RUN_DIR, PATH_FILE), "w") as f:
        f.write("edt" if why_not is None else f"delay line: {why_not}")


def recorded():
    """What record() wrote since the last reset, or None."""
    from vaddr import loader
    return loader._read_run_file(PATH_FILE)


def active():
    return recorded() == "edt"


def setup(take_fn):
    """Make IFB with fq and attach take_fn on lo's ingress, redirecting to
    it; then turn EDT on in the shaping program.  None when done, else why
    not (and nothing of it left).  Caller holds the lock."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    with IPRoute() as ipr:
        try:
            if not ipr.link_lookup(ifname=IFB):
                ipr.link("add", ifname=IFB, kind="ifb")
            ifb = ipr.link_lookup(ifname=IFB)[0]
            ipr.link("set", index=ifb, state="up")
        except NetlinkError as e:
            _remove(ipr)
            return f"no ifb device ({os.strerror(e.code)}: the kernel needs CONFIG_IFB)"
        # pyroute2 has no fq module: iproute2's tc, which every distribution ships.
        done = _tc("qdisc", "replace", "dev", IFB, "root", "fq", "nopacing", "limit", str(HOLDS),
                   "flow_limit", str(HOLDS), "horizon", f"{HORIZON_US}us", "horizon_drop")
        if done.returncode:
            _remove(ipr)
            why = (done.stderr.strip().splitlines() or ["refused"])[0]
            return f"no sch_fq (tc: {why})"
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.tc("del-filter", "bpf", lo, parent="ffff:fff2", prio=TAKE_PRIO)
        except NetlinkError:
            pass  # none there
        try:
            ipr.tc("add-filter", "bpf", lo, ":1", fd=take_fn.fd, name="vaddr_edt_take", parent="ffff:fff2",
                   classid=1, prio=TAKE_PRIO,
                   action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb})
        except NetlinkError as e:
            _remove(ipr)
            return f"no mirred action ({os.strerror(e.code)}: the kernel needs CONFIG_NET_ACT_MIRRED)"
    _set_on(1)
    return None


def _set_on(value):
    fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "edt_on"))
    try:
        bpfsys.update(fd, ctypes.c_uint32(0), ctypes.c_uint32(value))
    finally:
        os.close(fd)


def _remove(ipr):
    lo = ipr.link_lookup(ifname="lo")[0]
    try:
        ipr.tc("del-filter", "bpf", lo, parent="ffff:fff2", prio=TAKE_PRIO)
    except Exception:
        pass  # not attached, or no clsact
    for index in ipr.link_lookup(ifname=IFB):
        ipr.link("del", index=index)


def intact():
    """True if the device, its fq and the filter feeding it are all there
    (another tool may have removed one; then the next link set repairs)."""
    from pyroute2 import IPRoute
    if stats() is None:
        return False
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            return any(f["info"] >> 16 == TAKE_PRIO for f in ipr.get_filters(index=lo, parent=0xFFFFFFF2))
        except Exception:
            return False


def repair():
    """Set up again from the pinned classifier, after a tool removed a part;
    True if EDT is on again (else the delay line must serve)."""
    fd = bpfsys.obj_get(TAKE_PIN)
    try:
        why = setup(_Fd(fd))
    finally:
        os.close(fd)
    record(why)
    if why:
        _set_on(0)
    return why is None


class _Fd:
    """A pinned program's descriptor where setup() wants a bcc function."""

    def __init__(self, fd):
        self.fd = fd


def _tc(*args):
    import shutil
    import subprocess
    tc = shutil.which("tc") or "/sbin/tc"
    try:
        return subprocess.run([tc, *args], capture_output=True, text=True)
    except FileNotFoundError:
        return subprocess.CompletedProcess(args, 127, "", "tc is not installed (apt install iproute2)")


def stop():
    """Remove the device and the filter feeding it.  For reset."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        _remove(ipr)


def stats():
    """(packets held now, packets dropped) by fq on IFB since it was made,
    or None without the device or its fq."""
    import json
    done = _tc("-s", "-j", "qdisc", "show", "dev", IFB)
    if done.returncode:
        return None
    for q in json.loads(done.stdout or "[]"):
        if q.get("kind") == "fq":
            return q.get("qlen", 0), q.get("drops", 0)
    return None


def dropped():
    return (stats() or (0, 0))[1]


def predict():
    """Why this kernel cannot take the EDT path, from what it was built
    with, before anything is loaded; None if it should.  For doctor."""
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if release < (5, 18):
        return f"kernel {os.uname().release} lacks bpf_skb_set_tstamp (5.18+)"
    from vaddr.delaylines import _kernel_has
    for option, what in (("NET_SCH_FQ", "sch_fq"), ("IFB", "ifb"), ("NET_ACT_MIRRED", "the mirred action")):
        if _kernel_has(option) is False:
            return f"this kernel has no {what}"
    return None

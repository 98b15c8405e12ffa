"""`vaddr up -d`: the lab's owner as a detached process.

vaddr forks; the child leaves the terminal's session (setsid, and a second
fork so no shell waits for it), brings the lab up, and reports each ready host
and the outcome through a pipe, which the foreground vaddr prints.  Then it
stays, as the parent of the hosts' processes, until `vaddr down` (over the
control socket) or a SIGTERM takes the lab down."""
import json
import os
import signal
import threading

from vaddr.errors import VaddrError


def up_detached(lab, ready):
    """Return once every host of lab is ready in a detached owner, calling
    ready(name, ips) as each is; a VaddrError if up failed (the owner has
    then taken down what it started)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            _owner(lab, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)  # the first child exits at once; the owner is its child
    with os.fdopen(r) as reports:
        for line in reports:
            msg = json.loads(line)
            if "ready" in msg:
                ready(msg["ready"], msg["ips"])
            elif "error" in msg:
                raise VaddrError(msg["error"], msg.get("hint"), msg.get("code", 1))
            elif msg.get("up"):
                return msg["owner"]
    raise VaddrError(f"lab {lab.name}'s owner ended before the lab was up", "run vaddr up without -d to see why")


def _owner(lab, w):
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")  # hold no folder busy; the lab's paths are absolute
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    out = os.fdopen(w, "w", buffering=1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def progress(event, host):
        if event == "ready":
            out.write(json.dumps({"ready": host.name, "ips": host.spec.ips}) + "\n")
    try:
        lab.up(on_progress=progress)
    except VaddrError as e:
        out.write(json.dumps({"error": e.message, "hint": e.hint, "code": e.exit_code}) + "\n")
        return
    except BaseException as e:
        out.write(json.dumps({"error": f"lab {lab.name} failed to come up: {type(e).__name__}: {e}",
                              "hint": "run vaddr up without -d to see more"}) + "\n")
        return
    out.write(json.dumps({"up": True, "owner": os.getpid()}) + "\n")
    out.close()
    server = lab._server
    while not lab.down_event.wait(0.02):  # `vaddr down` waits for this process to end
        if stop.is_set():
            lab.down()
    server.drain()

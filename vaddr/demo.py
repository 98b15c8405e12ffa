"""`make demo`: three vhosts with their own addresses, one port, talking to
each other and to the host.  Uses 198.18.100.0/24 (RFC 2544 benchmark space),
guarded by an unreachable route so no packet can leave the machine."""
import json
import socket
import sys
import time

import vaddr
from vaddr import runtime

NODES = {"node1": "198.18.100.1", "node2": "198.18.100.2", "node3": "198.18.100.3"}
PORT = 8000
GUARD = ("198.18.0.0", 15)

SERVER = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %d)); s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(("I am %%s, you are %%s" %% (c.getsockname()[0], peer[0])).encode()); c.close()
""" % PORT

CLIENT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    c = socket.create_connection((target, %d), timeout=5)
    out[target] = [c.getsockname()[0], c.recv(200).decode()]
print(json.dumps(out))
""" % PORT


PROBE = r"""
import socket, sys, time
t = time.monotonic()
try:
    c = socket.create_connection((sys.argv[1], %d), timeout=1.0); c.recv(200)
    print("%%.1f ms" %% ((time.monotonic() - t) * 1e3))
except OSError:
    print("timed out after 1 s (no packet crosses)")
""" % PORT


def _timed_connect(name, ip):
    proc = vaddr.spawn([sys.executable, "-c", PROBE, ip], name=name, stdout=vaddr.PIPE)
    out = proc.stdout.read().decode().strip()
    proc.wait()
    return out


def _guard(op):
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        try:
            ipr.route(op, dst=GUARD[0], dst_len=GUARD[1], type="unreachable", proto=0x77)
            return True
        except Exception:
            return False


def step(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main():
    if not sys.stdout.isatty():
        globals()["step"] = lambda text: print(f"\n== {text}", flush=True)
    step("Loading vaddr's socket hooks (bcc compiles them once per boot)")
    started = time.monotonic()
    runtime.require_root()
    with runtime.Lock():
        loaded = runtime.ensure_ready()
    print(f"   {'compiled and attached' if loaded else 'already loaded'} in {time.monotonic() - started:.2f}s")
    guarded = _guard("add")
    servers = []
    try:
        step(f"Three vhosts, each running the same server on 0.0.0.0:{PORT}")
        for name, ip in NODES.items():
            proc = vaddr.spawn([sys.executable, "-c", SERVER], ip=ip, name=name, stdout=vaddr.PIPE)
            assert proc.stdout.readline().strip() == b"ready"
            servers.append(proc)
            print(f"   {name}  {ip}:{PORT}  pid {proc.pid}")

        step("Each vhost connects to the other two")
        for name, ip in NODES.items():
            others = [o for o in NODES.values() if o != ip]
            client = vaddr.spawn([sys.executable, "-c", CLIENT, *others], name=name, stdout=vaddr.PIPE)
            for target, (me, reply) in json.loads(client.stdout.read()).items():
                print(f"   {name} ({me}) -> {target}:{PORT}   server says: \"{reply}\"")
            client.wait()

        step("The host (outside any vhost) connects to each")
        for name, ip in NODES.items():
            with socket.create_connection((ip, PORT), timeout=5) as c:
                print(f"   host ({c.getsockname()[0]}) -> {ip}:{PORT}   server says: \"{c.recv(200).decode()}\"")

        step("Links: 20 ms each way between node1 and node2, then node1 cut off")
        from vaddr import links
        links.set_link("node1", "node2", delay="20ms")
        print(f"   node1 -> node2 with 20 ms each way:  connect + reply (2 round trips) in {_timed_connect('node1', NODES['node2'])}")
        print(f"   node1 -> node3, link untouched:       connect + reply (2 round trips) in {_timed_connect('node1', NODES['node3'])}")
        links.clear_link("node1", "node2")
        links.partition([["node1"], ["node2", "node3"]])
        print(f"   vaddr partition node1 node2,node3:    node1 -> node2 {_timed_connect('node1', NODES['node2'])}")
        links.heal()
        print(f"   vaddr heal:                           node1 -> node2 {_timed_connect('node1', NODES['node2'])}")

        step("vaddr ls")
        for h in vaddr.list_vhosts():
            print(f"   {h.name:6} {h.ip:15} pids {h.pids()}")
    finally:
        step("Cleaning up")
        for proc in servers:
            proc.kill()
            proc.wait()
        if not vaddr.list_vhosts():
            from vaddr.reset import reset
            reset()
        if guarded:
            _guard("del")
        print("   done: no vhosts, hooks, pins or routes left behind")


if __name__ == "__main__":
    try:
        main()
    except vaddr.VaddrError as err:
        from vaddr.commands import error_line
        sys.exit(error_line(err))

"""The owner's control socket: `vaddr stop/start/restart/kill/pause/resume
NAME` and `vaddr down` from any shell reach the process that runs the lab,
which is the parent of its hosts (so it sees their exits and can start them
again).  One JSON request per connection, one JSON answer.  The socket is
the owner's user's alone (its folder is)."""
import json
import os
import socket
import threading

from vaddr.errors import VaddrError
from vaddr.lab import store

OPS = ("start", "stop", "restart", "kill", "pause", "resume", "down", "ping")


class Server:
    def __init__(self, lab):
        self.lab = lab
        self.path = store.control_path(lab.name)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.closed = False
        self.inflight = 0
        self.idle = threading.Condition()
        threading.Thread(target=self._loop, daemon=True, name=f"vaddr-lab-{lab.name}").start()

    def _loop(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with self.idle:
            self.inflight += 1
        try:
            self._answer(conn)
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def drain(self, timeout=5.0):
        """Wait until every request has been answered (a `down` ends the
        owner, which must first tell the asker it is done)."""
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout)

    def _answer(self, conn):
        with conn:
            try:
                request = json.loads(conn.makefile().readline())
                answer = {"ok": self.handle(request)}
            except VaddrError as e:
                answer = {"error": e.message, "hint": e.hint, "code": e.exit_code}
            except Exception as e:  # an answer, not a dead control thread
                import traceback
                answer = {"error": f"{type(e).__name__}: {e} (a bug in vaddr)",
                          "hint": "please report it with: " + traceback.format_exc().strip().replace("\n", " | ")}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass

    def handle(self, req):
        op, lab = req.get("op"), self.lab
        if op == "ping":
            return os.getpid()
        if op == "down":
            return lab.down(keep_data=bool(req.get("keep_data")))
        if op not in OPS:
            raise VaddrError(f"unknown request '{op}'", "use a vaddr of the same version as the lab's owner")
        host = lab[req["host"]] if req.get("host") in lab else None
        if host is None:
            raise VaddrError(f"lab {lab.name} has no host named '{req.get('host')}'", "see vaddr status")
        with lab.op_lock:  # one fault at a time; not lab.mutex, which the reapers need meanwhile
            if op == "start":
                host.start()
            elif op == "stop":
                return host.stop(req.get("timeout"))
            elif op == "restart":
                host.restart(req.get("timeout"))
            elif op == "kill":
                host.kill(int(req.get("signal", 9)))
            elif op == "pause":
                host.pause()
            elif op == "resume":
                host.resume()
        if op in ("start", "restart") and req.get("wait", True):
            host.wait_ready()
        return host.to_dict()

    def close(self):
        self.closed = True
        try:
            self.sock.close()
            os.unlink(self.path)
        except OSError:
            pass


def serve(lab):
    return Server(lab)


def request(name, op, **args):
    """Send one request to lab name's owner; its answer, or a VaddrError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(store.control_path(name))
    except OSError:
        sock.close()
        raise VaddrError(f"lab {name} has no owner running (its vaddr up was killed)",
                         f"vaddr down {name}, then vaddr up again")
    with sock:
        sock.sendall(json.dumps(dict(args, op=op)).encode() + b"\n")
        line = sock.makefile().readline()
    if not line:
        raise VaddrError(f"lab {name}'s owner ended while answering", "see vaddr status")
    answer = json.loads(line)
    if "error" in answer:
        raise VaddrError(answer["error"], answer.get("hint"), answer.get("code", 1))
    return answer["ok"]

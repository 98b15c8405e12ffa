"""One host of a running lab: its vhost, its main process and what became of
it, its work folder and log, readiness, and the node faults (stop, start,
kill, pause, resume) that tests and demos play with."""
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from vaddr import vhost as vhosts
from vaddr.errors import VaddrError
from vaddr.lab import isolate
from vaddr.lab.placeholders import host_fields

STATES = ("defined", "starting", "ready", "exited", "stopped", "paused")


class Host:
    """A lab host.  The lab's process is the parent of its main process, so
    an exit is seen at once, with its status."""

    def __init__(self, lab, spec):
        self.lab, self.spec = lab, spec
        self.state, self.exit_code = "defined", None
        self.proc, self.started, self.restarts = None, None, 0
        self._stopping = False
        self._log_seen = 0  # bytes of the log already searched for a ready line

    name = property(lambda self: self.spec.name)
    ip = property(lambda self: self.spec.ip4 or self.spec.ip6)
    ip4 = property(lambda self: self.spec.ip4 or None)
    ip6 = property(lambda self: self.spec.ip6 or None)

    @property
    def backend(self):
        return self.spec.backend or self.lab.backend

    @property
    def folder(self):
        return os.path.join(self.lab.root, self.name)

    @property
    def dir(self):
        """{dir}: the host's work folder, kept until down."""
        return os.path.join(self.folder, "work")

    @property
    def log_path(self):
        return os.path.join(self.folder, "output.log")

    def fields(self):
        try:
            return host_fields(self.spec, self.lab.spec, self.dir)
        except LookupError as e:
            raise VaddrError(f"lab {self.lab.name}: hosts.{self.spec.group}.{e.args[2]}: {e.args[0]}", e.args[1])

    def _user(self):
        return vhosts.User(self.spec.user) if self.spec.user is not None else None

    def check(self):
        """Refuse now what would fail at start: a missing program, a user, a
        folder the user cannot enter, private under the shim."""
        f = self.fields()
        cwd = f["cwd"] or self.lab.cwd
        path_env = dict(os.environ, **f["env"])
        if "/" in f["argv"][0] and not os.path.isabs(f["argv"][0]):
            f["argv"][0] = os.path.join(cwd, f["argv"][0])
        try:
            vhosts.resolve_command(f["argv"], path_env)
        except VaddrError as e:
            raise VaddrError(f"lab {self.lab.name}: host {self.name}: {e.message}", e.hint, e.exit_code)
        user = self._user()
        if f["cwd"] and user is not None and os.geteuid() == 0 and os.path.isdir(cwd) and not user.can_enter(cwd):
            # It would start there and fail at its first chdir or getcwd
            # (initdb: "could not change directory"), far from the cause.
            raise VaddrError(f"lab {self.lab.name}: host {self.name}: its user {user.name} cannot enter "
                             f"its cwd {cwd}", f"let {user.name} into {cwd}, or leave cwd out")
        if self.spec.private and not isolate.available(self.backend):
            raise VaddrError(f"lab {self.lab.name}: host {self.name}: private folders need the eBPF backend "
                             "(a mount namespace, as root)", "run the lab as root, or remove private")
        for path in self.spec.private:
            if os.path.exists(path) and not os.path.isdir(path):
                raise VaddrError(f"lab {self.lab.name}: host {self.name}: private: {path} is not a folder",
                                 "name folders only (a private folder covers one with an empty one of its own)")

    def _default_cwd(self, user):
        """The lab file's folder; for a host whose user cannot enter it (a
        lab in root's home, a host run as postgres), its own work folder,
        as `runuser -l` starts in the user's home: else its first chdir or
        getcwd fails far from the cause (initdb: "could not change
        directory")."""
        if user is None or os.geteuid() != 0 or user.can_enter(self.lab.cwd):
            return self.lab.cwd
        with open(self.log_path, "a") as log:
            log.write(f"--- vaddr: {user.name} cannot enter {self.lab.cwd}: {self.name} runs in {self.dir}\n")
        return self.dir

    def _binds(self, user):
        out = []
        for path in self.spec.private:
            src = os.path.join(self.folder, "private", path.strip("/").replace("/", "_"))
            os.makedirs(src, exist_ok=True)
            if os.path.isdir(path) and path not in self.lab.made_mount_points:
                # An empty copy of the folder it covers, as a fresh install leaves it: a daemon that
                # drops to its own user (rabbitmq-server, postgres) can write in /var/lib/NAME.
                st = os.stat(path)
                os.chown(src, st.st_uid, st.st_gid)
                os.chmod(src, st.st_mode & 0o7777)
            else:
                if not os.path.isdir(path):
                    os.makedirs(path, exist_ok=True)  # a mount point; down removes it again if still empty
                    self.lab.made_mount_points.add(path)
                if user is not None:
                    os.chown(src, user.uid, user.gid)
            out.append((src, path))
        return out

    def start(self):
        """Start the host's command in its vhost (made anew)."""
        if self.running():
            raise VaddrError(f"host {self.name} is already running", f"vaddr restart {self.name} to start it anew")
        f = self.fields()
        os.makedirs(self.dir, exist_ok=True)
        user = self._user()
        if user is not None and os.geteuid() == 0:
            for d in (self.folder, self.dir):
                os.chown(d, user.uid, user.gid)
        # HOME, USER, LOGNAME and SHELL of the host's user, as `runuser -l`
        # gives them (Patroni keeps ~/.pgpass), unless env names its own.
        base = user.environ() if user is not None else os.environ
        env = dict(base, **f["env"], VADDR_LAB=self.lab.name, VADDR_HOST=self.name)
        cwd = f["cwd"] or self._default_cwd(user)
        argv = f["argv"]
        if isolate.available(self.backend):
            argv, user = isolate.start_argv(argv, self.name, self._binds(user), cwd, user), None
        else:
            argv = isolate.cd_argv(argv, cwd)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(log, f"--- vaddr: {self.name} starting: {' '.join(f['argv'])}\n".encode())
            self._log_seen = os.fstat(log).st_size
            self._stopping = False
            # Kept for the lab's life: a stopped host's address stays local,
            # so peers are refused instead of reaching the machine's routes.
            self.proc = vhosts.spawn(argv, ip=self.spec.ips, name=self.name, backend=self.backend, env=env,
                                     user=user, keep=True, stdin=vhosts.DEVNULL, stdout=log, stderr=log,
                                     host_loopback=self.spec.host_loopback,
                                     host_interfaces=self.spec.host_interfaces, command=f["argv"])
        finally:
            os.close(log)
        if isolate.available(self.backend):
            isolate.record(self.name, self.proc.pid)
        if self.started is not None:
            self.restarts += 1
        self.started, self.exit_code = time.time(), None
        self.state = "starting" if self.spec.ready else "ready"
        self.lab.reaper.watch(self.proc, self._reaped)
        self.lab.changed()

    def _reaped(self, proc, code):
        with self.lab.mutex:
            if self.proc is proc:
                self.exit_code = code
                self.state = "stopped" if self._stopping else "exited"
                isolate.forget(self.name)
        self.lab.changed()

    def running(self):
        """Whether the main process runs.  Only the reaper thread waits for
        it: a second waitpid here would race it for the exit status."""
        return self.proc is not None and self.proc.returncode is None

    def pids(self):
        found = vhosts.find(self.name)
        return found.pids() if found else []

    def _vhost(self):
        found = vhosts.find(self.name)
        if found is None or not found.pids():
            raise VaddrError(f"host {self.name} is not running ({self.describe()})", f"vaddr start {self.name}")
        return found

    def stop(self, timeout=None):
        """SIGTERM to every process, SIGKILL after the grace period; the
        vhost (its address) and the work folder stay.  Returns the pids that needed SIGKILL."""
        self._stopping = True
        found = vhosts.find(self.name)
        killed = []
        if found is not None:
            if self.state == "paused":
                found.resume()
            killed = vhosts.stop(self.name, timeout=self.lab.grace if timeout is None else timeout)
        self._settle()
        return killed

    def kill(self, sig=signal.SIGKILL):
        """A crash: sig to every process at once, no grace."""
        vh = self._vhost()
        if self.state == "paused" and sig in (signal.SIGTERM, signal.SIGINT):
            vh.resume()
        vh.signal(sig)
        if sig == signal.SIGKILL:
            self._settle()

    def pause(self):
        self._vhost().pause()
        self.state = "paused"
        self.lab.changed()

    def resume(self):
        self._vhost().resume()
        if self.state == "paused":
            self.state = "ready" if self.running() else "exited"
        self.lab.changed()

    def restart(self, timeout=None):
        self.stop(timeout)
        self.start()

    def _settle(self, timeout=5.0):
        """Wait until the reaper has seen the main process end."""
        deadline = time.monotonic() + timeout
        while self.state in ("starting", "ready", "paused") and self.proc is not None and time.monotonic() < deadline:
            time.sleep(0.005)

    # ---- readiness ----------------------------------------------------------

    def probe(self, fields=None):
        """True once the host's ready condition holds (or it has none)."""
        ready = (fields or self.fields())["ready"]
        if ready is None:
            return True
        if ready["kind"] == "tcp":
            return self._tcp_open(ready["value"])
        if ready["kind"] == "log":
            return self._log_has(ready["value"])
        return self.run(ready["argv"], timeout=max(1.0, ready["timeout"] / 3)).returncode == 0

    def _tcp_open(self, port):
        target = self.ip
        if self.backend == "preload":
            from vaddr.backends import preload
            if target in (real := preload.read_map()):  # where the shim really put it
                target, port = real[target], preload.real_port(port)
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((target, port)) == 0:
                return True
        # A port open only on the host's own loopback (serf's RPC, admin ports) counts too.
        found = vhosts.find(self.name)
        return bool(found and found.pids() and found.answers_on_loopback(port))

    def _log_has(self, text):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_seen)
                return text.encode() in f.read()
        except FileNotFoundError:
            return False

    def wait_ready(self, timeout=None):
        """Block until ready; a VaddrError naming the host if it exits or the time runs out."""
        f = self.fields()
        limit = timeout if timeout is not None else (f["ready"]["timeout"] if f["ready"] else 30.0)
        deadline = time.monotonic() + limit
        delay = 0.005
        while True:
            if not self.running() and self.state not in ("ready",):
                raise self.failure("exited before it was ready")
            if self.probe(f):
                if self.state == "starting":
                    self.state = "ready"
                    self.lab.changed()
                return
            if time.monotonic() > deadline:
                raise self.failure(f"was not ready after {limit:g}s (waiting for {describe_ready(f['ready'])})")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def failure(self, what):
        tail = self.logs(10)
        code = f" (exit status {self.exit_code})" if self.exit_code is not None else ""
        body = "".join(f"\n  {self.name} | {line}" for line in tail.splitlines())
        return VaddrError(f"lab {self.lab.name}: host {self.name} {what}{code}; last lines of its output:{body}"
                          if tail else f"lab {self.lab.name}: host {self.name} {what}{code}; it printed nothing",
                          f"see its whole output in {self.log_path}")

    # ---- inside the host ----------------------------------------------------

    def run(self, argv, timeout=None, input=None, user=None):
        """Run argv in the host and wait: a subprocess.CompletedProcess with
        stdout and stderr as text."""
        argv, user = isolate.enter_argv(self.name, list(argv), vhosts.User(user) if user is not None else None)
        proc = vhosts.spawn(argv, name=self.name, backend=self.backend, user=user, stdin=vhosts.PIPE,
                            stdout=vhosts.PIPE, stderr=vhosts.PIPE)
        out = {}
        readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()), daemon=True)
                   for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
        for t in readers:
            t.start()
        try:
            if input:
                proc.stdin.write(input if isinstance(input, bytes) else input.encode())
        except BrokenPipeError:
            pass
        proc.stdin.close()
        try:
            code = proc.wait(timeout)
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise subprocess.TimeoutExpired(argv, timeout)
        for t in readers:
            t.join()
        proc.stdout.close()
        proc.stderr.close()
        return subprocess.CompletedProcess(argv, code, out["stdout"].decode(errors="replace"),
                                           out["stderr"].decode(errors="replace"))

    def logs(self, lines=None):
        """The host's output (the last `lines` lines), from its log file."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        if lines is None:
            return text
        return "".join(text.splitlines(True)[-lines:]) if lines else ""

    def describe(self):
        if self.state == "exited":
            return f"exited with status {self.exit_code}"
        if self.state == "stopped":
            return "stopped"
        return self.state

    def to_dict(self):
        up = self.running() or bool(vhosts.find(self.name))
        return {"name": self.name, "state": self.state, "exit_code": self.exit_code, "ip4": self.ip4, "ip6": self.ip6,
                "pids": self.pids() if up else [], "uptime": round(time.time() - self.started, 3)
                if self.started and self.state in ("starting", "ready", "paused") else None,
                "restarts": self.restarts, "log": self.log_path, "dir": self.dir, "backend": self.backend}

    def remove_folder(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def describe_ready(ready):
    if ready["kind"] == "tcp":
        return f"TCP port {ready['value']}"
    if ready["kind"] == "log":
        return f"'{ready['value']}' in its output"
    return f"`{' '.join(ready['argv'])}` to succeed"

"""The one helper for each job the tests repeat: run a command in a vhost and
capture its output, run small Python programs there that report what their
sockets saw (one JSON line per fact), wait for a listener, and build the
command lines of the clusters the tests start.  Every wait has a timeout that
fails the test; none blocks on a read past it."""
import json
import os
import selectors
import subprocess
import sys
import textwrap
import time

import pytest

import vaddr
from vaddr import edt, maps

# For tests of the NFQUEUE delay line's own machinery (rules, processes):
# where the kernel holds delays in fq, none of it runs, and
# tests/test_delay_path.py tests what does.
delay_line_only = pytest.mark.skipif(
    edt.predict() is None, reason="this kernel holds delays in fq (EDT): no delay line runs here")


def communicate(proc, timeout, input=None):
    """(stdout, stderr) text of a vaddr.Process or Popen, read until it exits;
    after `timeout` seconds it is killed and the test fails, naming what it printed."""
    if input is not None:
        proc.stdin.write(input.encode() if isinstance(input, str) else input)
        proc.stdin.close()
    chunks = {proc.stdout: [], proc.stderr: []}
    sel = selectors.DefaultSelector()
    for f in chunks:
        if f is not None:
            sel.register(f, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise AssertionError(f"still running after {timeout}s; printed {_text(chunks[proc.stdout])[-400:]!r} "
                                 f"{_text(chunks[proc.stderr])[-400:]!r}")
        for key, _ in sel.select(left):
            data = os.read(key.fileobj.fileno(), 65536)
            if data:
                chunks[key.fileobj].append(data)
            else:
                sel.unregister(key.fileobj)
    left = max(0.1, deadline - time.monotonic())
    try:
        proc.wait(timeout=left)
    except (TimeoutError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
        raise AssertionError(f"closed its output but did not exit within {timeout}s")
    return _text(chunks[proc.stdout]), _text(chunks[proc.stderr])


def _text(parts):
    return b"".join(parts).decode(errors="replace")


def run_in(ip, argv, backend="ebpf", timeout=30, input=None, **kwargs):
    """Run argv in the vhost with address ip (made or joined) to its end:
    (exit status, stdout, stderr)."""
    proc = vaddr.spawn(list(argv), ip=ip, backend=backend, stdout=vaddr.PIPE, stderr=vaddr.PIPE,
                       stdin=vaddr.PIPE if input is not None else None, **kwargs)
    out, err = communicate(proc, timeout, input=input)
    return proc.returncode, out, err


_PRELUDE = "import json, socket, sys, os, time\ndef fact(**kw): print(json.dumps(kw), flush=True)\n"


def py_argv(code):
    return [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)]


def run_py(code, ip=None, backend="ebpf", timeout=20, **kwargs):
    """Run Python code in a vhost to completion: (exit status, [facts], stderr)."""
    status, out, err = run_in(ip, py_argv(code), backend=backend, timeout=timeout, **kwargs)
    return status, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def start_py(code, ip=None, name=None, backend="ebpf", **kwargs):
    """Start Python code in a vhost; read its facts with wait_fact."""
    return vaddr.spawn(py_argv(code), ip=ip, name=name, backend=backend, stdout=vaddr.PIPE, stderr=vaddr.PIPE,
                       **kwargs)


def counting_receiver(port, silence=1.0, rcvbuf=1 << 24, force=False):
    """Code for start_py: a UDP socket on port counts datagrams until none
    came for `silence` seconds, then reports fact(received=N).  force sets
    the buffer past the system's limit (SO_RCVBUFFORCE, root)."""
    option = 33 if force else "socket.SO_RCVBUF"  # SO_RCVBUFFORCE has no name in Python's socket module
    return f"""
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, {option}, {rcvbuf})
u.bind(("", {port})); u.settimeout({silence}); fact(ready=1)
n = 0
try:
    while True:
        u.recv(100); n += 1
except socket.timeout:
    fact(received=n)
"""


def until(fn, what, timeout=30, every=0.2):
    """fn()'s first true result, tried every `every` seconds; fails naming
    `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} after {timeout}s"
        time.sleep(every)


def wait_fact(proc, timeout=10):
    """The next JSON fact a running program prints; fails after timeout."""
    buf = getattr(proc, "_fact_buf", b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no fact from the program in the vhost within {timeout}s (got {buf!r})")
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(left):
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the program ended without a fact: {err[-800:]}")
            buf += data
        sel.close()
    line, _, proc._fact_buf = buf.partition(b"\n")
    return json.loads(line)


def wait_listening(ip, port, udp=False, timeout=15, run_dir=None):
    """Until a socket listens on ip:port, seen by ss without connecting to it.
    A vIP served by the LD_PRELOAD shim listens on its real address: the map
    in run_dir (default: this process's) says which."""
    flags = "-Hlnu" if udp else "-Hlnt"
    deadline = time.monotonic() + timeout
    while True:
        real, real_port = ip, port
        if _shim_real(ip, run_dir):  # looked up each time: the spawn may not have mapped it yet
            from vaddr.backends import preload
            real, real_port = _shim_real(ip, run_dir), preload.real_port(port)
        host = f"[{real}]" if ":" in real else real
        out = subprocess.run(["ss", flags, "src", f"{host}:{real_port}"], capture_output=True, text=True).stdout
        steered = maps.udp_ports() if udp else maps.steered_listeners()
        if out.strip() or (real, real_port) in steered:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {ip}:{port} ({'udp' if udp else 'tcp'}) after {timeout}s")
        time.sleep(0.02)


def _shim_real(ip, run_dir):
    from vaddr import runtime
    path = os.path.join(run_dir or runtime.RUN_DIR, "preload.map")
    try:
        with open(path) as f:
            return dict(line.split() for line in f if len(line.split()) == 2).get(ip)
    except OSError:
        return None


def etcd_argv(etcd, name, ip, members, data_dir, fast=True):
    """An etcd member's command line: clients on 0.0.0.0:2379 and peers on
    0.0.0.0:2380 (the same ports in every vhost), advertised at its vIP.
    members: {name: ip} of the whole cluster."""
    cluster = ",".join(f"{n}=http://{a}:2380" for n, a in members.items())
    argv = [etcd, "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", f"http://{ip}:2379",
            "--listen-peer-urls", "http://0.0.0.0:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
            "--initial-cluster", cluster, "--initial-cluster-state", "new"]
    if fast:
        argv += ["--heartbeat-interval", "50", "--election-timeout", "500"]
    return argv


def nginx_site(folder, text, listen="listen 8080;", daemon=False):
    """A folder holding an nginx config that serves `text` at / and logs each
    client's address first on its line in folder/access.log.  daemon: nginx's
    own default, a master that daemonizes and renames itself, and a worker."""
    (folder / "www").mkdir(parents=True)
    (folder / "www" / "index.html").write_text(text)
    d = folder
    (folder / "nginx.conf").write_text(f"""
        {"daemon on; master_process on;" if daemon else "daemon off; master_process off;"}
        pid {d}/pid; error_log {d}/error.log;
        events {{}}
        http {{ access_log {d}/access.log; client_body_temp_path {d}; proxy_temp_path {d};
                fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
                server {{ {listen} root {d}/www; }} }}""")
    return folder / "nginx.conf"

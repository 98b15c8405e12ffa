"""Helpers that run small Python programs inside vhosts and read what their
sockets saw.  Each program prints one JSON line per fact."""
import json
import sys
import textwrap

import vaddr


def run_py(code, ip=None, name=None, backend="ebpf", timeout=20, **kwargs):
    """Run code in a vhost to completion; returns (exit code, [json facts], stderr)."""
    proc = start_py(code, ip=ip, name=name, backend=backend, **kwargs)
    try:
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")], err.decode()


def start_py(code, ip=None, name=None, backend="ebpf", **kwargs):
    prelude = "import json, socket, sys, os, time\ndef fact(**kw): print(json.dumps(kw), flush=True)\n"
    return vaddr.spawn([sys.executable, "-c", prelude + textwrap.dedent(code)], ip=ip, name=name,
                       backend=backend, stdout=vaddr.PIPE, stderr=vaddr.PIPE, **kwargs)


def wait_fact(proc, timeout=10):
    """The next JSON fact a running program prints."""
    import select
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError("no output from the program in the vhost")
    line = proc.stdout.readline().decode()
    if not line:
        raise AssertionError(f"program ended: {proc.stderr.read().decode()}")
    return json.loads(line)


def nginx_site(folder, text, listen="listen 8080;"):
    """A folder holding an nginx config that serves `text` at / and logs each
    client's address first on its line in folder/access.log."""
    (folder / "www").mkdir(parents=True)
    (folder / "www" / "index.html").write_text(text)
    d = folder
    (folder / "nginx.conf").write_text(f"""
        daemon off; master_process off; pid {d}/pid; error_log {d}/error.log;
        events {{}}
        http {{ access_log {d}/access.log; client_body_temp_path {d}; proxy_temp_path {d};
                fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
                server {{ {listen} root {d}/www; }} }}""")
    return folder / "nginx.conf"

"""`vaddr run`, `vaddr save` and `vaddr shell`: wrapping a test command in a
lab, writing what runs as a lab file, and a shell inside a host."""
import os
import signal
import sys

import click

from vaddr.cli import _COMMAND_ARGS, CONTEXT, _command, main
from vaddr.cli_lab import _FILE, _progress


@main.command(context_settings=dict(CONTEXT, ignore_unknown_options=True, allow_interspersed_args=False))
@_FILE
@_COMMAND_ARGS
def run(path, argv):
    """Bring a lab up, run CMD on the machine, take the lab down whatever
    happens, and exit with CMD's status.

    \b
    CMD sees VADDR_LAB=NAME and VADDR_HOST_<HOST>=<address> for every host
    (upper-cased, '-' as '_').  Ctrl-C and SIGTERM reach CMD, then the lab
    goes down.  This wraps a test suite in any language:

    \b
      vaddr run -f cluster.toml -- go test ./...
      vaddr run -- pytest -x tests/integration
    """
    from vaddr import vhost
    from vaddr.lab.lab import Lab
    argv = _command(argv, "vaddr run -f lab.toml -- CMD")
    lab = Lab.from_file(path)
    got = []

    def on_signal(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = 130
    try:
        lab.up(on_progress=_progress(lambda line: click.echo(f"vaddr | {line}", err=True), len(lab.hosts)))
        env = dict(os.environ, VADDR_LAB=lab.name)
        for h in lab.hosts:
            env[f"VADDR_HOST_{h.name.upper().replace('-', '_')}"] = h.ip
        proc = vhost.spawn_client(argv, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            sig = got[-1] if got else signal.SIGINT
            proc.send_signal(sig)  # a terminal's Ctrl-C reached CMD already; a SIGTERM to vaddr did not
            try:
                proc.wait(10)
            except TimeoutError:
                proc.kill()
                proc.wait()
            code = 128 + sig
    except KeyboardInterrupt:
        code = 128 + (got[-1] if got else signal.SIGINT)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the teardown itself is not interrupted
        lab.down()
    sys.exit(code)


@main.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.argument("name", required=False, metavar="[LAB]")
def save(file, name):
    """Write what runs now as a lab file that vaddr up reproduces: the lab
    that is up (its hosts as given, links as set now), or, with no lab up,
    every vhost with its command line.

    \b
      vaddr save snapshot.toml && vaddr down && vaddr up -d -f snapshot.toml
    """
    from vaddr.lab import savefile, store
    from vaddr.lab.lab import Lab
    if name or store.names():
        spec = Lab.attach(store.pick(name)).spec
    else:
        spec = savefile.from_vhosts()
        if not spec.hosts:
            from vaddr.errors import VaddrError
            raise VaddrError("nothing runs: no lab is up and there are no vhosts", "start some, then vaddr save")
    text = savefile.dump(spec, savefile.current_links(spec))
    try:
        with open(file, "w") as f:
            f.write(text)
    except OSError as e:
        from vaddr.errors import VaddrError
        raise VaddrError(f"cannot write {file}: {e.strerror}", "give a path in a folder you can write to")
    click.echo(f"wrote {file}: {len(spec.hosts)} hosts; vaddr up -f {file} starts them")


@main.command(context_settings=CONTEXT)
@click.argument("host")
def shell(host):
    """An interactive shell ($SHELL) inside a host, with a prompt naming it."""
    from vaddr import commands
    sh = os.environ.get("SHELL") or "/bin/sh"
    os.environ["PS1"] = f"[{host}] \\u@\\h:\\w\\$ " if "bash" in sh else f"[{host}] $ "
    argv = [sh]
    rc = None
    if os.path.basename(sh) == "bash":  # bash's own rc files set PS1 again: name the host after them
        import tempfile
        fd, rc = tempfile.mkstemp(prefix="vaddr-shell-", suffix=".bashrc")
        with os.fdopen(fd, "w") as f:
            f.write(f'[ -f ~/.bashrc ] && . ~/.bashrc\nPS1="[{host}] $PS1"\n')
        argv = [sh, "--rcfile", rc, "-i"]
    try:
        code = commands.run_in_vhost("exec", host, argv)
    finally:
        if rc:
            os.unlink(rc)
    sys.exit(code)

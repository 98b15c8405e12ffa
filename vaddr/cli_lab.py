"""The lab commands of the CLI: up, down, status, logs, the node faults,
run, save and shell.  Parse, call vaddr.lab, print."""
import json
import os
import signal
import sys
import time

import click

from vaddr.cli import CONTEXT, _age, _print_table, main
from vaddr.errors import VaddrError

_FILE = click.option("-f", "--file", "path", default="vaddr.toml", show_default=True, metavar="FILE",
                     help="The lab file.")
_COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "red")


def _terminate_as_interrupt():
    """SIGTERM and SIGHUP take the lab down as Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


SAY_EACH_UP_TO = 20  # hosts: a bigger lab reports a count, not a line a host


def _ready_counter(out, total):
    """ready(name, ips): a line a host for a small lab; for a big one a count
    at every tenth (on a terminal, one line rewritten), so 1,000 hosts do not
    scroll 1,000 lines past."""
    seen = [0]
    tty = sys.stderr.isatty()

    def ready(name, ips):
        seen[0] += 1
        n = seen[0]
        if total <= SAY_EACH_UP_TO:
            out(f"{name} ready ({', '.join(ips)})")
        elif tty:
            click.echo(f"\r{n}/{total} hosts ready", err=True, nl=n == total)
        elif n == total or n % max(1, total // 10) == 0:
            out(f"{n}/{total} hosts ready")
    return ready


def _progress(out, total):
    ready = _ready_counter(out, total)

    def show(event, host):
        if event == "ready":
            ready(host.name, host.spec.ips)
    return show


@main.command(context_settings=CONTEXT)
@click.argument("file", required=False, metavar="[FILE]")
@_FILE
@click.option("-d", "--detach", is_flag=True, help="Return once every host is ready; the lab keeps running.")
def up(file, path, detach):
    """Start a lab: every host in `after` order, ready checks, then links.

    \b
    In the foreground every host's output is shown, prefixed with its name,
    and Ctrl-C (or SIGTERM) takes the whole lab down.  With -d, vaddr returns
    once all hosts are ready and prints them; vaddr down ends the lab.

    \b
      vaddr up -d                  the lab of ./vaddr.toml
      vaddr up kv.toml             in the foreground (or -f kv.toml)
    """
    from vaddr.lab.lab import Lab
    path = _one_file(file, path)
    lab = Lab.from_file(path)
    if detach:
        from vaddr.lab import daemon
        daemon.up_detached(lab, _ready_counter(lambda line: click.echo(line, err=True), len(lab.hosts)))
        _status_table([lab.name])
        return
    _terminate_as_interrupt()
    say = lambda line: click.echo(click.style("vaddr | ", dim=True) + line, err=True)  # noqa: E731
    try:
        lab.up(on_progress=_progress(say, len(lab.hosts)))
        say(f"lab {lab.name} is up: {len(lab.hosts)} hosts; Ctrl-C takes it down")
        _stream(lab)
    except KeyboardInterrupt:
        pass
    finally:
        if lab.is_up:
            say(f"taking lab {lab.name} down")
            lab.down()


def _one_file(file, path):
    """FILE as an argument or -f FILE, as compose and containerlab users type it."""
    if file and path != "vaddr.toml" and file != path:
        raise VaddrError(f"two lab files given: {file} and -f {path}", "give one")
    return file or path


def _stream(lab):
    """Every host's output as it comes, prefixed, until the lab goes down or every host has ended."""
    width = max(len(h.name) for h in lab.hosts)
    tty = sys.stdout.isatty()
    offsets = {}
    while not lab.down_event.is_set():
        for i, h in enumerate(lab.hosts):
            try:
                with open(h.log_path, "rb") as f:
                    f.seek(offsets.get(h.name, 0))
                    chunk = f.read()
            except FileNotFoundError:
                continue
            cut = chunk.rfind(b"\n") + 1
            offsets[h.name] = offsets.get(h.name, 0) + cut
            for line in chunk[:cut].decode(errors="replace").splitlines():
                prefix = f"{h.name:<{width}} | "
                click.echo((click.style(prefix, fg=_COLOURS[i % len(_COLOURS)]) if tty else prefix) + line)
        if all(h.state in ("exited", "stopped") for h in lab.hosts) and not any(h.running() for h in lab.hosts):
            click.echo(f"vaddr | every host of lab {lab.name} has ended", err=True)
            return
        time.sleep(0.1)


@main.command(context_settings=CONTEXT)
@click.argument("name", required=False, metavar="[LAB]")
@_FILE
@click.option("--keep-data", is_flag=True, help="Keep the hosts' work folders (their {dir}, logs).")
def down(name, path, keep_data):
    """Take a lab down: stop its hosts (SIGTERM, then SIGKILL after the
    grace period), remove their vhosts, links, names and subnet.

    \b
    LAB (a lab's name, or its file) defaults to the lab of the lab file, or
    the only lab that is up.
    """
    from vaddr.lab import control, store
    from vaddr.lab.lab import Lab
    name = store.pick(name, path)
    state = store.load(name)
    if store.owner_alive(state):
        killed = control.request(name, "down", keep_data=keep_data)
        _wait_owner_gone(state)
    else:
        killed = Lab.attach(name).down(keep_data=keep_data)
    for host, pids in (killed or {}).items():
        click.echo(f"{host}: SIGKILL after the grace period for pid {', '.join(map(str, pids))}")
    click.echo(f"lab {name} is down" + (f" (work folders kept in {state['root']})" if keep_data else ""))


def _wait_owner_gone(state, timeout=5.0):
    from vaddr.lab import store
    deadline = time.monotonic() + timeout
    while store.owner_alive(state) and time.monotonic() < deadline:
        time.sleep(0.01)


def _lab_status(name):
    from vaddr.lab.lab import Lab
    lab = Lab.attach(name)
    status = lab.status()
    status["owner"] = lab.owner_alive
    if not lab.owner_alive:  # nobody saw the exits: say what the kernel shows
        for h in status["hosts"]:
            if h["state"] in ("starting", "ready", "paused") and not h["pids"]:
                h["state"], h["exit_code"] = "exited", None
    return status


def _status_table(labs):
    for name in labs:
        s = _lab_status(name)
        click.echo(f"lab {name}" + ("" if s["owner"] else " (its vaddr up is gone: vaddr down it)"))
        rows = [("HOST", "STATE", "ADDRESSES", "PIDS", "UPTIME", "RESTARTS")]
        for h in s["hosts"]:
            state = h["state"] if h["state"] != "exited" else f"exited ({h['exit_code']})" \
                if h["exit_code"] is not None else "exited"
            pids = ",".join(map(str, h["pids"][:3])) + (f",+{len(h['pids']) - 3}" if len(h["pids"]) > 3 else "")
            rows.append((h["name"], state, " ".join(filter(None, (h["ip4"], h["ip6"]))), pids or "-",
                         _age(h["uptime"]) if h["uptime"] is not None else "-", str(h["restarts"])))
        _print_table(rows)
        if s["links"]:
            click.echo("")
            rows = [("FROM", "TO", "SETTINGS", "CUT", "PASSED", "DROPPED")]
            for r in s["links"]:
                settings = [f"delay {r['delay_us'] / 1000:g}ms" if r["delay_us"] else "",
                            f"loss {r['loss'] * 100:g}%" if r["loss"] else "",
                            f"rate {r['rate_bps'] / 1e6:g}mbit" if r["rate_bps"] else ""]
                rows.append((r["src_name"], r["dst_name"], " ".join(filter(None, settings)) or "-",
                             "yes" if r["partitioned"] else "", f"{r['packets']} pkts", f"{r['dropped']} pkts"))
            _print_table(rows)


@main.command(context_settings=CONTEXT)
@click.argument("name", required=False, metavar="[LAB]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
def status(name, as_json):
    """Labs that are up: each host's state, addresses, pids, uptime and
    restarts; each link's settings and counters."""
    from vaddr.lab import store
    labs = [store.pick(name)] if name else store.names()
    if as_json:
        click.echo(json.dumps([_lab_status(n) for n in labs], indent=2))
    elif not labs:
        click.echo("no lab is up (start one with: vaddr up -d)")
    else:
        _status_table(labs)


@main.command(context_settings=CONTEXT)
@click.argument("host")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(0), default=None, help="Only the last N lines.")
def logs(host, follow, lines):
    """The output of a lab host (also kept in its work folder)."""
    from vaddr.lab import store
    _, state = store.find_host(host)
    path = os.path.join(state["root"], host, "output.log")
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
            shown = text.splitlines(True)[-lines:] if lines else ([] if lines == 0 else text.splitlines(True))
            click.echo("".join(shown), nl=False)
            while follow:
                chunk = f.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                else:
                    time.sleep(0.2)
    except FileNotFoundError:
        raise VaddrError(f"host {host} has no output yet", f"vaddr status; its log will be {path}")
    except KeyboardInterrupt:
        pass


def _fault(op, host, **args):
    from vaddr.lab import control, store
    name, _ = store.find_host(host)
    return control.request(name, op, host=host, **args)


def _hosts(hosts):
    """HOSTS, each found before any is touched: a typo stops nothing."""
    from vaddr.lab import store
    for host in hosts:
        store.find_host(host)
    return dict.fromkeys(hosts)  # once each, in the order given


_HOSTS = click.argument("hosts", nargs=-1, required=True, metavar="HOST...")


@main.command(context_settings=CONTEXT)
@_HOSTS
@click.option("-t", "--timeout", type=click.FloatRange(0, 3600), default=None, metavar="SECONDS",
              help="Grace period before SIGKILL (default: the lab's grace, 10 s).")
def stop(hosts, timeout):
    """Stop lab hosts as an operator would (SIGTERM, then SIGKILL); vaddr start brings them back."""
    for host in _hosts(hosts):
        killed = _fault("stop", host, timeout=timeout)
        click.echo(f"stopped {host}" + (f" (SIGKILL for pid {', '.join(map(str, killed))})" if killed else ""))


@main.command(context_settings=CONTEXT)
@_HOSTS
@click.option("-t", "--timeout", type=click.FloatRange(0, 3600), default=None, metavar="SECONDS",
              help="Grace period before SIGKILL.")
def restart(hosts, timeout):
    """Stop, then start lab hosts one after another, each waited for until it is ready."""
    for host in _hosts(hosts):
        _fault("restart", host, timeout=timeout)
        click.echo(f"restarted {host}")


@main.command(context_settings=CONTEXT)
@_HOSTS
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, metavar="SIGNAL",
              help="Signal name or number: KILL (a crash), TERM, HUP, ...")
def kill(hosts, sig):
    """Send SIGNAL to every process of lab hosts at once: a crash, no grace."""
    try:
        num = int(sig) if sig.isdigit() else signal.Signals["SIG" + sig.upper().removeprefix("SIG")].value
    except KeyError:
        raise VaddrError(f"unknown signal '{sig}'", "give a name like KILL, TERM, HUP, or a number")
    for host in _hosts(hosts):
        _fault("kill", host, signal=num)
        click.echo(f"sent SIG{signal.Signals(num).name[3:]} to {host}")


def _plain_fault(op, doc, done):
    """A node fault with no options: `vaddr OP HOST...`."""
    def command(hosts):
        for host in _hosts(hosts):
            _fault(op, host)
            click.echo(done.format(host=host))
    command.__doc__ = doc
    main.command(op, context_settings=CONTEXT)(_HOSTS(command))


_plain_fault("start", "Start stopped or exited lab hosts again, each waited for until it is ready.",
             "started {host}")
_plain_fault("pause", "Freeze every process of lab hosts: hosts that hang rather than die.",
             "paused {host} (vaddr resume {host} thaws it)")
_plain_fault("resume", "Thaw paused lab hosts.", "resumed {host}")


from vaddr import cli_lab_run  # noqa: E402,F401  (run, save, shell)

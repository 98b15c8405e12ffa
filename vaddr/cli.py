"""The `vaddr` command line: parse, call the API, print.  `spawn` and `exec`
usually arrive through the click-free fast path in entry.py; this module is
the reference for their options and serves every other case."""
import json
import os
import sys
import time

import click

from vaddr import commands, listing
from vaddr.errors import VaddrError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(err):
    click.echo(commands.error_line(err), err=True)
    sys.exit(err.exit_code)


class _Group(click.Group):
    """Turns a VaddrError anywhere below into one line on stderr."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaddrError as err:
            _fail(err)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="vaddr")
def main():
    """Give unmodified programs their own IP address, without network namespaces.

    \b
    A vhost is a process tree that believes its host has address ADDR:
    wildcard binds land on ADDR, its connections and datagrams come from
    ADDR, and many vhosts can listen on the same port.

    \b
      vaddr spawn --ip 10.0.0.2 -- redis-server      run a server in a vhost
      vaddr spawn --ip 10.0.0.3 -- redis-cli -h 10.0.0.2 ping
      vaddr ls                                       what runs where
      vaddr up -d -f cluster.toml                    a whole lab from one file (then status, stop, down)
      vaddr reset                                    remove everything vaddr made
    """


_COMMAND_ARGS = click.argument("argv", nargs=-1, required=False, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")


def _command(argv, example):
    """The command after --.  Options vaddr does not know arrive here too
    (click passes them through so that CMD's own options are kept): name them."""
    if not argv:
        raise VaddrError("no command given", f"put the command after --, e.g. {example}")
    if argv[0].startswith("-") and argv[0] != "-":
        raise VaddrError(f"unknown option {argv[0]}", f"see --help; put the command after --, e.g. {example}")
    return list(argv)


@main.command(context_settings=dict(CONTEXT, ignore_unknown_options=True, allow_interspersed_args=False))
@click.option("--ip", "ips", multiple=True, metavar="ADDR",
              help="The vhost's address: IPv4 or IPv6; give --ip twice for one of each.")
@click.option("--name", help="Name the vhost (default: its address). A running vhost's name joins it.")
@click.option("--user", help="Run CMD as this user (name or uid) instead of root.")
@click.option("--keep", is_flag=True, help="Keep the vhost after its last process exits (until vaddr rm).")
@click.option("--host-loopback", is_flag=True,
              help="127.0.0.1 and ::1 in the vhost reach the machine's own loopback services instead of the "
                   "vhost's own (for a vhost that must use, say, a database the machine runs on 127.0.0.1), "
                   "and abstract Unix socket names are the machine's too.")
@click.option("--host-interfaces", is_flag=True,
              help="Programs in the vhost see the machine's interfaces, addresses and routes (getifaddrs, "
                   "ip addr, netlink) instead of the vhost's own eth0, and their route changes reach the "
                   "machine (a routing daemon that must program the machine's table; vaddr run inside a vhost).")
@click.option("--backend", type=click.Choice(["auto", "ebpf", "preload"]), default="auto", show_default=True,
              help="ebpf: socket hooks in the kernel (root; any program, static and Go too). "
                   "preload: an LD_PRELOAD shim (no root; dynamically linked programs, IPv4). "
                   "auto: ebpf where it can run, else preload.")
@click.option("-v", "--verbose", is_flag=True, help="Say which backend was chosen, and why.")
@_COMMAND_ARGS
def spawn(ips, name, user, keep, host_loopback, host_interfaces, backend, verbose, argv):
    """Run CMD in a vhost with address ADDR.

    \b
    The vhost is created unless one with this address or name is running, in
    which case CMD joins it.  vaddr exits with CMD's status; signals sent to
    vaddr reach CMD; the terminal passes through.  Without --keep the vhost
    goes away when its last process exits.

    \b
    Examples:
      vaddr spawn --ip 10.0.0.2 -- nginx -g 'daemon off;'
      vaddr spawn --ip 10.0.0.2 --ip fd00::2 --name web -- bash
      vaddr spawn --ip 10.0.0.3 --user nobody -- curl http://10.0.0.2/
    """
    argv = _command(argv, "vaddr spawn --ip 10.0.0.2 -- CMD")
    if not ips and not name:
        raise VaddrError("no address given", "add --ip ADDR, e.g. vaddr spawn --ip 10.0.0.2 -- CMD")
    sys.exit(commands.run_in_vhost("spawn", None, argv, ips=ips, name=name, user=user,
                                   keep=keep, backend=backend, verbose=verbose, host_loopback=host_loopback,
                                   host_interfaces=host_interfaces))


@main.command("exec", context_settings=dict(CONTEXT, ignore_unknown_options=True, allow_interspersed_args=False))
@click.argument("target", metavar="NAME|ADDR", required=False)
@click.option("--user", help="Run CMD as this user (name or uid) instead of root.")
@click.option("--client", is_flag=True,
              help="Run CMD with no address of its own that can still reach every vhost by its vIP "
                   "(what a non-root shell needs to talk to an LD_PRELOAD lab).")
@_COMMAND_ARGS
def exec_(target, user, client, argv):
    """Run CMD in the running vhost NAME or ADDR, or as a --client of the lab.

    \b
    Examples:
      vaddr exec web -- ss -tlnp
      vaddr exec 10.0.0.2 -- bash
      vaddr exec --client -- curl http://10.0.0.2/
    """
    if client and target:
        argv, target = (target, *argv), None  # click hands the command's first word to NAME
    if not client and not target:
        raise VaddrError("give NAME|ADDR or --client", "vaddr exec web -- CMD, or vaddr exec --client -- CMD")
    argv = _command(argv, "vaddr exec --client -- CMD" if client else f"vaddr exec {target} -- CMD")
    sys.exit(commands.run_in_vhost("exec", target, argv, user=user, client=client))


def _print_table(rows):
    """Columns padded to their widest cell; rows[0] is the header."""
    for line in listing.table(rows):
        click.echo(line)


_age = listing.age


_ALL_USERS = click.option("--all-users", is_flag=True,
                          help="Root only: other users' LD_PRELOAD labs too, each acted on as its user.")


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, for scripts.")
@_ALL_USERS
def ls(as_json, all_users):
    """List vhosts: name, addresses, processes, uptime, the user that made
    each and the command it was made with.  Root sees its own; other users'
    are counted below the table and listed with --all-users."""
    for line in listing.lines(as_json, all_users):
        click.echo(line)


@main.command()
@click.argument("targets", nargs=-1, required=True, metavar="NAME|ADDR...")
@click.option("-t", "--timeout", type=click.FloatRange(0, 3600), default=10, show_default=True, metavar="SECONDS",
              help="Grace period between SIGTERM and SIGKILL; 0 kills at once.")
@_ALL_USERS
def rm(targets, timeout, all_users):
    """Stop a vhost's processes and remove it.

    \b
    Every process gets SIGTERM, as on a host shutting down; what is still
    running after --timeout seconds gets SIGKILL, and is named.

    \b
      vaddr rm web
      vaddr rm 10.0.0.2 10.0.0.3 --timeout 30
      sudo vaddr rm --all-users alice-web   (a user's LD_PRELOAD vhost, ended as that user)
    """
    from vaddr import users, vhost
    if all_users:
        users.require_root()
    mine = list(targets)
    if all_users:
        mine = []
        for target in targets:
            owner = None if vhost.find(target) else users.owner_of(target)
            if owner:
                click.echo(f"{users.remove(owner, target, timeout)} (of {owner.name})")
            else:
                mine.append(target)
    # All at once: one grace period for all, however many are named.
    killed = vhost.remove_many(mine, timeout=timeout) if mine else {}
    for target in mine:
        if killed.get(target) and timeout:
            click.echo(f"removed {target} (SIGKILL after {timeout:g}s for pid {', '.join(map(str, killed[target]))})")
        else:
            click.echo(f"removed {target}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@_ALL_USERS
def reset(as_json, all_users):
    """Remove everything vaddr made: vhosts and their processes, cgroups,
    attached programs, pinned maps, routes.  Root's reset leaves other
    users' LD_PRELOAD labs alone unless given --all-users."""
    from vaddr import users
    from vaddr.reset import reset as do_reset
    if all_users:
        users.require_root()
    start = time.monotonic()
    done = do_reset()
    per_user = {}
    for user in users.others() if all_users else ():
        counts = per_user.setdefault(user.name, {})  # summed over the user's state folders
        for what, n in users.reset(user).items():
            counts[what] = counts.get(what, 0) + n
    if as_json:
        click.echo(json.dumps({**done, "users": per_user} if all_users else done))
        return
    click.echo(", ".join(f"{v} {k}" for k, v in done.items()) + f" removed in {time.monotonic() - start:.2f}s")
    for name, counts in per_user.items():
        click.echo(f"  {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(as_json):
    """Check each prerequisite and say how to fix what fails."""
    from vaddr import backends
    from vaddr.doctor import checks
    results = checks()
    ebpf_ok = all(c.ok or not c.required for c in results)
    shim_ok = any(c.name == "LD_PRELOAD shim" and c.ok for c in results)
    chosen, why = backends.choose_why()
    if as_json:
        click.echo(json.dumps({"checks": [c.to_dict() for c in results], "ebpf": ebpf_ok, "preload": shim_ok,
                               "auto": chosen, "why": why}, indent=2))
    else:
        for c in results:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            line = f"{mark}  {c.name:15} {c.detail}"
            if not c.ok and c.fix:
                line += f"\n      fix: {c.fix}"
            click.echo(line)
        click.echo(f"\neBPF backend: {'ready' if ebpf_ok else 'unavailable (FAIL lines above)'}; "
                   f"LD_PRELOAD backend: {'ready' if shim_ok else 'unavailable'}; "
                   f"--backend auto picks {chosen} ({why})")
    sys.exit(0 if ebpf_ok or shim_ok else 1)


@main.group(cls=_Group)
def net():
    """Lab subnets: IPv4 prefixes made local to this machine at once.

    \b
    A vhost whose address lies in a lab subnet needs no route of its own,
    so starting it never touches routing (about 10x faster).  Every address
    of a lab subnet belongs to this machine, vhost or not: pick a prefix
    that your real network does not use.

    \b
      vaddr net add 10.0.0.0/24
      vaddr spawn --ip 10.0.0.2 -- redis-server
    """


@net.command("add")
@click.argument("prefix")
def net_add(prefix):
    """Make PREFIX (like 10.0.0.0/24) a lab subnet."""
    from vaddr import nets
    click.echo(f"lab subnet {nets.add(prefix)}")


@net.command("rm")
@click.argument("prefix")
def net_rm(prefix):
    """Remove the lab subnet PREFIX (no vhost may still use it)."""
    from vaddr import nets
    click.echo(f"removed lab subnet {nets.remove(prefix)}")


@net.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def net_ls(as_json):
    """List lab subnets."""
    from vaddr import nets
    found = nets.list_nets()
    if as_json:
        click.echo(json.dumps(found))
    else:
        click.echo("\n".join(found) if found else "no lab subnets (add one with: vaddr net add 10.0.0.0/24)")


@main.group(cls=_Group)
def link():
    """Impair the links between vhosts: delay, jitter, loss, rate, and cuts.

    \b
    A and B are vhost names, addresses (the setting applies when a vhost
    takes the address), or 'host' (processes outside any vhost).  Settings
    apply to both directions unless --oneway, within milliseconds, to
    running programs and established connections.  Lost packets vanish
    silently, as on a real network: TCP retransmits, UDP loses.

    \b
      vaddr link set n1 n2 --loss 1%
      vaddr link ls
      vaddr link clear n1 n2
    """


@link.command("set")
@click.argument("a")
@click.argument("b")
@click.option("--delay", metavar="TIME", help="One-way delay, e.g. 20ms (so 40 ms round trip when set both ways).")
@click.option("--jitter", metavar="TIME", help="Vary the delay by up to +-TIME, without reordering packets.")
@click.option("--loss", metavar="PCT", help="Drop this share of packets, e.g. 1% or 0.1%.")
@click.option("--rate", metavar="RATE", help="Limit to RATE, in tc's units: 10mbit, 1gbit, 500kbps (bytes).")
@click.option("--duplicate", metavar="PCT", help="Deliver this share of packets twice.")
@click.option("--corrupt", metavar="PCT", help="Damage this share of packets; the receiver's checksum discards "
              "them, as on a real network.")
@click.option("--oneway", is_flag=True, help="Only from A to B.")
def link_set(a, b, delay, jitter, loss, rate, duplicate, corrupt, oneway):
    """Set impairments on the link between A and B.

    \b
      vaddr link set n1 n2 --delay 20ms --jitter 2ms
      vaddr link set n1 host --rate 10mbit --loss 0.5%
    """
    from vaddr import links
    given = {k: v for k, v in dict(delay=delay, jitter=jitter, loss=loss, rate=rate, duplicate=duplicate,
                                   corrupt=corrupt).items() if v is not None}
    if not given:
        raise VaddrError("nothing to set", "give --delay, --jitter, --loss, --rate, --duplicate or --corrupt")
    pairs = links.set_link(a, b, oneway=oneway, **given)
    click.echo(f"set {len(pairs)} directed link(s): " + ", ".join(f"{k} {v}" for k, v in given.items()))


@link.command("clear")
@click.argument("a")
@click.argument("b")
@click.option("--oneway", is_flag=True, help="Only from A to B.")
def link_clear(a, b, oneway):
    """Remove impairments from the link between A and B."""
    from vaddr import links
    links.clear_link(a, b, oneway=oneway)
    click.echo(f"cleared {a} {'->' if oneway else '<->'} {b}")


@link.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, for scripts.")
def link_ls(as_json):
    """Links with settings, and their counters."""
    from vaddr import links
    rows = links.list_links()
    lost = links.delay_line_drops()
    # Not per link: the kernel drops them before the delay line sees them.
    lost_line = (f"{links.delay_holder()} dropped {lost:,} delayed packets with its queue full "
                 f"({links.DELAY_LINE_HOLDS:,} held at most per queue): lower the rate or the delay, "
                 "or expect them as loss") if lost else None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        if lost_line:
            click.echo(f"vaddr: {lost_line}", err=True)
        return
    if not rows:
        click.echo("no link settings (set one with: vaddr link set A B --loss 1%)")
        return
    table = [("FROM", "TO", "DELAY", "JITTER", "LOSS", "RATE", "CUT", "PASSED", "DELAYED", "DROPPED")]
    for r in rows:
        table.append((r["src_name"] or r["src"], r["dst_name"] or r["dst"],
                      f"{r['delay_us'] / 1000:g}ms" if r["delay_us"] else "-",
                      f"{r['jitter_us'] / 1000:g}ms" if r["jitter_us"] else "-",
                      f"{r['loss'] * 100:g}%" if r["loss"] else "-",
                      f"{r['rate_bps'] / 1e6:g}mbit" if r["rate_bps"] else "-",
                      "yes" if r["partitioned"] else "", f"{r['packets']} pkts/{r['bytes']} B",
                      str(r["delayed"]), f"{r['dropped']} pkts/{r['dropped_bytes']} B"))
    _print_table(table)
    if lost_line:
        click.echo(lost_line)


@main.command()
@click.argument("groups", nargs=-1, required=True, metavar="GROUP GROUP...")
def partition(groups):
    """Cut the network between groups of hosts: no packet crosses.

    \b
    Each GROUP is a comma-separated list of vhost names, addresses or
    'host'.  Connects across the cut time out (nothing is refused);
    established connections stall, and recover after vaddr heal.

    \b
      vaddr partition n1,n2 n3
      vaddr heal
    """
    from vaddr import links
    parsed = [[h for h in g.split(",") if h] for g in groups]
    pairs = links.partition(parsed)
    click.echo(f"partitioned {' | '.join(','.join(g) for g in parsed)} ({len(pairs)} directed links cut)")


@main.command()
def heal():
    """End every partition (loss settings stay)."""
    from vaddr import links
    click.echo(f"healed {links.heal()} directed link(s)")


from vaddr import cli_lab  # noqa: E402,F401  (the lab commands: up, down, status, ...)

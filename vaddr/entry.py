"""The `vaddr` executable.  `spawn` and `exec` are parsed here without click
when their arguments are plain (click's import alone costs ~27 ms, twice a bare
Python start), and so are `ls` and `ls --json`; anything else, --help and
every error included, goes to the click CLI in vaddr.cli, which defines the
options and their help."""
import os
import sys

_SPAWN_VALUE_OPTS = {"--ip": "ips", "--name": "name", "--user": "user", "--backend": "backend"}
_SPAWN_FLAGS = {"--keep": "keep", "-v": "verbose", "--verbose": "verbose", "--host-loopback": "host_loopback",
                "--host-interfaces": "host_interfaces"}


def parse_fast(argv):
    """{'command', 'opts', 'argv'} for a plain spawn/exec command line, else None."""
    if len(argv) < 2 or argv[0] not in ("spawn", "exec"):
        return None
    command, rest = argv[0], argv[1:]
    opts = {"ips": [], "name": None, "user": None, "backend": "auto", "keep": False, "verbose": False,
            "host_loopback": False, "host_interfaces": False}
    target = None
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            cmd = rest[i + 1:]
            if not cmd or (command == "exec" and target is None):
                return None
            return {"command": command, "target": target, "opts": opts, "argv": cmd}
        if command == "spawn" or target is not None:
            key, eq, value = arg.partition("=")
            if key in _SPAWN_VALUE_OPTS and (command == "spawn" or key in ("--user", "--backend")):
                if not eq:
                    i += 1
                    if i >= len(rest):
                        return None
                    value = rest[i]
                field = _SPAWN_VALUE_OPTS[key]
                if field == "ips":
                    opts["ips"].append(value)
                else:
                    opts[field] = value
            elif arg in _SPAWN_FLAGS and command == "spawn":
                opts[_SPAWN_FLAGS[arg]] = True
            else:
                return None
        elif not arg.startswith("-"):
            target = arg
        else:
            return None
        i += 1
    return None


def _ls(as_json):
    from vaddr import listing
    sys.stdout.write("".join(line + "\n" for line in listing.lines(as_json)))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["ls"], ["ls", "--json"]):  # a script's poll: no click
        from vaddr import commands
        code = commands.run_guarded(_ls, len(argv) == 2)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    fast = parse_fast(argv)
    if fast is None:
        from vaddr.cli import main as click_main
        return click_main(argv)
    from vaddr import commands
    code = commands.run_guarded(commands.run_in_vhost, fast["command"], fast["target"], fast["argv"], **fast["opts"])
    # Skip interpreter finalisation (~7 ms): nothing is left to clean up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

"""What `spawn` and `exec` do, shared by the click CLI and the fast path in
entry.py, and the one place where a VaddrError becomes a line on stderr."""
import sys

from vaddr.errors import VaddrError


def error_line(err):
    line = f"vaddr: {err.message}"
    return f"{line} (fix: {err.hint})" if err.hint else line


def run_guarded(fn, *args, **kwargs):
    """fn's exit status; a VaddrError is one line on stderr and its exit code."""
    try:
        return fn(*args, **kwargs)
    except VaddrError as err:
        print(error_line(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def run_in_vhost(command, target, argv, ips=(), name=None, user=None, backend="auto", keep=False, verbose=False,
                 client=False, host_loopback=False, host_interfaces=False):
    """`vaddr spawn` (command='spawn') or `vaddr exec TARGET` in the foreground."""
    from vaddr import foreground, vhost
    if client:
        return foreground.run(lambda: vhost.spawn_client(argv, user=user))
    if command == "exec":
        # The record, live or not: whether the vhost runs is decided under
        # the lock by spawn, so a vhost still starting is joined, not missed.
        from vaddr import registry
        found = registry.find(target)
        if found is None:
            raise VaddrError(f"no running vhost named or addressed '{target}'", "see vaddr ls, or start one with vaddr spawn")
        name, backend = found.name, found.backend
        import os
        from vaddr import runtime
        if os.path.exists(os.path.join(runtime.RUN_DIR, "hostns", name)):  # a lab host: its hostname and mounts
            from vaddr.lab import isolate
            argv, user = isolate.enter_argv(name, argv, vhost.User(user) if user is not None else None)
    elif backend == "auto":
        from vaddr import backends
        backend, why = backends.choose_why()
        if verbose:
            print(f"vaddr: backend {backend} ({why})", file=sys.stderr)
    return foreground.run(lambda: vhost.spawn(argv, ip=list(ips), name=name, user=user, keep=keep, backend=backend,
                                                      host_loopback=host_loopback, host_interfaces=host_interfaces))

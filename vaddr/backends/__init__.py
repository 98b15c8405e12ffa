"""Backends put a process tree in a vhost.  Each offers the same operations:

    check()                        fail early when this backend cannot run here
    prepare()                      load what the backend needs (under the lock)
    create(record)                 make the vhost's kernel or shim state
    launch(record, argv, ...)      start argv inside the vhost; returns a pid
    pids(record), alive(record)    who is in it
    listed_pids(records)           {name: pids} of many at once, for ls
    signal(record, sig)            send sig to every process in it
    kill(record)                   SIGKILL every process in it
    teardown(record)               undo create()

The conformance suite (tests/conformance) runs against every backend."""


NAMES = ("ebpf", "preload")


def get(name):
    if name == "auto":
        name = choose()
    if name == "ebpf":
        from vaddr.backends.ebpf import EbpfBackend
        return EbpfBackend()
    if name == "preload":
        from vaddr.backends.preload import PreloadBackend
        return PreloadBackend()
    from vaddr.errors import VaddrError
    raise VaddrError(f"unknown backend '{name}'", "use --backend ebpf, preload or auto")


def choose():
    return choose_why()[0]


def choose_why():
    """(backend, reason): eBPF where vaddr has root, cgroup v2, bpf() and bcc;
    the shim elsewhere.  Cheap: bcc is looked for, not imported."""
    import os
    if os.geteuid() != 0:
        return "preload", "not root"
    from vaddr import bpfsys, cgroups, runtime
    if runtime.ready():
        return "ebpf", "the socket hooks are loaded"
    try:
        cgroups.mount_point()
    except Exception:
        return "preload", "no cgroup v2"
    try:
        bpfsys.probe()
    except OSError as e:
        return "preload", f"bpf() fails: {e.strerror}"
    import importlib.util
    if importlib.util.find_spec("bcc") is None:
        return "preload", "bcc is not installed"
    from vaddr import loader
    from vaddr.errors import VaddrError
    try:
        loader.header_flags()  # file checks only: bcc cannot compile the hooks without a header tree
    except VaddrError:
        return "preload", "no kernel headers for bcc"
    return "ebpf", "root, cgroup v2, bpf(), bcc and kernel headers available"

"""Backends put a process tree in a vhost.  Each offers the same operations:

    check()                        fail early when this backend cannot run here
    prepare()                      load what the backend needs (under the lock)
    create(record)                 make the vhost's kernel or shim state
    launch(record, argv, ...)      start argv inside the vhost; returns a pid
    pids(record), alive(record)    who is in it
    kill(record)                   end every process in it
    teardown(record)               undo create()

The conformance suite (tests/conformance) runs against every backend."""


def get(name):
    if name == "ebpf":
        from vaddr.backends.ebpf import EbpfBackend
        return EbpfBackend()
    from vaddr.errors import VaddrError
    raise VaddrError(f"unknown backend '{name}'", "use --backend ebpf")

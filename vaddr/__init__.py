"""vaddr: give unmodified programs their own IP address, without namespaces."""
from vaddr.errors import VaddrError
from vaddr.vhost import DEVNULL, PIPE, Process, Vhost, find, list_vhosts, remove, spawn, spawn_client

__all__ = ["VaddrError", "Vhost", "Process", "Lab", "spawn", "spawn_client", "find", "list_vhosts", "remove",
           "PIPE", "DEVNULL"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lab pulls in threading, json and sockets: loaded when asked for, so
    # `vaddr spawn` does not pay for it.
    if name == "Lab":
        from vaddr.lab.lab import Lab
        return Lab
    raise AttributeError(f"module 'vaddr' has no attribute {name!r}")

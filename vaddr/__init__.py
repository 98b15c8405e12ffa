"""vaddr: give unmodified programs their own IP address, without namespaces."""
from vaddr.errors import VaddrError
from vaddr.vhost import DEVNULL, PIPE, Process, Vhost, find, list_vhosts, remove, spawn, spawn_client

__all__ = ["VaddrError", "Vhost", "Process", "spawn", "spawn_client", "find", "list_vhosts", "remove", "PIPE", "DEVNULL"]
__version__ = "0.1.0"

"""vaddr: give unmodified programs their own IP address, without namespaces.

The names below are loaded on first use: importing vaddr (as the pytest
plugin's entry point does, before a test suite's conftest can set
VADDR_RUN_DIR) reads no state folder and loads no backend."""
__all__ = ["VaddrError", "Vhost", "Process", "Lab", "spawn", "spawn_client", "find", "list_vhosts", "remove",
           "PIPE", "DEVNULL", "STDOUT"]
__version__ = "0.1.0"

_FROM = {"VaddrError": "vaddr.errors", "Lab": "vaddr.lab.lab"}


def __getattr__(name):
    if name not in __all__:
        raise AttributeError(f"module 'vaddr' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_FROM.get(name, "vaddr.vhost")), name)
    globals()[name] = value
    return value

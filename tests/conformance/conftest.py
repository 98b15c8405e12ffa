"""Every conformance case runs once per backend.  A case that a backend cannot
pass is marked there with its reason, never skipped silently."""
import pytest

BACKENDS = ["ebpf", "preload"]

# Where the LD_PRELOAD shim cannot do what the kernel hooks do, and why.
PRELOAD_DIFFERS = {
    "both_families_one_socket": "under the shim a vhost's IPv4 and IPv6 vIPs are two real addresses and one "
                                "socket holds one: a dual-stack [::] socket in a vhost with both families takes "
                                "the IPv4 vIP (README, Limits)",
    "own_ports": "the shim binds each vIP's real 127.x address, whose ports the machine's wildcard "
                 "listeners share (README, Limits)",
    "own_interfaces": "under the shim a vhost sees the machine's interfaces: its view is served through a "
                      "seccomp filter and a namespace only root can make (README, Limits)",
    "own_unix_names": "under the shim abstract Unix socket names are the machine's: the eBPF backend makes a "
                      "vhost's Unix sockets in a namespace of its own, which needs root (README, Limits)",
    "own_segment": "under the shim a vhost's multicast is the machine's: copying a group's datagram to each "
                   "member vhost is done by a tc program on lo, which needs root (README, Limits)",
    "own_sockets": "under the shim `ss` lists the machine's sockets: the vhost's listing is served through "
                   "the seccomp filter that only the eBPF backend installs (README, Limits)",
}


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "ebpf":
        request.applymarker(pytest.mark.kernel)
    for marker, reason in PRELOAD_DIFFERS.items():
        if request.param == "preload" and request.node.get_closest_marker(marker):
            pytest.skip(f"documented difference: {reason}")
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "ipv6: an IPv6 case")
    config.addinivalue_line("markers", "both_families_one_socket: one dual-stack socket serving both vIPs")
    config.addinivalue_line("markers", "own_loopback: 127.0.0.1 inside a vhost is its own")
    config.addinivalue_line("markers", "own_ports: a vhost's ports are its own, next to the machine's")
    config.addinivalue_line("markers", "own_interfaces: a vhost sees its own interfaces and addresses")
    config.addinivalue_line("markers", "own_unix_names: abstract Unix socket names in a vhost are its own")
    config.addinivalue_line("markers", "own_sockets: `ss` in a vhost lists the vhost's own sockets")
    config.addinivalue_line("markers", "own_segment: vhosts share a multicast segment, apart from the machine")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()) and "[ebpf" in item.nodeid:
            item.add_marker(pytest.mark.kernel)

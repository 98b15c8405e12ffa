"""Every conformance case runs once per backend.  A case that a backend cannot
pass is marked there with its reason, never skipped silently."""
import pytest

BACKENDS = ["ebpf", "preload"]

# Where the LD_PRELOAD shim cannot do what the kernel hooks do, and why.
PRELOAD_DIFFERS = {
    "ipv6": "the shim serves IPv4 vIPs only (v4-mapped addresses on IPv6 sockets included); an IPv6 vIP "
            "is refused at spawn (tests/test_preload.py)",
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
    config.addinivalue_line("markers", "ipv6: an IPv6 case (the LD_PRELOAD shim serves IPv4 only)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()) and "[ebpf" in item.nodeid:
            item.add_marker(pytest.mark.kernel)

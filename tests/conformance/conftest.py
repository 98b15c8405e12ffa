"""Every conformance case runs once per backend.  A case that a backend cannot
pass is marked there with its reason, never skipped silently."""
import pytest

BACKENDS = ["ebpf"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "ebpf":
        request.applymarker(pytest.mark.kernel)
    return request.param


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()) and "[ebpf" in item.nodeid:
            item.add_marker(pytest.mark.kernel)

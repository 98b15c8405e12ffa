"""An HTTP service behind a load balancer, with a slow and lossy link: nginx
on `lb` spreads requests over app1 and app2 (Python web servers that answer
with their host name).  Run: pytest examples/test_load_balancer.py (root: the
link settings need the eBPF backend)."""
import time

import pytest

pytestmark = pytest.mark.vaddr_lab("web.toml", scope="module")
GET = ["curl", "-s", "-m", "20", "http://lb:8080/"]


def test_requests_are_spread_over_both_apps(vaddr_lab):
    answers = {vaddr_lab["client"].run(GET).stdout for _ in range(6)}
    assert answers == {"app1", "app2"}


def test_a_slow_link_to_one_app_slows_only_its_share(vaddr_lab):
    vaddr_lab.link("lb", "app2").set(delay="200ms")
    timings = {}
    for _ in range(6):
        start = time.monotonic()
        name = vaddr_lab["client"].run(GET).stdout
        timings.setdefault(name, []).append(time.monotonic() - start)
    assert min(timings["app2"]) > 0.8          # connect + request + answer: 2 round trips of 400 ms
    assert max(timings["app1"]) < 0.5


def test_a_lossy_link_still_serves_every_request(vaddr_lab):
    vaddr_lab.link("lb", "app1").set(loss="20%")  # the previous test's delay on app2 is gone: restored between tests
    answers = [vaddr_lab["client"].run(GET).stdout for _ in range(10)]
    # TCP retransmits what the link drops (a SYN lost three times makes nginx
    # try app2 after its 5 s connect timeout); curl's 20 s covers both.
    assert all(a in ("app1", "app2") for a in answers), answers


def test_a_crashed_app_leaves_the_service_up(vaddr_lab):
    vaddr_lab["app1"].kill()
    answers = {vaddr_lab["client"].run(GET).stdout for _ in range(4)}
    assert answers == {"app2"}

"""Parts of the suite that need kernel features this machine's kernel may
lack (sch_fq, so delays held in the kernel), and the conformance cases,
run again on Debian's stock kernel in a QEMU guest (tests/stock_kernel.py).  Slow, emulated; the
guest's own pytest output is shown on failure."""
import os
import re

import pytest

from tests import stock_kernel

pytestmark = pytest.mark.kernel

# What runs in the guest: the delay paths, and the conformance cases of the
# eBPF backend (an older verifier and older helpers: what users of Debian 12
# get).  The link tests with absolute timing bounds (test_links.py's 20 ms
# +- 2 ms) are not run there: emulation adds a few ms to every round trip, so
# they would measure QEMU, not vaddr.  The shim's cases need no kernel of
# their own.
GUEST_TESTS = ("tests/test_delay_path.py", "tests/conformance")
GUEST_SELECT = "not preload"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_delays_and_conformance_on_a_stock_distribution_kernel():
    try:
        code, out = stock_kernel.run(
            f"cd {CHECKOUT} && CI={os.environ.get('CI', '')} .venv/bin/python -m pytest -q -p no:cacheprovider --color=no -rs "
            + f"-k '{GUEST_SELECT}' " + " ".join(GUEST_TESTS) + " 2>&1", timeout=2400)
    except stock_kernel.Unavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"the stock kernel guest cannot run: {e}")
        pytest.skip(f"the stock kernel guest cannot run: {e}")
    summary = re.findall(r"^(?:=+ )?(\d+ (?:passed|failed).*)$", out, re.M)
    assert code == 0, f"in the guest ({summary[-1] if summary else 'no summary'}):\n{out[-12000:]}"
    assert summary and "skipped" not in summary[-1], summary

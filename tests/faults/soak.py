"""`make soak MINUTES=10`: the fault run of test_faults.py for a given time,
ending with a table of counts (commands, kills, refusals, checks,
inconsistencies).  Not collected by `make test` (its name does not start
with test_); run it by path."""
import os
import time

from tests.conftest import vaddr_cli
from tests.faults.chaos import Chaos, Failure, seed_from_env


def test_soak(cli):
    minutes = float(os.environ.get("VADDR_SOAK_MINUTES", "10"))
    chaos = Chaos(seed_from_env(), vaddr_cli())
    print(f"\nVADDR_FAULT_SEED={chaos.seed}, {minutes:g} minutes", flush=True)
    began = time.monotonic()
    deadline = began + minutes * 60
    last_report = began
    failure = None
    try:
        i = 0
        while time.monotonic() < deadline:
            chaos.round(i)
            i += 1
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                print(f"  after {(last_report - began) / 60:.0f} min: {chaos.counts['rounds']} rounds, "
                      f"{chaos.counts['killed']} kills, {chaos.counts['inconsistencies']} inconsistencies",
                      flush=True)
    except Failure as e:
        failure = e
    finally:
        cli("reset", check=True)
        print(chaos.report(minutes), flush=True)
    assert failure is None, str(failure)

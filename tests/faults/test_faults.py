"""The quick fault run of `make test`: random state-changing commands, some
SIGKILLed at random moments beside others that run to the end; after each
round the machine must hold exactly what the records describe.  The seed is
printed (and named in any failure); VADDR_FAULT_SEED=N replays it.  The long
run is `make soak` (tests/faults/soak.py)."""
import os

from tests.conftest import vaddr_cli
from tests.faults.chaos import Chaos, seed_from_env

ROUNDS = int(os.environ.get("VADDR_FAULT_ROUNDS", "40"))


def _enough(chaos):
    """Not vacuous: kills landed, and commands of every kind ran to the end."""
    return chaos.counts["killed"] >= ROUNDS // 3 and chaos.counts["succeeded"] >= ROUNDS // 2


def test_killed_commands_leave_exactly_what_the_records_describe(cli):
    chaos = Chaos(seed_from_env(), vaddr_cli())
    print(f"VADDR_FAULT_SEED={chaos.seed}")
    try:
        # Whether a kill lands before its command ends is timing, so a run
        # short of landed kills goes on (up to twice as long) rather than
        # pass or fail by luck; it fails if kills still do not land.
        i = 0
        while i < ROUNDS or (not _enough(chaos) and i < 2 * ROUNDS):
            chaos.round(i)
            i += 1
    finally:
        cli("reset", check=True)
    print(chaos.report())
    assert _enough(chaos), chaos.report()

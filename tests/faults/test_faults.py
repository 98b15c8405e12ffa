"""The quick fault run of `make test`: random state-changing commands, some
SIGKILLed at random moments beside others that run to the end; after each
round the machine must hold exactly what the records describe.  The seed is
printed (and named in any failure); VADDR_FAULT_SEED=N replays it.  The long
run is `make soak` (tests/faults/soak.py)."""
import os

from tests.conftest import vaddr_cli
from tests.faults.chaos import Chaos, seed_from_env

ROUNDS = int(os.environ.get("VADDR_FAULT_ROUNDS", "40"))


def test_killed_commands_leave_exactly_what_the_records_describe(cli):
    chaos = Chaos(seed_from_env(), vaddr_cli())
    print(f"VADDR_FAULT_SEED={chaos.seed}")
    try:
        for i in range(ROUNDS):
            chaos.round(i)
    finally:
        cli("reset", check=True)
    print(chaos.report())
    # Not vacuous: kills landed, and commands of every kind ran to the end.
    assert chaos.counts["killed"] >= ROUNDS // 3, chaos.report()
    assert chaos.counts["succeeded"] >= ROUNDS // 2, chaos.report()

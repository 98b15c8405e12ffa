"""Random state-changing commands, some SIGKILLed at a random moment, others
running beside them; after each round the killed ones are run again (what a
user does when a command dies) and the machine must hold exactly the state
the records describe (tests/state.py: `inconsistencies`).

Seeded: the same seed gives the same commands, the same kill choices and the
same kill moments (as fractions of each command's measured length).  What a
kill lands on still depends on timing, so a replay retraces a failure's
steps, not always its exact instruction."""
import collections
import os
import random
import subprocess
import time

from tests import state

# Names and addresses the chaos plays with: a few, so commands collide.
HOSTS = {f"c{i}": f"198.19.254.{10 + i}" for i in range(5)}
NET = "198.19.253.0/24"
NET_HOSTS = {f"m{i}": f"198.19.253.{10 + i}" for i in range(2)}
ALL = {**HOSTS, **NET_HOSTS}

# Weights: spawns and links often, reset (which reloads everything) rarely.
WEIGHTS = {"spawn": 6, "spawn --keep": 3, "exec": 3, "rm": 3, "net add": 1, "net rm": 1, "link set": 3,
           "link set --delay": 2, "link clear": 2, "partition": 2, "heal": 2, "reset": 1}


def seed_from_env():
    """VADDR_FAULT_SEED replays a run; otherwise a fresh seed, printed by the caller."""
    raw = os.environ.get("VADDR_FAULT_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(10 ** 9)


def _shape(message):
    """A refusal with its names and addresses blanked, for counting alike ones together."""
    import re
    message = re.sub(r"'[^']*'", "X", message)
    return re.sub(r"[0-9a-f:.]*[0-9]+\.[0-9.]+(/[0-9]+)?", "A", message)[:60]


class Failure(AssertionError):
    pass


class Chaos:
    def __init__(self, seed, cli, kill_share=0.5):
        self.seed = seed
        self.rng = random.Random(seed)
        self.cli = cli  # argv prefix of the vaddr command line
        self.kill_share = kill_share
        self.span = {}  # typical run of each command, seconds, once measured
        self.counts = collections.Counter()
        self.log = []

    # -- commands --------------------------------------------------------------

    def _endpoint(self):
        """Mostly addresses (always valid), sometimes names (valid while the vhost runs) or host."""
        name, ip = self.rng.choice(sorted(ALL.items()))
        return self.rng.choices((ip, name, "host"), weights=(6, 3, 1))[0]

    def command(self):
        kind = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        name, ip = self.rng.choice(sorted(ALL.items()))
        other = self._endpoint()
        if kind == "spawn":
            args = ["spawn", "--name", name, "--ip", ip, "--", "sleep", f"{self.rng.uniform(0.05, 0.4):.2f}"]
        elif kind == "spawn --keep":
            args = ["spawn", "--keep", "--name", name, "--ip", ip, "--", "true"]
        elif kind == "exec":
            args = ["exec", name, "--", "true"]
        elif kind == "rm":
            args = ["rm", "--timeout", "1", name]
        elif kind in ("net add", "net rm"):
            args = [*kind.split(), NET]
        elif kind == "link set":
            args = ["link", "set", self._endpoint(), other, "--loss", f"{self.rng.randint(1, 30)}%"]
        elif kind == "link set --delay":
            args = ["link", "set", self._endpoint(), other, "--delay", f"{self.rng.randint(1, 20)}ms",
                    *(["--rate", "100mbit"] if self.rng.random() < 0.5 else [])]
        elif kind == "link clear":
            args = ["link", "clear", self._endpoint(), other]
        elif kind == "partition":
            args = ["partition", f"{name},{self._endpoint()}", other]
        elif kind == "heal":
            args = ["heal"]
        else:
            args = ["reset"]
        return kind, args

    # -- one round ---------------------------------------------------------------

    def round(self, index):
        """1 to 3 commands at once, each killed or not; the killed ones run
        again; then the check.  Raises Failure naming the seed and round."""
        planned = []
        for _ in range(self.rng.randint(1, 3)):
            kind, args = self.command()
            kill_at = self.rng.random() if self.rng.random() < self.kill_share else None
            planned.append((kind, args, kill_at))
        started = time.monotonic()
        running = [(kind, args, kill_at, subprocess.Popen([*self.cli, *args], stdout=subprocess.DEVNULL,
                                                          stderr=subprocess.PIPE, text=True))
                   for kind, args, kill_at in planned]
        for kind, args, kill_at, proc in sorted(running, key=lambda r: r[2] if r[2] is not None else 2):
            if kill_at is None:
                continue
            time.sleep(max(0.0, started + kill_at * self.span.get(kind, 0.3) - time.monotonic()))
            proc.kill()
            self.counts["kills sent"] += 1
        for kind, args, kill_at, proc in running:
            _, err = proc.communicate(timeout=120)
            was_killed = proc.returncode == -9
            self.log.append(f"round {index}: vaddr {' '.join(args)}" + (" (killed)" if was_killed else ""))
            self.counts["commands"] += 1
            if was_killed:
                self.counts["killed"] += 1
            else:
                self._judge(kind, args, proc.returncode, err, started)
        for kind, args, kill_at, proc in running:
            if proc.returncode == -9:
                self.log.append(f"round {index}: vaddr {' '.join(args)} (run again)")
                self._run_to_end(kind, args)
        self.counts["rounds"] += 1
        self.check(f"round {index}")

    def _run_to_end(self, kind, args):
        started = time.monotonic()
        proc = subprocess.run([*self.cli, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=120)
        self.counts["commands"] += 1
        self.counts["run again"] += 1
        self._judge(kind, args, proc.returncode, proc.stderr, started)

    def _judge(self, kind, args, code, err, started):
        """A command that was not killed either succeeds or says, in one
        line, why not: never a traceback."""
        # The first run's length, then a moving average, so one slow run
        # (compiling a program) does not push every later kill past the end
        # of the command, and a guess far from a fast command's length does
        # not either.
        took = time.monotonic() - started
        self.span[kind] = took if kind not in self.span else self.span[kind] + 0.5 * (took - self.span[kind])
        lines = [line for line in err.splitlines() if line.strip()]
        if code == 0 and not lines:
            self.counts["succeeded"] += 1
            return
        if kind in ("spawn", "spawn --keep", "exec") and code in (128 + 9, 128 + 15) and not lines:
            self.counts["command ended by rm or reset beside it"] += 1  # spawn passes on its status
            return
        if code > 0 and len(lines) == 1 and lines[0].startswith("vaddr: ") and "Traceback" not in err:
            self.counts["refused in one line"] += 1
            self.counts["refused: " + _shape(lines[0].split(" (fix:")[0][7:])] += 1
            return
        self.fail(f"vaddr {' '.join(args)} exited {code} with: {err.strip()[-2000:]}")

    # -- the check ---------------------------------------------------------------

    def check(self, where):
        self.counts["checks"] += 1
        problems = state.inconsistencies()
        if problems:
            self.counts["inconsistencies"] += len(problems)
            self.fail(f"after {where}: " + "; ".join(problems))

    def fail(self, what):
        raise Failure(f"{what}\n  replay: VADDR_FAULT_SEED={self.seed}\n  last commands:\n    "
                      + "\n    ".join(self.log[-8:]))

    def report(self, minutes=None):
        """Counts, the most frequent refusals first (the rest summed)."""
        main = {k: v for k, v in self.counts.items() if not k.startswith("refused: ")}
        refusals = sorted(((v, k) for k, v in self.counts.items() if k.startswith("refused: ")), reverse=True)
        rows = sorted(main.items()) + [(k, v) for v, k in refusals[:6]]
        if refusals[6:]:
            rows.append((f"refused: {len(refusals) - 6} other kinds", sum(v for v, _ in refusals[6:])))
        width = max((len(k) for k, _ in rows), default=10)
        head = f"fault run, seed {self.seed}" + (f", {minutes:g} min" if minutes else "")
        return head + "\n" + "\n".join(f"  {k:<{width}}  {v:>6}" for k, v in rows)

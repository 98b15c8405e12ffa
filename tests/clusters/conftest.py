"""What the cluster tests share: a lab up for the test's length, and the
machine's own daemons and listeners on the ports the lab's hosts use, as a
workstation holds them."""
import os
import shutil
import socket
import subprocess

import pytest

from tests.lab import until


@pytest.fixture
def machine_holds():
    """machine_holds(*ports): the machine's own TCP listeners on 0.0.0.0, as a
    workstation's epmd or broker holds them; closed after the test."""
    held = []

    def hold(*ports):
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:  # already held by the machine: so much the better
                s.close()
                continue
            s.listen()
            held.append(s)
    yield hold
    for s in held:
        s.close()


def _held(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def lab_up(cli, tmp_path):
    """lab_up(name, text): the lab file written and up (-d); after the test,
    down and its folder (the hosts' logs) removed, pass or fail."""
    names = []

    def up(name, text, timeout=60):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        names.append(name)
        got = cli("up", "-d", str(path), timeout=timeout)
        assert got.returncode == 0, got.stderr
    yield up
    if names:
        cli("down", timeout=120)
    for name in names:
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], name), ignore_errors=True)


@pytest.fixture
def machine_daemon(tmp_path):
    """machine_daemon(argv, port): the machine's own instance of a daemon,
    started unless something of the machine already holds its port; ended
    after the test.  Returns whether this test started it."""
    started = []

    def start(argv, port):
        if _held(port):
            return False
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        until(lambda: _held(port) or proc.poll() is not None, f"{argv[0]} on the machine")
        assert proc.poll() is None, f"{argv[0]} on the machine exited {proc.returncode}"
        return True
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)

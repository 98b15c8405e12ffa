"""`vaddr spawn --ip A -- bash` is an interactive shell in the vhost: the
terminal passes through, and Ctrl-C typed there reaches the foreground job
job and the shell lives on."""
import os
import pty
import select
import time

import pytest

from tests.conftest import vaddr_cli

pytestmark = pytest.mark.kernel


def read_until(fd, text, timeout=10):
    buf = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{text!r} not seen; got {buf[-400:]!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side of the pty closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {text!r}; got {buf[-400:]!r}")
            buf += chunk
    return buf.decode(errors="replace")


def test_interactive_shell_gets_the_vip_and_ctrl_c_interrupts_only_its_job(vips):
    ip = vips()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(PS1="vh$ ", TERM="dumb")
        os.execv(vaddr_cli()[0], [*vaddr_cli(), "spawn", "--ip", ip, "--", "bash", "--norc", "-i"])
    try:
        read_until(fd, "vh$ ")
        os.write(fd, b"python3 -c 'import socket; s=socket.socket(); s.bind((\"\", 80)); print(\"B=\"+s.getsockname()[0])'\n")
        assert f"B={ip}" in read_until(fd, f"B={ip}")
        read_until(fd, "vh$ ")
        # Ctrl-C at the prompt interrupts a foreground job and leaves bash running.
        os.write(fd, b"sleep 20\n")
        read_until(fd, "sleep 20")
        time.sleep(0.5)
        started = time.monotonic()
        os.write(fd, b"\x03")
        read_until(fd, "vh$ ", timeout=15)
        assert time.monotonic() - started < 2  # interrupted, not the 20 s sleep ending
        os.write(fd, b"echo tty=$(tty | cut -c1-8)\n")
        assert "tty=/dev/pts" in read_until(fd, "tty=/dev/pts")
        os.write(fd, b"exit 3\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)

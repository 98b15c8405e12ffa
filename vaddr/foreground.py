"""Running a vhost's command in the foreground of `vaddr spawn`: signals sent
to vaddr reach the command, and vaddr exits with the command's status.

Signals are taken with sigwaitinfo rather than handlers so that one typed at
the terminal (si_code SI_KERNEL), which the command already received as a
member of the foreground process group, is not delivered twice."""
import _signal as signal  # signal's enums cost ms per spawn
import os

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
SI_KERNEL = 0x80


def block_signals():
    """Block before starting the command, so no signal slips between spawn and wait.
    The command starts with these unblocked (posix_spawn's setsigmask)."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED + (signal.SIGCHLD,))


def run(start):
    """start() -> Process, called with signals blocked; returns a shell-style status."""
    old = block_signals()
    try:
        proc = start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    while proc.poll() is None:
        info = signal.sigwaitinfo(FORWARDED + (signal.SIGCHLD,))
        if info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code == SI_KERNEL and info.si_signo in (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH):
            continue
        try:
            os.kill(proc.pid, info.si_signo)
        except ProcessLookupError:
            pass
    code = proc.returncode
    return 128 - code if code < 0 else code

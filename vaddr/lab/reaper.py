"""One thread that sees every host's main process end, through pidfds
(Linux 5.3+): a thousand-host lab needs one waiting thread, not a thousand
(each thread also made every later fork of the lab's process slower)."""
import os
import selectors
import threading


def _raise_file_limit():
    """One pidfd per host: a 10,000-host lab needs more descriptors than the
    usual soft limit (1,024), so the soft limit is raised to the hard one, as
    Go's runtime does for every program (vaddr doctor states the hard one)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Reaper:
    def __init__(self):
        _raise_file_limit()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._pending, self._lock, self._thread, self._closed = [], threading.Lock(), None, False

    def watch(self, proc, done):
        """Call done(proc, exit status) once proc (a vaddr.Process) has ended."""
        if not hasattr(os, "pidfd_open"):
            threading.Thread(target=lambda: done(proc, proc.wait()), daemon=True).start()
            return
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:  # no pidfd on this kernel (before 5.3): a thread of its own
            threading.Thread(target=lambda: done(proc, proc.wait()), daemon=True).start()
            return
        with self._lock:
            self._pending.append((fd, proc, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="vaddr-reaper")
                self._thread.start()
        os.write(self._wake_w, b"x")

    def close(self):
        """End the thread once nothing is watched (after the lab's down)."""
        with self._lock:
            self._closed = True
            if self._thread is None:
                self._release()
                return
        os.write(self._wake_w, b"x")

    def _release(self):
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self):
        while True:
            with self._lock:
                for fd, proc, done in self._pending:
                    self._sel.register(fd, selectors.EVENT_READ, (proc, done))
                self._pending.clear()
                if self._closed and len(self._sel.get_map()) == 1:  # only the wake pipe is left
                    self._release()
                    return
            for key, _ in self._sel.select():
                if key.fileobj == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                proc, done = key.data
                self._sel.unregister(key.fileobj)
                os.close(key.fileobj)
                done(proc, proc.wait())  # readable pidfd: it has exited, so this returns at once

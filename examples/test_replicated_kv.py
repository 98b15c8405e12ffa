"""A replicated database under partition and node crash: three etcd members
(etcd-server from your distribution), one lab shared by this module's tests.
Run: pytest examples/test_replicated_kv.py (as root: etcd is a Go program)."""
import pytest

pytestmark = pytest.mark.vaddr_lab("kv.toml", scope="module")


def etcdctl(host, *args, timeout="2s"):
    """etcdctl run inside `host`, talking to that host's own member."""
    return host.run(["etcdctl", "--endpoints", f"{host.name}:2379", "--command-timeout", timeout, *args], timeout=30)


def test_a_write_on_one_member_is_read_on_another(vaddr_lab):
    assert etcdctl(vaddr_lab["n1"], "put", "greeting", "hello").returncode == 0
    got = etcdctl(vaddr_lab["n3"], "get", "greeting", "--print-value-only")
    assert got.stdout.strip() == "hello"


def test_the_majority_keeps_writing_and_the_minority_cannot(vaddr_lab):
    n1, n2 = vaddr_lab["n1"], vaddr_lab["n2"]
    value = lambda host: etcdctl(host, "get", "k", "--print-value-only").stdout.strip()  # noqa: E731
    with vaddr_lab.partitioned(["n1"], ["n2", "n3"]):
        assert retry(lambda: etcdctl(n2, "put", "k", "majority").returncode == 0)
        assert etcdctl(n1, "put", "k", "minority", timeout="1s").returncode != 0
        assert value(n2) == "majority"          # nothing the minority wrote got in
    # After the heal all members agree.  Which value wins is etcd's business:
    # a write that timed out may still be applied later (n1 kept the proposal),
    # the lesson Jepsen teaches: a timeout is not a failure.
    assert retry(lambda: value(n1) == value(n2) != "")


def test_a_crashed_member_catches_up_after_restart(vaddr_lab):
    n2, n3 = vaddr_lab["n2"], vaddr_lab["n3"]
    n3.kill()                                  # SIGKILL: a crash, no goodbye
    assert retry(lambda: etcdctl(n2, "put", "while-down", "yes").returncode == 0)
    n3.start()
    n3.wait_ready()
    assert retry(lambda: etcdctl(n3, "get", "while-down", "--print-value-only").stdout.strip() == "yes")


def retry(check, attempts=40):
    """True once check() is; a cluster needs a moment to elect or catch up."""
    import time
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.25)
    return False

"""Unix-domain sockets in a vhost, as on a host of its own: an abstract name
(a "\\0name" address: corosync's libqb, X11, Chrome) is the vhost's own, so
two vhosts bind the same one and neither they nor the machine reach each
other's; a socket file (a path) is a file, reached from anywhere that sees
the file, as /dev/log and the machine's daemons are."""
import contextlib
import os
import socket

import pytest

from tests.conftest import need
from tests.lab import run_in, run_py, start_py, wait_fact

SERVE = """
    kind = getattr(socket, "{kind}")
    s = socket.socket(socket.AF_UNIX, kind); s.bind({address!r})
    if kind == socket.SOCK_STREAM:
        s.listen()
    fact(ready=1)
    while True:
        if kind == socket.SOCK_STREAM:
            c, _ = s.accept(); c.sendall(os.environ["WHO"].encode()); c.close()
        else:
            data, peer = s.recvfrom(100); s.sendto(os.environ["WHO"].encode(), peer)
"""

ASK = """
    import errno
    kind = getattr(socket, "{kind}")
    c = socket.socket(socket.AF_UNIX, kind)
    try:
        if kind == socket.SOCK_STREAM:
            c.connect({address!r}); fact(answer=c.recv(100).decode())
        else:
            c.bind(""); c.settimeout(5); c.sendto(b"who", {address!r}); fact(answer=c.recv(100).decode())
    except OSError as e:
        fact(error=errno.errorcode[e.errno])
"""


def _name(tag):
    return f"\0vaddr-test-{os.getpid()}-{tag}"


def _ask(address, kind="SOCK_STREAM", **where):
    code, facts, err = run_py(ASK.format(address=address, kind=kind), **where)
    assert code == 0 and facts, err
    return facts[0].get("answer") or facts[0]["error"]


@contextlib.contextmanager
def _machine_listens(name):
    """A stream socket of the machine's, outside any vhost, listening at name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as machine:
        machine.bind(name)
        machine.listen()
        yield


def _serve(reap, address, who, kind="SOCK_STREAM", **where):
    server = reap(start_py(SERVE.format(address=address, kind=kind), env=dict(os.environ, WHO=who), **where))
    wait_fact(server)


@pytest.mark.own_unix_names
@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"])
def test_two_vhosts_bind_one_abstract_name_and_each_reaches_its_own(backend, vips, reap, kind):
    name, a, b = _name(kind), vips(), vips()
    for ip in (a, b):
        _serve(reap, name, ip, kind, ip=ip, backend=backend)
    assert [_ask(name, kind, ip=ip, backend=backend) for ip in (a, b)] == [a, b]


@pytest.mark.own_unix_names
def test_neither_the_machine_nor_another_vhost_reaches_a_vhosts_abstract_name(backend, vips, reap):
    name, owner, stranger = _name("closed"), vips(), vips()
    _serve(reap, name, owner, ip=owner, backend=backend)
    assert _ask(name, ip=stranger, backend=backend) == "ECONNREFUSED"
    machine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with machine, pytest.raises(ConnectionRefusedError):
        machine.connect(name)


@pytest.mark.own_unix_names
def test_a_vhost_does_not_reach_the_machines_abstract_name_and_may_bind_it_too(backend, vips, reap):
    name, ip = _name("machine"), vips()
    with _machine_listens(name):
        assert _ask(name, ip=ip, backend=backend) == "ECONNREFUSED"
        _serve(reap, name, ip, ip=ip, backend=backend)
        assert _ask(name, ip=ip, backend=backend) == ip


def test_a_socket_file_is_reached_from_every_vhost_and_the_machine(backend, vips, reap, tmp_path):
    """Paths are files: a vhost's daemon at /run/x.sock answers the machine
    and other vhosts, and a vhost reaches the machine's (syslog's /dev/log)."""
    path, server, client = str(tmp_path / "s.sock"), vips(), vips()
    os.chmod(tmp_path, 0o755)
    _serve(reap, path, server, ip=server, backend=backend)
    assert _ask(path, ip=client, backend=backend) == server
    machine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with machine:
        machine.connect(path)
        assert machine.recv(100).decode() == server


def test_a_host_loopback_vhost_shares_the_machines_abstract_names(backend, vips):
    """The way out, with the machine's loopback: a vhost that must reach an
    abstract socket of the machine's (a session bus at unix:abstract=...)."""
    name = _name("shared")
    with _machine_listens(name):
        ip = vips()
        code, facts, err = run_py(f"c = socket.socket(socket.AF_UNIX); c.connect({name!r}); fact(ok=1)",
                                  ip=ip, backend=backend, host_loopback=True)
        assert (code, facts) == (0, [{"ok": 1}]), err


def _ss_unix(ip, backend, **kwargs):
    """The local addresses of `ss -Hxa` run in vhost ip."""
    need("ss")
    code, out, err = run_in(ip, ["ss", "-Hxa"], backend=backend, **kwargs)
    assert code == 0, err
    return {line.split()[4] for line in out.splitlines() if line.strip()}


@pytest.mark.own_unix_names
@pytest.mark.own_sockets
def test_ss_in_a_vhost_lists_its_own_unix_sockets_not_the_machines_nor_another_vhosts(backend, vips, reap,
                                                                                      tmp_path):
    """`ss -x` asks the kernel about Unix sockets where they live: a vhost's
    are made in its view, so they are listed there, socket files included."""
    os.chmod(tmp_path, 0o755)
    name, path, ip, other = _name("listed"), str(tmp_path / "own.sock"), vips(), vips()
    _serve(reap, name, ip, ip=ip, backend=backend)
    _serve(reap, path, ip, ip=ip, backend=backend)
    _serve(reap, _name("other"), other, ip=other, backend=backend)
    with _machine_listens(_name("machine")):
        listed = _ss_unix(ip, backend)
    assert {"@" + name[1:], path} <= listed
    assert not {"@" + _name("other")[1:], "@" + _name("machine")[1:]} & listed


def test_ss_in_a_host_loopback_vhost_lists_the_machines_unix_sockets(backend, vips):
    name, ip = _name("shared-listed"), vips()
    with _machine_listens(name):
        assert "@" + name[1:] in _ss_unix(ip, backend, host_loopback=True)

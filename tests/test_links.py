"""Link impairments between real vhosts: measured loss, partitions that make
connects time out and heal, counters that match what was sent."""
import json
import math
import os
import subprocess
import time

import pytest

import vaddr
from vaddr import links, shaping
from tests.lab import counting_receiver, run_py, start_py, wait_fact

pytestmark = pytest.mark.kernel

RECEIVER = counting_receiver(7300)


def send_udp(src, dst, count, port=7300):
    """count small datagrams from vhost src to dst, paced so no socket buffer overflows."""
    proc = vaddr.spawn(["python3", "-c", f"""
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({count}):
    u.sendto(b"x" * 32, ("{dst}", {port}))
    if i % 500 == 499: time.sleep(0.002)
"""], ip=src)
    assert proc.wait(timeout=60) == 0


def stats(src, dst):
    return next(r for r in links.list_links() if (r["src"], r["dst"]) == (src, dst))


@pytest.mark.parametrize("loss", [0.01, 0.1, 0.5])
def test_loss_rate_within_binomial_bounds(vips, loss):
    a, b = vips(), vips()
    sent = 20000
    receiver = start_py(RECEIVER, ip=b)
    try:
        wait_fact(receiver)
        links.set_link(a, b, loss=f"{loss * 100}%")
        send_udp(a, b, sent)
        received = wait_fact(receiver, timeout=30)["received"]
    finally:
        receiver.kill()
        receiver.wait()
        links.clear_link(a, b)
    sd = math.sqrt(sent * loss * (1 - loss))
    assert abs((sent - received) - sent * loss) < 5 * sd, (received, sent)


def test_counters_match_what_was_sent(vips):
    a, b = vips(), vips()
    receiver = start_py(RECEIVER, ip=b)
    try:
        wait_fact(receiver)
        links.set_link(a, b, loss="20%", oneway=True)
        send_udp(a, b, 5000)
        received = wait_fact(receiver, timeout=30)["received"]
        row = stats(a, b)
    finally:
        receiver.kill()
        receiver.wait()
        links.clear_link(a, b, oneway=True)
    assert row["packets"] + row["dropped"] == 5000
    assert row["packets"] == received
    assert row["bytes"] == row["packets"] * (28 + 14 + 32)  # IP + UDP, Ethernet on lo, payload


def test_partition_makes_connects_time_out_and_heal_restores(vips):
    a, b = vips(), vips()
    server = start_py("""
        s = socket.socket(); s.bind(("", 7301)); s.listen(); fact(ready=1)
        while True:
            c, _ = s.accept(); c.sendall(b"hi"); c.close()
    """, ip=b)
    probe = """
        c = socket.socket(); c.settimeout(1.5)
        try:
            c.connect(("%s", 7301)); fact(result=c.recv(10).decode())
        except socket.timeout:
            fact(result="timeout")
        except OSError as e:
            fact(result=e.strerror)
    """ % b
    try:
        wait_fact(server)
        links.partition([[a], [b]])
        from tests.lab import run_py
        assert run_py(probe, ip=a)[1] == [{"result": "timeout"}]
        links.heal()
        assert run_py(probe, ip=a)[1] == [{"result": "hi"}]
    finally:
        links.heal()
        server.kill()
        server.wait()


def test_established_connection_stalls_and_recovers(vips):
    a, b = vips(), vips()
    server = start_py("""
        s = socket.socket(); s.bind(("", 7302)); s.listen(); fact(ready=1)
        c, _ = s.accept()
        while True:
            data = c.recv(100)
            if not data: break
            fact(got=data.decode(), at=time.monotonic())
    """, ip=b)
    wait_fact(server)  # listening before the client connects (launches take 0.1 ms now)
    client = start_py(f"""
        c = socket.create_connection(("{b}", 7302)); fact(connected=1)
        for line in sys.stdin:
            c.sendall(line.strip().encode())
    """, ip=a, stdin=vaddr.PIPE)
    try:
        wait_fact(client)
        client.stdin.write(b"before\n"); client.stdin.flush()
        assert wait_fact(server)["got"] == "before"
        links.partition([[a], [b]])
        client.stdin.write(b"during\n"); client.stdin.flush()
        with pytest.raises(AssertionError, match="no fact"):
            wait_fact(server, timeout=1.0)
        links.heal()
        assert wait_fact(server, timeout=10)["got"] == "during"  # retransmitted after heal
    finally:
        links.heal()
        for p in (client, server):
            p.kill()
            p.wait()


def test_bad_values_leave_previous_settings(cli, vips):
    a, b = vips(), vips()
    links.set_link(a, b, loss="5%")
    try:
        for bad in ("150%", "-3%", "lots"):
            proc = cli("link", "set", a, b, "--loss", bad)
            assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert stats(a, b)["loss"] == pytest.approx(0.05)
        proc = cli("link", "set", a, "no-such-vhost", "--loss", "1%")
        assert proc.returncode != 0 and "unknown host" in proc.stderr
    finally:
        links.clear_link(a, b)


def test_link_set_before_the_vhost_exists_applies_when_it_appears(vips):
    a, b = vips(), vips()
    links.partition([[a], [b]])
    try:
        server = start_py("""
            s = socket.socket(); s.bind(("", 7303)); s.listen(); fact(ready=1); s.accept()
        """, ip=b)
        wait_fact(server)
        from tests.lab import run_py
        code, facts, err = run_py(f"""
            c = socket.socket(); c.settimeout(1)
            try:
                c.connect(("{b}", 7303)); fact(r="connected")
            except socket.timeout:
                fact(r="timeout")
        """, ip=a)
        assert facts == [{"r": "timeout"}]
        server.kill()
        server.wait()
    finally:
        links.heal()


def test_link_ls_json_names_vhosts(cli, vips):
    a = vips()
    proc = vaddr.spawn(["sleep", "30"], ip=a, name="linkme")
    try:
        cli("link", "set", "linkme", "host", "--loss", "2%", check=True)
        rows = json.loads(cli("link", "ls", "--json", check=True).stdout)
        mine = [r for r in rows if "linkme" in (r["src_name"], r["dst_name"])]
        assert {(r["src_name"], r["dst_name"]) for r in mine} == {("linkme", "host"), ("host", "linkme")}
        assert all(r["loss"] == pytest.approx(0.02) for r in mine)
        cli("link", "clear", "linkme", "host", check=True)
    finally:
        proc.kill()
        proc.wait()


def test_etcd_loses_and_regains_quorum_under_partition(tmp_path, vips):
    """A replicated database, for real: the minority side of a partition
    cannot write, the majority can, and after heal the minority catches up."""
    from tests.conftest import need
    etcd, etcdctl = need("etcd"), need("etcdctl")
    from tests.lab import etcd_argv
    members = {f"etcd{i}": vips() for i in range(3)}
    names, ips = list(members), list(members.values())
    procs = [vaddr.spawn(etcd_argv(etcd, n, ip, members, tmp_path / n), ip=ip, name=n,
                         stdout=vaddr.DEVNULL, stderr=vaddr.DEVNULL) for n, ip in members.items()]

    def ctl(ip, *args, timeout="2s"):
        p = subprocess.run([etcdctl, f"--endpoints=http://{ip}:2379", f"--command-timeout={timeout}", *args],
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout.strip()

    try:
        deadline = time.monotonic() + 30
        while ctl(ips[0], "put", "k", "v0")[0] != 0:
            assert time.monotonic() < deadline, "etcd cluster did not form"
            time.sleep(0.3)
        links.partition([[names[0], "host"], names[1:]])
        # host sits with the minority: talk to the majority from a vhost beside it.
        # A timed-out write may still commit after heal (etcd forwards it
        # later), so the sides write different keys.
        code, _ = ctl(ips[0], "put", "minority-key", "x")
        assert code != 0, "the minority side must not accept writes"
        majority_put = vaddr.spawn([etcdctl, f"--endpoints=http://{ips[1]}:2379", "--command-timeout=5s",
                                    "put", "majority-key", "yes"], name=names[2])
        deadline = time.monotonic() + 20
        while majority_put.wait(timeout=30) != 0:
            assert time.monotonic() < deadline, "the majority side must elect a leader and write"
            majority_put = vaddr.spawn([etcdctl, f"--endpoints=http://{ips[1]}:2379", "--command-timeout=5s",
                                        "put", "majority-key", "yes"], name=names[2])
        links.heal()
        deadline = time.monotonic() + 20
        while (got := ctl(ips[0], "get", "majority-key", "--print-value-only")) != (0, "yes"):
            assert time.monotonic() < deadline, f"the healed minority must catch up: {got}"
            time.sleep(0.3)
    finally:
        links.heal()
        for p in procs:
            p.kill()
            p.wait()


PINGER = """
c = socket.create_connection(("%s", %d)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(b"x"); c.recv(1)  # warm up
rtts = []
for _ in range(%d):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append((time.perf_counter() - t) * 1e3)
fact(rtts=rtts)
"""
ECHO = """
s = socket.socket(); s.bind(("", %d)); s.listen(); fact(ready=1)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(100)
    if not d: break
    c.sendall(d)
"""


def measure_rtts(a, b, port, count):
    server = start_py(ECHO % port, ip=b)
    try:
        wait_fact(server)
        code, facts, err = run_py(PINGER % (b, port, count), ip=a, timeout=60)
        assert code == 0, err
        return sorted(facts[0]["rtts"])
    finally:
        server.kill()
        server.wait()


def test_round_trip_is_twice_the_one_way_delay(vips):
    a, b = vips(), vips()
    links.set_link(a, b, delay="20ms")
    try:
        rtts = measure_rtts(a, b, 7310, 200)
    finally:
        links.clear_link(a, b)
    median, p99 = rtts[len(rtts) // 2], rtts[int(len(rtts) * 0.99) - 1]
    assert 38.0 <= median <= 42.0, median
    assert p99 <= 42.0, p99
    assert measure_rtts(a, b, 7311, 50)[25] < 5, "clearing the link removes the delay"


def test_jitter_spreads_delay_without_reordering(vips):
    a, b = vips(), vips()
    links.set_link(a, b, delay="10ms", jitter="5ms", oneway=True)
    receiver = start_py("""
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("", 7312)); u.settimeout(2); fact(ready=1)
        seqs = []
        try:
            while True:
                seqs.append(int(u.recv(20)))
        except socket.timeout:
            fact(seqs=seqs)
    """, ip=b)
    try:
        wait_fact(receiver)
        rtts = measure_rtts(a, b, 7313, 100)
        code, _, err = run_py(f"""
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(300):
                u.sendto(str(i).encode(), ("{b}", 7312)); time.sleep(0.0005)
        """, ip=a)
        assert code == 0, err
        seqs = wait_fact(receiver, timeout=30)["seqs"]
    finally:
        links.clear_link(a, b, oneway=True)
        receiver.kill()
        receiver.wait()
    assert seqs == list(range(300)), "jitter must not reorder or lose packets"
    spread = rtts[94] - rtts[5]  # one-way jitter of +-5 ms: a spread of several ms
    assert 4.0 <= spread <= 11.0, spread
    assert 8.0 <= rtts[50] <= 12.5, rtts[50]


def test_rate_limit_holds_throughput_to_the_rate(vips):
    a, b = vips(), vips()
    links.set_link(a, b, rate="10mbit", oneway=True)
    sink = start_py("""
        s = socket.socket(); s.bind(("", 7314)); s.listen(); fact(ready=1)
        c, _ = s.accept(); total = 0; marks = []
        start = time.monotonic()
        while True:
            d = c.recv(1 << 16)
            if not d: break
            total += len(d); now = time.monotonic() - start
            if 1.0 <= now and not marks: marks.append((now, total))
            if now >= 4.0: marks.append((now, total)); break
        fact(bps=(marks[1][1] - marks[0][1]) * 8 / (marks[1][0] - marks[0][0]))
    """, ip=b)
    try:
        wait_fact(sink)
        sender = start_py(f"""
            c = socket.create_connection(("{b}", 7314)); buf = b"x" * 65536
            end = time.monotonic() + 6
            while time.monotonic() < end:
                c.sendall(buf)
        """, ip=a)
        bps = wait_fact(sink, timeout=30)["bps"]
        sender.kill()
        sender.wait()
    finally:
        links.clear_link(a, b, oneway=True)
        sink.kill()
        sink.wait()
    assert 9.5e6 <= bps <= 10.5e6, bps


@pytest.mark.parametrize("option, value, words", [
    ("--delay", "-3ms", "negative"), ("--delay", "20 fortnights", "unknown value or unit"),
    ("--jitter", "abc", "unknown value or unit"), ("--rate", "10 furlongs", "unknown value or unit"),
    ("--rate", "1bit", "below"), ("--rate", "18446744073709559616bit", "above 10 tbit/s"),
    ("--rate", "18446744073709551616bit", "above 10 tbit/s"), ("--delay", "1e400ms", "unknown value"),
])
def test_bad_delay_and_rate_values(cli, vips, option, value, words):
    proc = cli("link", "set", vips(), vips(), option, value)
    assert proc.returncode != 0 and words in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_duplicate_delivers_copies_and_corrupt_discards(vips):
    a, b = vips(), vips()
    sent = 10000
    receiver = start_py(RECEIVER, ip=b)
    try:
        wait_fact(receiver)
        links.set_link(a, b, duplicate="10%", oneway=True)
        send_udp(a, b, sent)
        received = wait_fact(receiver, timeout=30)["received"]
    finally:
        receiver.kill()
        receiver.wait()
        links.clear_link(a, b, oneway=True)
    sd = math.sqrt(sent * 0.1 * 0.9)
    assert abs((received - sent) - sent * 0.1) < 5 * sd, received
    receiver = start_py(RECEIVER.replace("7300", "7305"), ip=b)
    try:
        wait_fact(receiver)
        links.set_link(a, b, corrupt="10%", oneway=True)
        send_udp(a, b, sent, port=7305)
        received = wait_fact(receiver, timeout=30)["received"]
    finally:
        receiver.kill()
        receiver.wait()
        links.clear_link(a, b, oneway=True)
    assert abs((sent - received) - sent * 0.1) < 5 * sd, received


def test_shaping_without_root_says_so(vips):
    from tests.conftest import vaddr_cli
    env = {k: v for k, v in os.environ.items() if k != "VADDR_RUN_DIR"}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *vaddr_cli(),
                           "link", "set", vips(), vips(), "--loss", "1%"], capture_output=True, text=True, timeout=30,
                          env=env)
    assert proc.returncode != 0 and "link shaping needs root" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_links_map_is_named_in_one_line(cli, vips):
    """The links map's limit (maps.LIMITS), hit for real: filled with other
    keys, a new link is refused with the limit named, and no traceback."""
    import errno
    from vaddr import bpfsys, maps
    a, b = vips(), vips()
    cli("link", "set", a, b, "--loss", "1%", check=True)  # attaches shaping and pins the map
    size = maps.LIMITS["links"][0]
    fd = bpfsys.obj_get(os.path.join(maps.PIN_DIR, "links"))
    filler = []
    try:
        for i in range(size):
            key = maps.link_key("198.18.0.1", f"198.19.{i >> 8 & 255}.{i & 255}") if i < 65536 else \
                maps.link_key("198.18.0.2", f"198.19.{i >> 8 & 255}.{i & 255}")
            try:
                bpfsys.update(fd, key, maps.LinkCfg(), bpfsys.BPF_NOEXIST)
                filler.append(key)
            except OSError as e:
                if e.errno == errno.E2BIG:  # full
                    break
                raise
        c = vips()
        proc = cli("link", "set", a, c, "--delay", "1ms")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"vaddr: vaddr's links map is full: this machine holds {size:,} directed links")
        assert proc.stderr.count("\n") == 1
    finally:
        for key in filler:
            bpfsys.delete(fd, key)
        os.close(fd)
        cli("heal")
        cli("link", "clear", a, b)

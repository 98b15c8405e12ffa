"""The pytest plugin, tested with pytest's own pytester: real inner pytest
runs (subprocesses) bringing real labs up and down.  The leak check around
each test sees whatever an inner run left."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import vaddr_cli

pytestmark = pytest.mark.kernel
pytest_plugins = ["pytester"]

LAB = """
[lab]
name = "{name}"
[hosts.web]
ip = "198.19.249.{n}1"
cmd = "python3 -m http.server 8000"
ready = {{ tcp = 8000 }}
[hosts.client]
ip = "198.19.249.{n}2"
"""
FETCH = '["curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8000/"]'


def lab_file(pytester, name="plug", n=1, extra=""):
    pytester.path.joinpath(f"{name}.toml").write_text(LAB.format(name=name, n=n) + extra)


def run(pytester, *args, timeout=120):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)


def labs_up():
    out = subprocess.run([*vaddr_cli(), "status", "--json"], capture_output=True, text=True).stdout
    return [lab["name"] for lab in json.loads(out or "[]")]


def test_passing_and_failing_tests_and_the_failure_carries_host_logs(pytester):
    lab_file(pytester)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.vaddr_lab("plug.toml")
        def test_client_reaches_web_by_name(vaddr_lab):
            assert vaddr_lab["client"].run({FETCH}).stdout == "200"

        @pytest.mark.vaddr_lab("plug.toml")
        def test_fails_after_web_died(vaddr_lab):
            vaddr_lab["client"].run({FETCH})
            vaddr_lab["web"].kill()
            assert 1 + 1 == 3
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "vaddr lab plug: hosts that died during this test" in out and "web: exited with status -9" in out
    assert "vaddr lab plug: host web (exited with status -9)" in out
    assert '"GET / HTTP/1.1" 200' in out                      # the web server's own log lines
    assert "vaddr lab plug: links and partitions at the failure" in out
    assert labs_up() == []


def test_module_scope_shares_a_lab_and_heals_faults_between_tests(pytester):
    lab_file(pytester)
    pytester.makepyfile(f"""
        import os
        import pytest
        pytestmark = pytest.mark.vaddr_lab("plug.toml", scope="module")
        PIDS = []

        def test_first_breaks_things(vaddr_lab):
            PIDS.append(vaddr_lab["client"].pids())
            vaddr_lab.partition(["web"], ["client"])
            vaddr_lab["web"].stop()
            vaddr_lab.link("client", "host").set(delay="300ms")

        def test_second_finds_them_mended(vaddr_lab):
            assert vaddr_lab["client"].pids() == PIDS[0]       # the same lab, not a new one
            assert vaddr_lab["web"].state == "ready" and vaddr_lab["web"].restarts == 1
            assert vaddr_lab["client"].run({FETCH}).stdout == "200"
            assert vaddr_lab.status()["links"] == [] or all(not l["partitioned"] and not l["delay_us"]
                                                            for l in vaddr_lab.status()["links"])
    """)
    run(pytester).assert_outcomes(passed=2)
    assert labs_up() == []


def test_labs_go_down_after_an_exception_in_setup(pytester):
    lab_file(pytester)
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def broken(vaddr_lab):
            raise RuntimeError("set-up failed")

        @pytest.mark.vaddr_lab("plug.toml")
        def test_x(broken):
            pass
    """)
    result = run(pytester)
    result.assert_outcomes(errors=1)
    assert "vaddr lab plug: host web (ready)" in result.stdout.str()   # the report of a set-up error too
    assert labs_up() == []


def start_waiting_run(pytester, **popen):
    """An inner pytest run whose one test holds the lab up for a minute;
    returned once the test is inside (the lab is up)."""
    lab_file(pytester)
    marker = pytester.path / "inside"
    pytester.makepyfile(f"""
        import pathlib, time
        import pytest

        @pytest.mark.vaddr_lab("plug.toml")
        def test_waits(vaddr_lab):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(pytester.path)],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    assert labs_up() == ["plug"]
    return proc


def no_vhosts():
    return json.loads(subprocess.run([*vaddr_cli(), "ls", "--json"], capture_output=True, text=True).stdout) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_labs_go_down_when_the_run_is_interrupted(pytester, sig):
    proc = start_waiting_run(pytester, start_new_session=True)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    proc.wait(60)
    assert labs_up() == [] and no_vhosts()


def test_a_killed_run_is_cleaned_by_the_next(pytester):
    proc = start_waiting_run(pytester)
    proc.kill()
    proc.wait()
    assert labs_up() == ["plug"]                # SIGKILL: nothing could run
    pytester.makepyfile("def test_nothing(): pass")
    run(pytester).assert_outcomes(passed=1)
    assert labs_up() == [] and no_vhosts()


def test_keep_on_failure_leaves_the_lab_and_says_how_to_remove_it(pytester, cli):
    lab_file(pytester)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.vaddr_lab("plug.toml")
        def test_fails(vaddr_lab):
            assert False
    """)
    result = run(pytester, "--vaddr-keep-on-failure")
    result.assert_outcomes(failed=1)
    assert "lab plug was left running for inspection" in result.stdout.str()
    assert "vaddr down plug" in result.stdout.str()
    try:
        assert labs_up() == ["plug"]
        assert cli("exec", "client", "--", *json.loads(FETCH)).stdout == "200"
        assert cli("shell", "--help").returncode == 0
    finally:
        assert cli("down", "plug", timeout=60).returncode == 0


def test_factory_and_vaddr_host_build_labs_in_code(pytester):
    pytester.makepyfile(f"""
        def test_built_in_code(vaddr_lab_factory, vaddr_host):
            lab = vaddr_lab_factory(name="pair")
            lab.add_host("a", ip="198.19.249.31", cmd=["python3", "-m", "http.server", "8000"], ready={{"tcp": 8000}})
            b = lab.add_host("b", ip="198.19.249.32")
            lab.up()
            assert b.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{{http_code}}", "http://a:8000/"]).stdout == "200"
            one = vaddr_host(ip="198.19.249.33", cmd=["sleep", "infinity"])
            assert one.pids() and one.ip == "198.19.249.33"
    """)
    run(pytester).assert_outcomes(passed=1)
    assert labs_up() == []


def test_two_runs_cannot_bring_up_the_same_lab_at_once(pytester, cli):
    lab_file(pytester)
    assert cli("up", "-d", "-f", str(pytester.path / "plug.toml"), timeout=60).returncode == 0
    try:
        pytester.makepyfile("""
            import pytest

            @pytest.mark.vaddr_lab("plug.toml")
            def test_x(vaddr_lab):
                pass
        """)
        result = run(pytester)
        result.assert_outcomes(errors=1)
        assert "lab plug is already up (fix: vaddr down plug first, or vaddr status)" in result.stdout.str()
    finally:
        cli("down", "plug", timeout=60)


def test_a_lab_that_needs_ebpf_is_skipped_under_the_shim_with_the_reason(pytester):
    lab_file(pytester, extra='[[links]]\nbetween = ["web", "client"]\nloss = "1%"\n')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.vaddr_lab("plug.toml")
        def test_x(vaddr_lab):
            pass
    """)
    result = run(pytester, "--vaddr-backend=preload", "-rs")
    result.assert_outcomes(skipped=1)
    assert "vaddr lab plug needs the eBPF backend: it sets links" in result.stdout.str()


def test_the_plugin_runs_as_a_normal_user_on_the_shim(test_user, user_folder):
    (user_folder / "plug.toml").write_text(LAB.format(name="userlab", n=4))
    (user_folder / "test_user_lab.py").write_text("""
import pytest

@pytest.mark.vaddr_lab("plug.toml")
def test_client_reaches_web(vaddr_lab):
    got = vaddr_lab["client"].run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://198.19.249.41:8000/"])
    assert got.stdout == "200"
    assert vaddr_lab["web"].backend == "preload"
""")
    argv = ["setpriv", f"--reuid={test_user.uid}", f"--regid={test_user.gid}", "--clear-groups", "--",
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(user_folder)]
    got = subprocess.run(argv, env=test_user.env, cwd=user_folder, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and "1 passed" in got.stdout, got.stdout + got.stderr


def test_the_examples_pass(tmp_path):
    """examples/: the two modules the README offers to copy."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples"], cwd=here,
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stdout[-3000:]
    assert "7 passed" in got.stdout


"""pytest plugin: real clusters and network faults as fixtures.

    @pytest.mark.vaddr_lab("tests/kv.toml", scope="module")
    def test_majority_keeps_writing(vaddr_lab):
        with vaddr_lab.partitioned(["n1"], ["n2", "n3"]):
            ...

Fixtures: vaddr_lab (the marker's lab, up before the test), vaddr_lab_factory
(labs from files or code, any number), vaddr_host (one ad-hoc vhost).  All of
it is pytest's life cycle around vaddr.Lab: labs go down after their scope,
after a failure, Ctrl-C or SIGTERM; a failed test's report carries every
host's state and output.  Registered through the pytest11 entry point; it
imports vaddr's lab layer only when a test asks for a lab."""
import os
import signal

import pytest

SCOPES = ("function", "module", "session")
LOG_LINES = 50


def pytest_addoption(parser):
    group = parser.getgroup("vaddr", "vaddr labs")
    group.addoption("--vaddr-backend", choices=("auto", "ebpf", "preload"), default="auto",
                    help="Backend for every lab: ebpf (root), preload (no root), auto (default).")
    group.addoption("--vaddr-keep-on-failure", action="store_true",
                    help="Leave a failed test's labs running, and print how to inspect and remove them.")


def pytest_configure(config):
    config.addinivalue_line("markers", "vaddr_lab(path, scope='function'): run the test with the lab of this file "
                            "up (fixture vaddr_lab); scope 'module' or 'session' shares it between tests")
    config._vaddr_kept = []
    if getattr(config, "workerinput", None) is None and _on_main_thread():
        # SIGTERM ends pytest like Ctrl-C, so that finalizers take the labs down.
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)


def _on_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


def pytest_sessionstart(session):
    """Labs of a pytest run that was SIGKILLed (their owner is gone) are taken
    down before this run starts its own."""
    from vaddr.lab import store
    if not os.path.isdir(store.labs_dir()):
        return
    from vaddr.lab.lab import Lab
    for name in store.names():
        state = store.load(name)
        if state and state.get("made_by") == "pytest" and not store.owner_alive(state):
            Lab.attach(name).down()


class _Labs:
    """The labs one test used, for its report."""

    def __init__(self):
        self.labs, self.states_at_start = [], {}

    def add(self, lab):
        if lab not in self.labs:
            self.labs.append(lab)
            self.states_at_start[lab.name] = {h.name: h.state for h in lab.hosts}


def _used(item):
    if not hasattr(item, "_vaddr_used"):
        item._vaddr_used = _Labs()
    return item._vaddr_used


def _make(config, path=None, name=None, base=None, **kwargs):
    from vaddr.lab.lab import Lab
    backend = config.getoption("--vaddr-backend")
    if path is not None:
        found = [p for p in (os.path.join(base or "", str(path)), os.path.join(str(config.rootpath), str(path)))
                 if os.path.exists(p)]
        lab = Lab.from_file(found[0] if found else str(path))
        if backend != "auto":
            lab.spec.backend = backend
    else:
        lab = Lab(name, backend=backend if backend != "auto" else kwargs.pop("backend", "auto"), **kwargs)
    lab.made_by = "pytest"
    return lab


def _up(lab):
    """Up, or a skip naming why this lab cannot run on the backend chosen here."""
    if lab.backend == "preload":
        why = lab.needs_ebpf()
        if why:
            pytest.skip(f"vaddr lab {lab.name} needs the eBPF backend: {why}")
    from vaddr.commands import error_line
    from vaddr.errors import VaddrError
    try:
        lab.up()
    except VaddrError as e:  # one line naming the problem and the fix, not vaddr's traceback
        pytest.fail(error_line(e), pytrace=False)
    return lab


def _down(request, lab):
    if lab.is_up and request.config.getoption("--vaddr-keep-on-failure") and _failed(request.node):
        request.config._vaddr_kept.append(lab.name)
        lab.detach()
        return
    lab.down()


def _failed(node):
    return any(getattr(node, f"_vaddr_rep_{when}", None) is not None and getattr(node, f"_vaddr_rep_{when}").failed
               for when in ("setup", "call"))


@pytest.fixture
def vaddr_lab_factory(request):
    """factory(path) or factory(name=...) -> a vaddr.Lab; from a file it is up
    already, built in code it is up once you call lab.up().  Every lab goes
    down at the end of the test."""
    made = []

    def factory(path=None, name=None, **kwargs):
        lab = _make(request.config, path, name, base=os.path.dirname(str(request.fspath)), **kwargs)
        made.append(lab)
        _used(request.node).add(lab)
        if path is not None:
            _up(lab)
        else:
            original_up = lab.up

            def up(on_progress=None):
                if lab.backend == "preload" and lab.needs_ebpf():
                    pytest.skip(f"vaddr lab {lab.name} needs the eBPF backend: {lab.needs_ebpf()}")
                return original_up(on_progress)
            lab.up = up
        return lab
    yield factory
    for lab in reversed(made):
        _down(request, lab)


@pytest.fixture
def vaddr_host(vaddr_lab_factory, request):
    """vaddr_host(ip=..., cmd=..., name=None, ready=None, ...) -> a running
    lab host of a one-host lab, gone after the test."""
    count = [0]

    def make(ip, cmd=None, name=None, **kwargs):
        count[0] += 1
        host_name = name or f"h{count[0]}"
        lab = vaddr_lab_factory(name=f"t{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**6}-{count[0]}")
        host = lab.add_host(host_name, ip=ip, cmd=cmd, **kwargs)
        lab.up()
        return host
    return make


@pytest.fixture
def vaddr_lab(request):
    """The lab named by the test's vaddr_lab marker, up, with the faults of
    earlier tests sharing it undone."""
    marker = request.node.get_closest_marker("vaddr_lab")
    if marker is None or not marker.args:
        raise pytest.UsageError(f"{request.node.nodeid}: the vaddr_lab fixture needs "
                                "@pytest.mark.vaddr_lab(\"path/to/lab.toml\")")
    path, scope = marker.args[0], marker.kwargs.get("scope", "function")
    if scope not in SCOPES:
        raise pytest.UsageError(f"vaddr_lab scope '{scope}': use one of {', '.join(SCOPES)}")
    base = os.path.dirname(str(request.fspath))
    if scope == "function":
        lab = _up(_make(request.config, path, base=base))
        _used(request.node).add(lab)
        yield lab
        _down(request, lab)
        return
    owner = request.node.getparent(pytest.Module) if scope == "module" else request.session
    shared = getattr(owner, "_vaddr_shared", None)
    if shared is None:
        shared = owner._vaddr_shared = {}
    lab = shared.get(path)
    if lab is None:
        lab = shared[path] = _up(_make(request.config, path, base=base))
        owner.addfinalizer(lambda: lab.down() if lab.is_up else None)
    else:
        lab.restore()  # the previous test's partitions, links and stopped hosts
    _used(request.node).add(lab)
    yield lab


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_vaddr_rep_{report.when}", report)
    used = getattr(item, "_vaddr_used", None)
    if used is None or not report.failed or report.when == "teardown":
        return
    for lab in used.labs:
        for title, text in _sections(lab, used.states_at_start.get(lab.name, {})):
            report.sections.append((title, text))


def _sections(lab, at_start):
    died = [h for h in lab.hosts if h.state == "exited" and at_start.get(h.name) in ("ready", "starting")]
    if died:
        yield (f"vaddr lab {lab.name}: hosts that died during this test",
               "\n".join(f"{h.name}: {h.describe()}" for h in died))
    for h in lab.hosts:
        state = h.describe()
        tail = h.logs(LOG_LINES)
        yield (f"vaddr lab {lab.name}: host {h.name} ({state})",
               f"state: {state}; addresses: {', '.join(h.spec.ips)}; pids: {h.pids()}; restarts: {h.restarts}\n"
               f"last {LOG_LINES} lines of {h.log_path}:\n{tail}")
    try:
        rows = lab.status()["links"]
    except Exception as e:  # a report must not fail for want of link counters
        rows, note = [], f"(links unreadable: {e})"
    else:
        note = "no link settings or partitions" if not rows else ""
    text = "\n".join(f"{r['src_name']} -> {r['dst_name']}: delay {r['delay_us'] / 1000:g}ms, loss {r['loss'] * 100:g}%, "
                     f"rate {r['rate_bps']}bit/s{', PARTITIONED' if r['partitioned'] else ''}; "
                     f"passed {r['packets']} pkts, dropped {r['dropped']}" for r in rows) or note
    yield (f"vaddr lab {lab.name}: links and partitions at the failure", text)


def pytest_terminal_summary(terminalreporter, config):
    for name in getattr(config, "_vaddr_kept", []):
        terminalreporter.write_line(f"vaddr: lab {name} was left running for inspection (--vaddr-keep-on-failure): "
                                    f"vaddr status {name}; vaddr shell HOST; vaddr logs HOST; "
                                    f"remove it with: vaddr down {name}")

"""`vaddr reset`: remove everything vaddr made, in the order that releases it:
processes, vhost cgroups, the parent cgroup (which detaches the hooks), pins,
routes and addresses, and the state folder."""
import os
import shutil
import time

from vaddr import backends, cgroups, maps, registry, runtime


def _wait_empty(path, timeout=5.0):
    deadline = time.monotonic() + timeout
    while cgroups.populated(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def reset():
    """Returns counts of what was removed.  Without root only the user's own
    LD_PRELOAD vhosts exist, and only they (and the state folder) go."""
    done = {"labs": 0, "vhosts": 0, "cgroups": 0, "pins": 0, "routes": 0, "filters": 0}
    if os.geteuid() != 0:
        with runtime.Lock():
            done["labs"] = _remove_labs()
            done["vhosts"] = _remove_vhosts()
            _clear_state_folder()
        return done
    with runtime.Lock():
        from vaddr import loader, shaping
        # Our filters are found by priority, so detach also clears those of a
        # load killed before it recorded them.
        if shaping.ready() or os.path.exists(os.path.join(runtime.RUN_DIR, shaping.CLSACT_MARK)) or \
                loader.udp_ports() == "on":
            done["filters"] = 1
        shaping.detach()
        done["labs"] = _remove_labs()
        done["vhosts"] = _remove_vhosts()
        try:
            cgroups.mount_point()
            has_cgroup2 = True
        except Exception:
            has_cgroup2 = False
        if has_cgroup2:
            for name in cgroups.vhost_dirs():  # left by a vaddr killed before its record was useful
                path = cgroups.vhost_path(name)
                cgroups.kill_all(path)
                _wait_empty(path)
                if cgroups.remove(path):
                    done["cgroups"] += 1
            cgroups.remove(cgroups.parent_path())
        if os.path.isdir(maps.PIN_DIR):
            for name in os.listdir(maps.PIN_DIR):
                os.unlink(os.path.join(maps.PIN_DIR, name))
                done["pins"] += 1
            os.rmdir(maps.PIN_DIR)
        done["routes"] = _remove_routes()
        from vaddr import views
        views.stop()  # after the vhosts: their views go with the daemon
        _clear_state_folder()
    return done


def _remove_labs():
    """Labs' owners (SIGKILL: the hosts go below, with every vhost), names,
    private mount points and work folders; their subnets go with the routes."""
    from vaddr.lab import names, store
    labs = store.names()
    for name in labs:
        state = store.load(name) or {}
        if store.owner_alive(state):
            try:
                os.kill(state["owner"], 9)
            except ProcessLookupError:
                pass
        names.withdraw(name, locked=True)
        for path in sorted(state.get("made_mount_points", []), key=len, reverse=True):
            try:
                os.rmdir(path)
            except OSError:
                pass
        if state.get("root"):
            shutil.rmtree(state["root"], ignore_errors=True)
    return len(labs)


def _remove_vhosts():
    """All at once: every vhost killed, then one wait for them all, then each
    undone with the maps opened once (one at a time, with a wait each, took
    10.5 ms a vhost)."""
    from vaddr import vhost
    records = registry.all_records()
    for record in records:
        backends.get(record.backend).kill(record)
    vhost.wait_all_gone(records, 5)
    maps = vhost.open_maps(records)
    try:
        for record in records:
            backends.get(record.backend).teardown(record, maps=maps)
            registry.delete(record.name)
    finally:
        if maps is not None:
            maps.close()
    return len(records)


def _clear_state_folder():
    from vaddr.backends import preload
    preload.release_claims()
    for name in os.listdir(runtime.RUN_DIR):
        if name != "lock":
            path = os.path.join(runtime.RUN_DIR, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _remove_routes():
    from vaddr import routes
    found = routes.vaddr_routes()
    for dst in found:
        routes.unmake_local_net(dst) if "/" in dst else routes.unmake_local(dst)
    return len(found)

"""What daemons need of a lab: private folders they can write after
dropping to their own user."""
import os
import shutil

import pytest

pytestmark = pytest.mark.kernel


def test_a_private_folder_is_an_empty_copy_of_the_folder_it_covers(cli, tmp_path, test_user):
    """/var/lib/NAME belongs to the daemon's user: each host's private one
    does too (same owner and mode, empty), so a daemon that starts as root and
    drops to its user writes there; a folder that did not exist is the
    host's user's."""
    covered, fresh = "/run/vaddr-test-covered", "/run/vaddr-test-fresh"
    os.mkdir(covered, 0o750)
    os.chown(covered, test_user.uid, test_user.gid)
    (open(os.path.join(covered, "machine-file"), "w")).close()
    lab = tmp_path / "own.toml"
    lab.write_text(f'[hosts.d]\nip = "198.19.250.81"\nprivate = ["{covered}", "{fresh}"]\nuser = "{test_user.name}"\n'
                   f'cmd = ["sh", "-c", "echo mine > {covered}/f && echo mine > {fresh}/f && sleep infinity"]\n'
                   f'ready = {{ cmd = "test -s {fresh}/f" }}\n')
    try:
        up = cli("up", "-d", "-f", str(lab), timeout=60)
        assert up.returncode == 0, up.stderr
        seen = cli("exec", "d", "--", "stat", "-c", "%U %a", covered, fresh).stdout.split("\n")
        assert seen[:2] == [f"{test_user.name} 750", f"{test_user.name} 755"]
        assert cli("exec", "d", "--", "ls", covered).stdout.split() == ["f"]
    finally:
        cli("down", timeout=60)
        shutil.rmtree(os.path.join(os.environ["VADDR_LAB_DIR"], "own"), ignore_errors=True)  # a failed up's logs
        os.unlink(os.path.join(covered, "machine-file"))
        os.rmdir(covered)
    assert not os.path.exists(fresh)


def test_a_private_path_that_is_a_file_is_refused_before_anything_starts(cli, tmp_path):
    lab = tmp_path / "file.toml"
    lab.write_text('[hosts.f]\nip = "198.19.250.85"\nprivate = ["/etc/hostname"]\n')
    up = cli("up", "-d", "-f", str(lab), timeout=60)
    assert (up.returncode, up.stderr.count("\n")) == (1, 1), up.stderr
    assert "private: /etc/hostname is not a folder" in up.stderr and "Traceback" not in up.stderr
    assert not os.path.exists(os.path.join(os.environ["VADDR_LAB_DIR"], "file"))

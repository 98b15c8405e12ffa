"""Lab files: the issue's example as written, every placeholder, and every
mistake reported with the file, line, key and fix before anything starts.
Pure parsing: no kernel, no root."""
import os

import pytest

from vaddr.errors import VaddrError
from vaddr.lab import savefile, spec
from vaddr.lab.placeholders import host_fields

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "labs", "issue_example.toml")


def test_issue_example_parses_as_written():
    lab = spec.load(EXAMPLE)
    assert lab.name == "kv" and lab.subnets == ["10.0.0.0/24"]
    names = [h.name for h in lab.hosts]
    assert names[:2] == ["n1", "n2"] and names[2:] == [f"worker{i}" for i in range(1, 51)]
    assert lab.host("worker50").ip4 == "10.0.1.50"
    assert lab.host("n1").ready == {"kind": "tcp", "value": 2379, "timeout": 30.0}
    assert lab.host("n1").private == ["/run/kv"] and lab.host("n2").after == ["n1"]
    (link,) = lab.links
    assert (link.a, link.b, link.oneway, link.settings) == ("n1", "n2", False, {"delay": "20ms", "loss": "1%"})


def test_every_placeholder_is_filled():
    text = """
[lab]
name = "ph"
[hosts.a]
ip = ["198.18.1.1", "fd76:6164::1"]
cmd = ["echo", "{name} {ip} {ip6} {index} {dir} {lab} {hosts.b1.ip} {hosts.a.ip6} {{literal}}"]
env = { SELF = "{name}@{ip}" }
cwd = "{dir}"
[hosts.b]
count = 2
ip = "198.18.1.10"
cmd = "run --id {index} --peer {hosts.a.ip}"
"""
    lab = spec.parse(text, "ph.toml")
    a = host_fields(lab.host("a"), lab, "/w/a")
    assert a["argv"][1] == "a 198.18.1.1 fd76:6164::1 1 /w/a ph 198.18.1.10 fd76:6164::1 {literal}"
    assert a["env"] == {"SELF": "a@198.18.1.1"} and a["cwd"] == "/w/a"
    assert host_fields(lab.host("b2"), lab, "/w")["argv"] == ["run", "--id", "2", "--peer", "198.18.1.1"]


def test_host_without_cmd_idles_until_stopped():
    lab = spec.parse('[hosts.idle]\nip = "198.18.1.1"\n', "idle.toml")
    assert host_fields(lab.host("idle"), lab, "/w")["argv"] == ["sleep", "infinity"]
    assert lab.name == "idle"  # the file's stem


BASE = '[hosts.n1]\nip = "198.18.1.1"\ncmd = "sleep 1"\n[hosts.n2]\nip = "198.18.1.2"\ncmd = "sleep 1"\n'

MISTAKES = [
    ("unknown key", BASE + "colour = 1\n", "f.toml:7: hosts.n2.colour: unknown key", "known keys"),
    ("unknown table", "[lab]\nname='x'\n[nodes.a]\nip='1.2.3.4'\n", "f.toml:3: nodes: unknown table", "[hosts.NAME]"),
    ("bad address", BASE.replace('"198.18.1.2"', '"198.18.1.999"'), "f.toml:5: hosts.n2.ip: '198.18.1.999' is not an IP",
     "IPv4 address"),
    ("address twice", BASE.replace('"198.18.1.2"', '"198.18.1.1"'), "f.toml:5: hosts.n2.ip: 198.18.1.1 is given to both",
     "its own address"),
    ("count makes a used name", BASE + '[hosts.n]\ncount = 2\nip = "198.18.1.5"\n',
     "hosts.n: host name 'n1' is used twice", "rename one"),
    ("unknown placeholder", BASE.replace('cmd = "sleep 1"\n[hosts.n2]', 'cmd = "sleep {nme}"\n[hosts.n2]'),
     "f.toml:3: hosts.n1.cmd: unknown placeholder {nme}", "{name}"),
    ("placeholder of an unknown host", BASE.replace('"sleep 1"\n[hosts.n2]', '"ping {hosts.n9.ip}"\n[hosts.n2]'),
     "hosts.n1.cmd: {hosts.n9.ip}: no host named 'n9'", "name a host"),
    ("ip6 of a host without one", BASE.replace('"sleep 1"\n[hosts.n2]', '"ping {ip6}"\n[hosts.n2]'),
     "hosts.n1.cmd: {ip6}: n1 has no IPv6 address", "give the host one"),
    ("after cycle", BASE.replace('cmd = "sleep 1"\n[hosts.n2]', 'cmd = "sleep 1"\nafter = ["n2"]\n[hosts.n2]')
     + 'after = ["n1"]\n', "f.toml:4: hosts.n1.after: a cycle: n1 -> n2 -> n1", "break it"),
    ("after an unknown host", BASE + 'after = ["n7"]\n', "f.toml:7: hosts.n2.after: unknown host 'n7'", "known: n1, n2"),
    ("link to an unknown host", BASE + '[[links]]\nbetween = ["n1", "n3"]\nloss = "1%"\n',
     "f.toml:8: links[0].between: unknown host 'n3'", '"host" for the machine'),
    ("link setting", BASE + '[[links]]\nbetween = ["n1", "host"]\ndelay = "fast"\n',
     "f.toml:9: links[0].delay: unknown value or unit ('fast')", "20ms"),
    ("ready port", BASE + "ready = { tcp = 0 }\n", "f.toml:7: hosts.n2.ready.tcp: '0' is not a port", "1 to 65535"),
    ("two ready kinds", BASE + 'ready = { tcp = 80, log = "x" }\n', "hosts.n2.ready: needs exactly one of", "ready ="),
    ("ready timeout", BASE + 'ready = { tcp = 80, timeout = "soon" }\n', "hosts.n2.ready.timeout: 'soon' is not a duration",
     "30s"),
    ("no hosts", '[lab]\nname = "empty"\n', "f.toml: hosts: the lab has no hosts", "[hosts.n1]"),
    ("syntax", BASE + "oops\n", "f.toml: not valid TOML", "line and column"),
    ("unclosed quote in cmd", BASE.replace('"sleep 1"\n[hosts.n2]', "\"sh -c 'x\"\n[hosts.n2]"),
     "hosts.n1.cmd: cannot split the command line", "close the quote"),
    ("private not absolute", BASE + 'private = ["run/x"]\n', "hosts.n2.private: must be a list of absolute", "/run/"),
    ("way out not a flag", BASE + 'host_loopback = "yes"\n', "f.toml:7: hosts.n2.host_loopback: must be true or false",
     "host_loopback = true"),
    ("count zero", BASE + "[hosts.w]\ncount = 0\nip = '198.18.2.1'\n", "hosts.w.count: '0' is not a number of hosts",
     "1 to"),
]


@pytest.mark.parametrize("what,text,message,hint", [m for m in MISTAKES if m[2]], ids=[m[0] for m in MISTAKES if m[2]])
def test_mistake_is_reported_with_file_line_key_and_fix(what, text, message, hint):
    with pytest.raises(VaddrError) as err:
        spec.parse(text, "f.toml")
    assert err.value.message.startswith("f.toml") and message in err.value.message, err.value.message
    assert hint in err.value.hint
    assert "\n" not in err.value.message


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(VaddrError) as err:
        spec.load(str(tmp_path / "vaddr.toml"))
    assert "no lab file" in err.value.message and "-f FILE" in err.value.hint


def test_saved_file_reads_back_as_the_same_lab():
    lab = spec.load(EXAMPLE)
    again = spec.parse(savefile.dump(lab, lab.links), "kv.toml")
    assert [h.to_dict() for h in again.hosts] == [h.to_dict() for h in lab.hosts]
    assert [l.to_dict() for l in again.links] == [l.to_dict() for l in lab.links]
    assert again.subnets == lab.subnets

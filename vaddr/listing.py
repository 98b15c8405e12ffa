"""What `vaddr ls` prints, without click: the CLI's command and the fast path
in entry.py (which skips click's ~25 ms import: `ls --json` at 10,000 vhosts
is a script's poll) both call lines()."""
import json
import os
import sys


def table(rows):
    """Lines of columns padded to their widest cell; rows[0] is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def age(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def lines(as_json=False, all_users=False):
    """The output of `vaddr ls [--json] [--all-users]`, as lines."""
    from vaddr import users, vhost
    if all_users:
        users.require_root()
    dicts = [h.to_dict() for h in vhost.list_vhosts()]
    others = users.others() if os.geteuid() == 0 else []
    if all_users:
        for u in others:
            dicts += users.list_vhosts(u)
    if as_json:
        # Indented for a reader; compact for a script, where json's C encoder
        # does 10,000 vhosts in a tenth of the time.
        return [json.dumps(dicts, indent=2 if sys.stdout.isatty() else None)]
    out = []
    if not dicts:
        out.append("no vhosts (start one with: vaddr spawn --ip ADDR -- CMD)")
    else:
        rows = [("NAME", "IPV4", "IPV6", "PIDS", "UPTIME", "OWNER", "COMMAND", "")]
        for h in dicts:
            pids = h["pids"]
            shown = ",".join(map(str, pids[:4])) + (f",+{len(pids) - 4}" if len(pids) > 4 else "")
            command = h["command"] if len(h["command"]) <= 40 else h["command"][:39] + "…"
            rows.append((h["name"], h["ip4"] or "-", h["ip6"] or "-", shown or "-", age(h["uptime"]),
                         h["owner"], command or "-", "keep" if h["keep"] else ""))
        out += table(rows)
    unseen = [f"{u.name} ({n})" for u in others if (n := users.recorded(u))] if not all_users else []
    if unseen:
        out.append(f"other users' LD_PRELOAD vhosts, not shown: {', '.join(unseen)}; vaddr ls --all-users lists them")
    return out

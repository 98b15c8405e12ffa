"""Reading a lab's logs for the addresses its daemons wrote down."""
import glob
import json
import os
import re


def lab_logs(cli):
    """Every host's output of the one lab up, and the log files its daemons
    wrote in its private folders (/var/log/NAME)."""
    [state] = json.loads(cli("status", "--json").stdout)
    text = ""
    for h in state["hosts"]:
        private = os.path.join(os.path.dirname(h["log"]), "private")
        for path in [h["log"], *glob.glob(os.path.join(private, "**", "*.log"), recursive=True)]:
            with open(path, errors="replace") as f:
                text += f.read()
    return text


def addresses(text):
    return set(re.findall(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", text))

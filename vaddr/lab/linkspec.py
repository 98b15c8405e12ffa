"""[[links]] of a lab file: two hosts (between, or from/to for one way) and
their settings, each checked with the parser `vaddr link set` uses."""
from vaddr import links
from vaddr.errors import VaddrError

LINK_SETTINGS = ("delay", "jitter", "loss", "rate", "duplicate", "corrupt")
LINK_KEYS = {"between", "from", "to", *LINK_SETTINGS}


class LinkSpec:
    def __init__(self, a, b, oneway=False, settings=None):
        self.a, self.b, self.oneway = a, b, oneway
        self.settings = dict(settings or {})

    def to_dict(self):
        return {"a": self.a, "b": self.b, "oneway": self.oneway, "settings": self.settings}

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def parse_links(value, names, where):
    """LinkSpecs of the [[links]] array; `names`: the lab's host names."""
    if not isinstance(value, list):
        raise where.error("links", "must be a list of tables", "write each link as [[links]]")
    out = []
    for i, link in enumerate(value):
        key = f"links[{i}]"
        if not isinstance(link, dict):
            raise where.error(key, "must be a table", "write each link as [[links]]")
        for k in link:
            if k not in LINK_KEYS:
                raise where.error(f"{key}.{k}", "unknown key", "a link has between (or from and to) and "
                                  + ", ".join(LINK_SETTINGS))
        if "between" in link:
            ends, oneway = link["between"], False
            if not (isinstance(ends, list) and len(ends) == 2 and all(isinstance(e, str) for e in ends)):
                raise where.error(f"{key}.between", "must name two hosts", "write between = [\"n1\", \"n2\"]")
            if "from" in link or "to" in link:
                raise where.error(key, "has both between and from/to", "use between for both ways, from/to for one")
        elif "from" in link and "to" in link:
            ends, oneway = [link["from"], link["to"]], True
        else:
            raise where.error(key, "names no hosts", "write between = [\"n1\", \"n2\"], or from = \"n1\" and to = \"n2\"")
        for end in ends:
            if end != links.HOST and end not in names:
                raise where.error(f"{key}.{'between' if not oneway else 'from'}", f"unknown host '{end}'",
                                  "name a host of this file, or \"host\" for the machine")
        if ends[0] == ends[1]:
            raise where.error(key, f"links {ends[0]} to itself", "name two different hosts")
        settings = {k: link[k] for k in LINK_SETTINGS if k in link}
        if not settings:
            raise where.error(key, "sets nothing", "add delay, jitter, loss, rate, duplicate or corrupt")
        parse = {"delay": links.parse_duration, "jitter": lambda v: links.parse_duration(v, "jitter"),
                 "loss": links.parse_percent, "rate": links.parse_rate,
                 "duplicate": lambda v: links.parse_percent(v, "duplicate"),
                 "corrupt": lambda v: links.parse_percent(v, "corrupt")}
        for k, v in settings.items():
            try:
                parse[k](str(v))
            except VaddrError as e:
                raise where.error(f"{key}.{k}", e.message.split(": ", 1)[-1] + f" ('{v}')", e.hint.replace("--", ""))
            settings[k] = str(v)
        out.append(LinkSpec(ends[0], ends[1], oneway, settings))
    return out

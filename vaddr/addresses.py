"""Checking and normalising the addresses a user gives.

_socket rather than socket or ipaddress: those import enum and re, a few ms
on every spawn, for functions _socket has."""
import _socket as socket

from vaddr.errors import VaddrError

HOST_LAB_ADDRS = ("127.0.0.1", "::1")


def parse_vip(text):
    """(version, canonical text) of a virtual address, or a VaddrError saying why not."""
    text = text.strip()
    if "/" in text:
        raise VaddrError(f"'{text}' is a prefix, not an address", "give one address, like 10.0.0.2")
    for af, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            raw = socket.inet_pton(af, text)
        except (OSError, ValueError):
            continue
        canonical = socket.inet_ntop(af, raw)
        _check_usable(canonical, raw, version)
        return version, canonical
    raise VaddrError(f"'{text}' is not an IP address",
                     "give an IPv4 address like 10.0.0.2 or an IPv6 one like fd76:6164::2")


def _check_usable(canonical, raw, version):
    why = None
    if canonical in HOST_LAB_ADDRS:
        why = "is the host's own address in the lab"
    elif raw == b"\0" * len(raw):
        why = "is the wildcard address"
    elif version == 4 and raw[:2] == b"\x7f\x7f":
        why = "is in 127.127.0.0/16, where each vhost gets its private 127.0.0.1,"
    elif version == 4 and raw[0] >= 224:
        why = "is a multicast, reserved or broadcast address"
    elif version == 6 and raw[0] == 0xFF:
        why = "is a multicast address"
    elif version == 6 and raw[:2] == b"\xfe\x80":
        why = "is link-local, which needs an interface"
    elif version == 6 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        why = "is v4-mapped"
    if why:
        raise VaddrError(f"{canonical} {why} and cannot be a vhost's address",
                         "pick a unicast address such as 10.0.0.2 or fd76:6164::2")


def canonical(text):
    """The canonical form of an IPv4 or IPv6 address, or None if text is not one."""
    for af in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(af, socket.inet_pton(af, text))
        except (OSError, ValueError):
            continue
    return None


def split_ips(ips):
    """(ip4, ip6) from one or two --ip values: at most one of each family."""
    ip4 = ip6 = ""
    for text in ips:
        version, canonical = parse_vip(text)
        if version == 4:
            if ip4:
                raise VaddrError(f"two IPv4 addresses given ({ip4}, {canonical})", "a vhost has one of each family")
            ip4 = canonical
        else:
            if ip6:
                raise VaddrError(f"two IPv6 addresses given ({ip6}, {canonical})", "a vhost has one of each family")
            ip6 = canonical
    return ip4, ip6


def is_local(ip):
    """Can this machine bind the address already?  (A loopback vIP needs no route.)"""
    af = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(af, socket.SOCK_DGRAM)
    try:
        s.bind((ip, 0))
    except OSError:
        return False
    finally:
        s.close()
    return True

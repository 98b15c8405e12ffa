"""What kind of executable a command is, for the LD_PRELOAD backend: a shim
in libc cannot serve a static binary (no dynamic loader reads LD_PRELOAD) or a
Go program (its net package makes system calls itself)."""
import os
import shutil
import struct

PT_INTERP = 3


def _read(path, size=64):
    with open(path, "rb") as f:
        return f.read(size)


def kind(path, _depth=0):
    """'dynamic', 'static', 'go', 'script' (with a dynamic interpreter) or 'unknown'."""
    try:
        head = _read(path, 256)
    except OSError:
        return "unknown"
    if head.startswith(b"#!") and _depth < 4:
        interp = head[2:].split(b"\n")[0].split()
        if not interp:
            return "unknown"
        prog = os.fsdecode(interp[0])
        if os.path.basename(prog) == "env" and len(interp) > 1:
            prog = shutil.which(os.fsdecode(interp[1])) or prog
        return kind(prog, _depth + 1)
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
        return "unknown"
    endian = "<" if head[5] == 1 else ">"
    phoff, = struct.unpack_from(endian + "Q", head, 0x20)
    shoff, = struct.unpack_from(endian + "Q", head, 0x28)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHHHH", head, 0x36)
    with open(path, "rb") as f:
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
        has_interp = any(struct.unpack_from(endian + "I", phdrs, i * phentsize)[0] == PT_INTERP for i in range(phnum))
        if _has_go_section(f, endian, shoff, shentsize, shnum, shstrndx):
            return "go"
    return "dynamic" if has_interp else "static"


def _has_go_section(f, endian, shoff, shentsize, shnum, shstrndx):
    if not shoff or shstrndx >= shnum:
        return False
    f.seek(shoff)
    shdrs = f.read(shentsize * shnum)
    str_off, str_size = struct.unpack_from(endian + "QQ", shdrs, shstrndx * shentsize + 0x18)
    f.seek(str_off)
    names = f.read(min(str_size, 1 << 20))
    return b".go.buildinfo" in names or b".note.go.buildid" in names

"""Run part of the suite on a distribution's stock kernel, in a QEMU guest.

Users run Debian's, Ubuntu's and Fedora's kernels, built with modules
(sch_fq, ifb, netem) that a development machine's kernel may lack, and
older than it.  This boots Debian's current `linux-image-amd64` under QEMU
(TCG: emulated, so it runs on any host, nested or not; slow), with the host's own root file
system shared read-only over 9p under a tmpfs overlay: the guest runs this
checkout, its venv and bcc, and its writes vanish with it.  It has no
network device at all, so nothing it sends can leave.

The kernel packages are fetched with `apt-get download` into CACHE and
unpacked there, never installed: the host's boot set-up is not touched."""
import glob
import os
import re
import shutil
import stat
import subprocess
import gzip

CACHE = "/var/cache/vaddr/stock-kernel"
META = "linux-image-amd64"
# What the initramfs loads to reach the shared root, in dependency order.
BOOT_MODULES = ("drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_modern_dev",
                "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci", "fs/netfs/netfs",
                "fs/fscache/fscache", "net/9p/9pnet", "net/9p/9pnet_virtio", "fs/9p/9p", "fs/overlayfs/overlay")
EXIT_MARK = "vaddr-vm-exit="

INIT = r"""#!/bin/busybox sh
# Stage 1: the host's / over 9p, read-only, under a tmpfs overlay.
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m.ko || echo "vaddr-vm: insmod $m failed"; done
mkdir -p /lower /rw /new
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower
mount -t tmpfs -o size=8g tmpfs /rw; mkdir /rw/u /rw/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/u,workdir=/rw/w /new
for arg in $(cat /proc/cmdline); do
    case $arg in vaddr.kroot=*) KROOT=${arg#*=};; vaddr.job=*) JOB=${arg#*=};; esac
done
R=$(uname -r)
# The guest kernel's modules and headers, from the unpacked packages; and a
# modprobe for the kernel to load sch_fq, ifb and the like on demand.
rm -rf /new/usr/lib/modules/$R; mkdir -p /new/usr/lib/modules
ln -s $KROOT/lib/modules/$R /new/usr/lib/modules/$R
# (Globs look under /new: $KROOT names a path of the final root.)
for d in /new$KROOT/usr/src/*; do n=${d##*/}; rm -rf /new/usr/src/$n; ln -s $KROOT/usr/src/$n /new/usr/src/$n; done
for d in /new$KROOT/usr/lib/linux-kbuild-*; do n=${d##*/}; rm -rf /new/usr/lib/$n; ln -s $KROOT/usr/lib/$n /new/usr/lib/$n; done
[ -e /new/usr/sbin/modprobe ] || ln -s /bin/busybox /new/usr/sbin/modprobe
umount /proc /sys /dev
exec switch_root /new /bin/sh -c "
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up; hostname vaddr-vm
cd /; sh $JOB; echo vaddr-vm-exit=\$?
/bin/busybox poweroff -f"
"""


class Unavailable(Exception):
    """The guest cannot be had here: what is missing, and how to get it."""


def _run(*argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def kernel_root():
    """The unpacked kernel (CACHE/root), fetched and unpacked on first use."""
    root = os.path.join(CACHE, "root")
    if glob.glob(os.path.join(root, "boot", "vmlinuz-*")) and glob.glob(os.path.join(root, "lib/modules/*/modules.dep")):
        return root
    if not shutil.which("apt-get"):
        raise Unavailable("no apt-get to fetch Debian's kernel")
    deps = _run("apt-cache", "depends", META).stdout
    image = re.search(r"Depends: (linux-image-[\w.-]+)", deps)
    if not image:
        raise Unavailable(f"apt knows no {META} (run apt-get update)")
    headers = image.group(1).replace("linux-image-", "linux-headers-")
    common = _run("apt-cache", "depends", headers).stdout
    wanted = [image.group(1), headers, *re.findall(r"Depends: (linux-(?:headers-[\w.-]+-common|kbuild-[\d.]+))", common)]
    debs = os.path.join(CACHE, "debs")
    os.makedirs(debs, exist_ok=True)
    got = _run("apt-get", "download", *wanted, cwd=debs)
    if got.returncode:
        raise Unavailable(f"apt-get download {' '.join(wanted)}: {got.stderr.strip().splitlines()[-1:]}")
    shutil.rmtree(root, ignore_errors=True)
    for deb in glob.glob(os.path.join(debs, "*.deb")):
        _run("dpkg-deb", "-x", deb, root).check_returncode()
    release = os.path.basename(glob.glob(os.path.join(root, "lib/modules/*"))[0])
    busybox = _busybox()
    # busybox's depmod: the host (a kernel built without modules) may have no kmod.
    _run(busybox, "depmod", "-b", root, release).check_returncode()
    return root


def _busybox():
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    raise Unavailable("no busybox (apt install busybox-static)")


def initrd(root):
    """CACHE/initrd.gz: busybox, the boot modules and INIT, as a newc cpio
    written here (the host may have no cpio)."""
    release = os.path.basename(glob.glob(os.path.join(root, "lib/modules/*"))[0])
    kernel = os.path.join(root, "lib/modules", release, "kernel")
    files = {"init": (INIT.encode(), 0o100755), "bin/busybox": (open(_busybox(), "rb").read(), 0o100755),
             "mods/order": ("\n".join(m.rsplit("/", 1)[1] for m in BOOT_MODULES).encode(), 0o100644)}
    for module in BOOT_MODULES:
        files[f"mods/{module.rsplit('/', 1)[1]}.ko"] = (open(os.path.join(kernel, module + ".ko"), "rb").read(), 0o100644)
    out = bytearray()
    entries = [(d, b"", stat.S_IFDIR | 0o755) for d in ("bin", "mods", "proc", "sys", "dev")]
    entries += [(name, data, mode) for name, (data, mode) in files.items()]
    entries.append(("TRAILER!!!", b"", 0))
    for ino, (name, data, mode) in enumerate(entries, 1):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out += ("070701" + "".join("%08x" % v for v in fields)).encode() + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    path = os.path.join(CACHE, "initrd.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(bytes(out)))
    return path


def run(script, timeout=1800, memory="4096"):
    """Boot the stock kernel, run `sh -c script` as root in it (cwd /), and
    return (exit status, console output).  Raises Unavailable when QEMU or
    the kernel cannot be had."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise Unavailable("no qemu-system-x86_64 (apt install qemu-system-x86)")
    root = kernel_root()
    vmlinuz = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))[0]
    rd = initrd(root)
    jobs = os.path.join(CACHE, "jobs")
    os.makedirs(jobs, exist_ok=True)
    job = os.path.join(jobs, f"job-{os.getpid()}.sh")
    with open(job, "w") as f:
        f.write(script)
    try:
        done = subprocess.run(
            [qemu, *os.environ.get("VADDR_VM_ACCEL", "-accel tcg -cpu max").split(), "-m", memory, "-smp", str(min(os.cpu_count() or 1, 2)), "-nographic", "-no-reboot",
             "-nodefaults", "-serial", "stdio", "-net", "none", "-kernel", vmlinuz, "-initrd", rd,
             "-append", f"console=ttyS0 panic=-1 edd=off quiet vaddr.kroot={root} vaddr.job={job}",
             "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout)
    finally:
        os.unlink(job)
    out = done.stdout + done.stderr
    found = re.findall(EXIT_MARK + r"(\d+)", out)
    return (int(found[-1]) if found else -1), out

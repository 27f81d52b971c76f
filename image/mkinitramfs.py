#!/usr/bin/env python3
"""Builds the appliance initramfs: a newc cpio archive, zstd-compressed.

/init is the static duet binary. The listed kernel modules are resolved
against the unpacked kernel package (dependencies from each module's own
.modinfo `depends=` field, since Debian's package ships no modules.dep),
copied in, and written in load order to /etc/duet/modules for init.

A line of firmware/modules starting with `?` is a hardware driver: init
loads it (with the other modules of the line) only when a device's modalias
matches one of the first module's `alias=` globs. The list file is then a
series of blocks: `always` or `match GLOB...`, followed by module paths.
"""
import argparse
import os
import stat
import struct
import subprocess
import sys


def modinfo(path):
    """Key/value pairs of a .ko's .modinfo ELF section."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError(f"{path}: not an ELF64 object")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _typ, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            out = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.split(b"=", 1)
                    out.setdefault(k.decode(), []).append(v.decode())
            return out
    return {}


def norm(name):
    return name.replace("-", "_")


def index_modules(moddir):
    index = {}
    for root, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for fn in files:
            if fn.endswith(".ko"):
                index[norm(fn[:-3])] = os.path.join(root, fn)
    builtin = set()
    with open(os.path.join(moddir, "modules.builtin")) as f:
        for line in f:
            builtin.add(norm(os.path.basename(line.strip())[:-3]))
    return index, builtin


def resolve(index, builtin, wanted, skipped):
    """Load order for `wanted` (names), dependencies first; builtins and
    modules missing from this kernel are appended to `skipped`."""
    order, seen = [], set()

    def visit(name, chain):
        name = norm(name)
        if name in seen:
            return
        if name in builtin:
            seen.add(name)
            skipped.append(f"{name} (built in)")
            return
        if name not in index:
            if chain:
                raise SystemExit(f"module {name}, needed by {chain[-1]}, is missing")
            skipped.append(f"{name} (not in this kernel)")
            seen.add(name)
            return
        if name in chain:
            raise SystemExit(f"module dependency cycle: {' -> '.join(chain + [name])}")
        info = modinfo(index[name])
        for deps in info.get("depends", []):
            for dep in filter(None, deps.split(",")):
                visit(dep, chain + [name])
        seen.add(name)
        order.append(index[name])

    for name in wanted:
        visit(name, [])
    return order


class Cpio:
    """Minimal writer for the kernel's "newc" initramfs format."""

    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0))
        self.ino += 1
        self.out += hdr.encode() + name_b
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name, mode=0o755):
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kernel-root", required=True, help="unpacked linux-image package")
    ap.add_argument("--kver", required=True)
    ap.add_argument("--modules", required=True, help="firmware/modules")
    ap.add_argument("--init", required=True, help="static duet binary")
    ap.add_argument("--config", required=True)
    ap.add_argument("--busybox", help="static busybox for the rescue shell")
    ap.add_argument("--out", required=True)
    ap.add_argument("--level", type=int, default=12, help="zstd level")
    a = ap.parse_args()

    moddir = os.path.join(a.kernel_root, "lib/modules", a.kver)
    index, builtin = index_modules(moddir)
    skipped = []
    # blocks: (alias globs or None for always, [paths in load order])
    blocks = []
    with open(a.modules) as f:
        for raw in f:
            words = raw.split("#")[0].split()
            if not words:
                continue
            cond = words[0].startswith("?")
            if cond:
                words[0] = words[0][1:]
            paths = resolve(index, builtin, words, skipped)
            if not paths:
                continue
            if cond:
                first = index.get(norm(words[0]))
                aliases = modinfo(first).get("alias", []) if first else []
                if not aliases:
                    raise SystemExit(f"?{words[0]}: module has no device aliases to match")
                blocks.append((aliases, paths))
            elif blocks and blocks[-1][0] is None:
                blocks[-1][1].extend(p for p in paths if p not in blocks[-1][1])
            else:
                blocks.append((None, paths))
    order = []
    for _, paths in blocks:
        order.extend(p for p in paths if p not in order)

    c = Cpio()
    for d in ("dev", "proc", "sys", "run", "tmp", "data", "etc", "etc/duet",
              "var", "var/lib", "var/lib/duet", "bin", "sbin", "lib", "lib/modules"):
        c.dir(d)
    c.dir("tmp", 0o1777)
    # The kernel opens /dev/console for init's fds before init can mount
    # devtmpfs; without this node init would start with no output.
    c.chardev("dev/console", 5, 1)
    with open(a.init, "rb") as f:
        c.file("init", f.read(), 0o755)
    c.symlink("bin/duet", "/init")
    with open(a.config, "rb") as f:
        c.file("etc/duet/duet.toml", f.read())

    made = {"lib/modules"}
    for path in order:
        rel = os.path.relpath(path, a.kernel_root)
        parts = rel.split("/")
        for i in range(2, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                c.dir(d)
                made.add(d)
        with open(path, "rb") as f:
            c.file(rel, f.read())
    lines = []
    for aliases, paths in blocks:
        lines.append("always" if aliases is None else "match " + " ".join(aliases))
        lines.extend("/" + os.path.relpath(p, a.kernel_root) for p in paths)
    c.file("etc/duet/modules", ("\n".join(lines) + "\n").encode())

    if a.busybox:
        with open(a.busybox, "rb") as f:
            c.file("bin/busybox", f.read(), 0o755)
        for applet in ("sh", "ash", "ls", "cat", "cp", "mv", "rm", "mkdir", "vi",
                       "ip", "ping", "ps", "kill", "dmesg", "mount", "umount",
                       "free", "top", "df", "du", "grep", "less", "more", "sync",
                       "reboot", "poweroff", "wget", "nc", "ifconfig", "route",
                       "arp", "netstat", "lsmod", "insmod", "uname", "sleep",
                       "echo", "hexdump", "tail", "head", "sed", "mdev", "setsid",
                       "cttyhack"):
            c.symlink(f"bin/{applet}", "busybox")

    raw = c.finish()
    z = subprocess.run(["zstd", "-q", f"-{a.level}", "-c"], input=raw,
                       stdout=subprocess.PIPE, check=True).stdout
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(z)
    os.replace(tmp, a.out)
    conditional = sum(1 for al, _ in blocks if al is not None)
    print(f"initramfs: {len(order)} modules ({conditional} hardware-matched groups), "
          f"{len(raw)} bytes -> {len(z)} bytes zstd")
    for s in skipped:
        print(f"  skipped {s}")


if __name__ == "__main__":
    sys.exit(main())

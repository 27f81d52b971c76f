#!/usr/bin/env python3
"""Extracts the uncompressed ELF vmlinux from a bzImage, for PVH direct boot
(QEMU's -kernel with an ELF that has a PVH note boots without the real-mode
decompressor, roughly twice as fast under TCG).

Like the kernel's scripts/extract-vmlinux: find a compressed stream's magic
in the image, decompress from there, keep the first result that is ELF."""
import gzip
import lzma
import os
import subprocess
import sys
import zlib

MAGICS = [
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08", "gzip"),
]


def attempt(kind, blob):
    try:
        if kind == "xz":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            return d.decompress(blob)
        if kind == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return d.decompress(blob)
        if kind == "zstd":
            r = subprocess.run(["zstd", "-dc"], input=blob, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
            return r.stdout
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, OSError):
        return b""
    return b""


def main():
    src, dst = sys.argv[1], sys.argv[2]
    data = open(src, "rb").read()
    for magic, kind in MAGICS:
        pos = data.find(magic)
        while pos >= 0:
            out = attempt(kind, data[pos:])
            if out[:4] == b"\x7fELF":
                with open(dst + ".tmp", "wb") as f:
                    f.write(out)
                os.replace(dst + ".tmp", dst)
                print(f"vmlinux: {kind} stream at {pos}, {len(out)} bytes")
                return 0
            pos = data.find(magic, pos + 1)
    print(f"{src}: no compressed ELF kernel found", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

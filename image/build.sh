#!/bin/bash
# `make image`: everything from a fresh clone (after the static build).
# Usage: build.sh PATH/TO/static/duet
# Outputs in image/out/:
#   vmlinuz        the pinned Debian bzImage (UEFI stub, BIOS, or QEMU -kernel)
#   vmlinux        the same kernel uncompressed, for PVH direct boot
#   initramfs.img  /init = duet, modules, default config (zstd cpio)
#   cmdline        the kernel command line of firmware/cmdline
#   disk.img       raw GPT disk: ESP (BIOS + UEFI boot) + DUETDATA partition
#   upgrade.tar    kernel + initramfs + cmdline + SHA256SUMS for `duet upgrade`
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/image/out}
DUET=${1:?usage: build.sh DUET_STATIC_BINARY}
mkdir -p "$OUT"

if ! file_out=$(od -An -c -N4 "$DUET" 2>/dev/null) || [[ "$file_out" != *E*L*F* ]]; then
    echo "build.sh: $DUET is not an ELF binary" >&2
    exit 1
fi
# /init runs before anything could supply a dynamic loader.
if readelf -lW "$DUET" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    echo "build.sh: $DUET is dynamically linked; build with -C target-feature=+crt-static" >&2
    exit 1
fi

bash "$ROOT/image/host-deps.sh"
OUT=$OUT bash "$ROOT/image/fetch.sh"

kpkg=$(grep -v '^#' "$ROOT/firmware/packages.pin" | grep -o '^linux-image-[^=]*' | head -1)
kroot=$OUT/pkg/$kpkg
kver=$(ls "$kroot/lib/modules" | head -1)
cp -p "$kroot/boot/vmlinuz-$kver" "$OUT/vmlinuz"
if [ ! -f "$OUT/vmlinux" ] || [ "$OUT/vmlinuz" -nt "$OUT/vmlinux" ]; then
    python3 "$ROOT/image/extract-vmlinux.py" "$OUT/vmlinuz" "$OUT/vmlinux"
fi
grep -v '^#' "$ROOT/firmware/cmdline" | tr -s ' \n' ' ' | sed 's/ *$//' >"$OUT/cmdline"

python3 "$ROOT/image/mkinitramfs.py" \
    --kernel-root "$kroot" --kver "$kver" \
    --modules "$ROOT/firmware/modules" \
    --init "$DUET" \
    --config "$ROOT/firmware/duet.toml" \
    --busybox "$OUT/pkg/busybox-static/bin/busybox" \
    --out "$OUT/initramfs.img"

bash "$ROOT/image/mkdisk.sh" "$OUT/disk.img" "$OUT/vmlinuz" "$OUT/initramfs.img" \
    "$ROOT/firmware/cmdline" "$ROOT/firmware/duet.toml" "$OUT/pkg"

# The upgrade archive: what `duet upgrade` writes into a box's inactive
# slot, with the digests the box checks before it writes anything.
stage=$OUT/upgrade.stage
rm -rf "$stage" && mkdir -p "$stage"
cp "$OUT/vmlinuz" "$stage/vmlinuz"
cp "$OUT/initramfs.img" "$stage/initrd.img"
cp "$OUT/cmdline" "$stage/cmdline" && echo >>"$stage/cmdline"
(cd "$stage" && sha256sum vmlinuz initrd.img cmdline >SHA256SUMS)
tar --format=ustar --owner=0 --group=0 -C "$stage" -cf "$OUT/upgrade.tar" SHA256SUMS vmlinuz initrd.img cmdline
rm -rf "$stage"

echo "image: kernel $kver"
for f in vmlinuz vmlinux initramfs.img disk.img upgrade.tar; do
    printf '  %-14s %6s MiB (%s bytes)\n' "$f" \
        "$(awk -v b="$(stat -c %s "$OUT/$f")" 'BEGIN{printf "%.1f", b/1048576}')" \
        "$(stat -c %s "$OUT/$f")"
done
printf '  %-14s %6s bytes\n' duet "$(stat -c %s "$DUET")"

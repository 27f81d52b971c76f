#!/bin/bash
# Assembles the raw appliance disk image without loop devices or root mounts:
#   GPT, partition 1: ESP (FAT32, label DUETBOOT) with the bzImage + initramfs
#                     in boot slot /a (slot /b empty until the first
#                     upgrade; see src/appliance/upgrade.rs), systemd-boot
#                     for UEFI and syslinux for BIOS (syslinux's gptmbr.bin
#                     in the MBR boots the partition flagged
#                     LegacyBIOSBootable);
#   partition 2: data (ext4, label DUETDATA) with duet.toml and state/, and
#                no key: a fresh box comes up in setup mode.
# Usage: mkdisk.sh OUT/disk.img BZIMAGE INITRAMFS CMDLINE_FILE CONFIG PKGDIR
set -euo pipefail
disk=$1 bzimage=$2 initrd=$3 cmdline_file=$4 config=$5 pkg=$6
ESP_MB=${ESP_MB:-64}
DATA_MB=${DATA_MB:-32}
work=$(mktemp -d "${disk}.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
cmdline=$(grep -v '^#' "$cmdline_file" | tr -s ' \n' ' ' | sed 's/ *$//')

sb=$pkg/systemd-boot-efi/usr/lib/systemd/boot/efi/systemd-bootx64.efi
sl_bin=$pkg/syslinux/usr/bin/syslinux
sl_mbr=$pkg/syslinux/usr/lib/SYSLINUX/gptmbr.bin

# --- ESP -------------------------------------------------------------------
esp=$work/esp.img
mkfs.vfat -C -F 32 -S 512 -s 1 -h 2048 -n DUETBOOT "$esp" $((ESP_MB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/syslinux ::/a ::/b ::/duet
printf '%s\n' "$cmdline" >"$work/cmdline"
mcopy -i "$esp" "$bzimage" ::/a/vmlinuz
mcopy -i "$esp" "$initrd" ::/a/initrd.img
mcopy -i "$esp" "$work/cmdline" ::/a/cmdline
mcopy -i "$esp" "$sb" ::/EFI/BOOT/BOOTX64.EFI
# The same files the appliance writes when slots change (upgrade.rs:
# LOADER_CONF, sdboot_entry, syslinux_cfg, BootState::emit).
printf 'default duet-*\ntimeout 0\neditor no\n' >"$work/loader.conf"
printf 'title duet appliance (slot a)\nlinux /a/vmlinuz\ninitrd /a/initrd.img\noptions %s duet.slot=a\n' \
    "$cmdline" >"$work/duet-good.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/duet-good.conf" ::/loader/entries/duet-good.conf
cat >"$work/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT a
PROMPT 0
TIMEOUT 0
LABEL a
  LINUX /a/vmlinuz
  INITRD /a/initrd.img
  APPEND $cmdline duet.slot=a
CFG
mcopy -i "$esp" "$work/syslinux.cfg" ::/syslinux/syslinux.cfg
printf '# duet A/B boot slots; written by the appliance\nconfirmed=a\n' >"$work/state"
mcopy -i "$esp" "$work/state" ::/duet/state
# Writes the FAT boot sector and ldlinux.sys + ldlinux.c32 (as hidden
# system files) into /syslinux.
"$sl_bin" --install --directory /syslinux "$esp"

# --- data partition --------------------------------------------------------
data=$work/data
mkdir -p "$data/state"
install -m 0644 "$config" "$data/duet.toml"
truncate -s ${DATA_MB}M "$work/data.img"
mkfs.ext4 -q -F -L DUETDATA -d "$data" "$work/data.img"

# --- assemble --------------------------------------------------------------
total_mb=$((1 + ESP_MB + DATA_MB + 1))
rm -f "$disk.tmp"
truncate -s ${total_mb}M "$disk.tmp"
sfdisk -q --no-reread --no-tell-kernel "$disk.tmp" <<PART
label: gpt
start=2048, size=$((ESP_MB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP", attrs="LegacyBIOSBootable"
start=$(((1 + ESP_MB) * 2048)), size=$((DATA_MB * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="DUETDATA"
PART
dd if="$esp" of="$disk.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/data.img" of="$disk.tmp" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
# Boot code only: the first 440 bytes, leaving the protective MBR's table.
dd if="$sl_mbr" of="$disk.tmp" bs=440 count=1 conv=notrunc status=none
mv "$disk.tmp" "$disk"
echo "disk: $disk ${total_mb} MiB (ESP ${ESP_MB} MiB at 1 MiB, DUETDATA ${DATA_MB} MiB at $((1 + ESP_MB)) MiB)"

#!/bin/bash
# `make vm-test`: two appliance VMs under QEMU (TCG, PVH direct boot of the
# uncompressed kernel) on a bridge in a private network namespace, plus a
# client namespace, and a failover test against them.
#
#   lab ns:    br0 ── tap1 (VM web1, 198.18.0.1)
#                  ── tap2 (VM web2, 198.18.0.2)
#                  ── cb0 ═══ c0 (client ns, 198.18.0.254)
#
# Checks, in order:
#   0. disk.img boots with BIOS and with UEFI (image/boot-test.sh; BOOT_TEST=0
#      skips it);
#   1. a fresh image (no key) comes up in setup mode and refuses to run
#      the daemon; setup through its page (wrong code, then the real one)
#      starts the daemon with no reboot; web2 gets the pair key on /data;
#      both VMs boot: init mounts, loads modules, configures eth0, mounts
#      the data partition, starts the daemon (serial console);
#   2. the client pings both VMs (the guest kernels answer ICMP);
#   3. exactly one VM reports role "director" on :8080/api/status, and
#      its data plane is the eBPF engine;
#   4. the VIP answers HTTP (only if something serves :80 in the VMs:
#      reported as SKIP otherwise);
#   5. killing the director's QEMU makes the other VM director;
#   6. a config change written to a VM's data partition is in effect after
#      it reboots and is still there after a second reboot;
#   7. upgrades with rollback, with web2 booting its own disk through
#      firmware and boot loader (BIOS: SeaBIOS + syslinux, then UEFI: OVMF +
#      systemd-boot) and web1 as its peer: `duet upgrade` of the rebuilt
#      image (upgrade.tar) boots the other slot once and PID 1 confirms it
#      when the daemon hears web1; `duet upgrade` of a broken image (its
#      initramfs loads no NIC driver, so its daemon cannot start) returns to
#      the old slot by itself, and so does one whose kernel panics before
#      /init (the boot loader's one-shot alone); on BIOS also a good image
#      while web1 is down (never confirmed: PID 1 gives up after 90 s); the
#      boot partition records the slot; the data partition's files are
#      unchanged.
#      VM_TEST_UPGRADE=0 skips it.
# Measures: QEMU start -> first heartbeat line on the console, RSS per QEMU.
#
# Env: OUT (image/out), VM_TEST_ONLY=boot stops after check 2 and prints
# the boot figures as "BOOT <vm> key=value..." lines (make bench),
# VM_TEST_ALLOW_NO_DAEMON=1 turns checks 3-5 into
# SKIPs when no status page answers (for testing the image before the
# daemon exists), HEARTBEAT_RE (regex of the daemon's heartbeat log line),
# VM_MEM (default 256M; DISK_VM_MEM, default 384M, for the disk boots of
# check 7), BOOT_TIMEOUT (s, default 180).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/image/out}
WORK=$OUT/vm-test
VM_MEM=${VM_MEM:-256M}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
# The daemon logs "peer NAME up" when the first heartbeat of its peer arrives.
HEARTBEAT_RE=${HEARTBEAT_RE:-peer [^ ]+ up}
ALLOW_NO_DAEMON=${VM_TEST_ALLOW_NO_DAEMON:-0}
VIP=198.18.0.100
tag=$$-$RANDOM
LAB=duetvm-lab-$tag
CLI=duetvm-cli-$tag

for f in vmlinux initramfs.img disk.img cmdline; do
    [ -f "$OUT/$f" ] || { echo "vm-test: $OUT/$f missing; run make image" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || bash "$ROOT/image/host-deps.sh"

declare -A QPID IP MAC
IP[web1]=198.18.0.1 IP[web2]=198.18.0.2
MAC[web1]=52:54:00:18:00:01 MAC[web2]=52:54:00:18:00:02
# web1 gets its address and name on the command line; web2 nothing: its
# name is in /data/node, and init takes the address from web2's [[node]]
# entry in the config, as on a disk-booted appliance.
declare -A BOOTARGS
BOOTARGS[web1]="duet.ip=198.18.0.1/24 duet.node=web1"
BOOTARGS[web2]=""
passed=0 failed=0 skipped=0
RESULTS=()

cleanup() {
    for n in "${!QPID[@]}"; do
        [ -n "${QPID[$n]}" ] && stop_vm "$n"
    done
    wait 2>/dev/null
    ip netns del "$CLI" 2>/dev/null
    ip netns del "$LAB" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok()   { passed=$((passed + 1)); RESULTS+=("PASS $*"); echo "vm-test: PASS $*"; }
bad()  { failed=$((failed + 1)); RESULTS+=("FAIL $*"); echo "vm-test: FAIL $*"; }
skip() { skipped=$((skipped + 1)); RESULTS+=("SKIP $*"); echo "vm-test: SKIP $*"; }
now()  { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

# --- the disk image on BIOS and UEFI firmware --------------------------------
if [ "${BOOT_TEST:-1}" = 1 ]; then
    while read -r line; do
        case $line in
            PASS*) ok "${line#PASS }" ;;
            FAIL*) bad "${line#FAIL }" ;;
            *) echo "$line" ;;
        esac
    done < <(OUT=$OUT bash "$ROOT/image/boot-test.sh")
fi

# --- network --------------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK"
ip netns add "$LAB"
ip netns add "$CLI"
ip -n "$LAB" link set lo up
ip -n "$LAB" link add br0 type bridge
ip -n "$LAB" link set br0 up
for i in 1 2; do
    ip -n "$LAB" tuntap add "tap$i" mode tap
    ip -n "$LAB" link set "tap$i" master br0 up
done
ip -n "$CLI" link add c0 type veth peer name cb0 netns "$LAB"
ip -n "$LAB" link set cb0 master br0 up
ip -n "$CLI" link set lo up
ip -n "$CLI" addr add 198.18.0.254/24 dev c0
ip -n "$CLI" link set c0 up

# --- VMs ------------------------------------------------------------------
read -r data_start data_sectors < <(sfdisk -d "$OUT/disk.img" |
    awk -F'[=,]' '/name="DUETDATA"/ {gsub(/ /,"",$2); gsub(/ /,"",$4); print $2, $4}')
# Edits a powered-off VM's data partition with debugfs commands on stdin.
# A VM killed while running leaves a dirty ext4 journal that the next mount
# replays over anything written behind its back, so the partition is taken
# out, checked (journal replayed) with e2fsck, edited, and put back: what an
# operator does with the disk of an appliance that lost power.
data_edit() {
    local disk=$1 part=$WORK/part.img
    dd if="$disk" of="$part" bs=512 skip="$data_start" count="$data_sectors" status=none
    e2fsck -fy "$part" >/dev/null 2>&1
    [ $? -le 2 ] || { echo "vm-test: e2fsck cannot repair $disk" >&2; return 1; }
    debugfs -w -f - "$part" >/dev/null 2>&1
    dd if="$part" of="$disk" bs=512 seek="$data_start" conv=notrunc status=none
    rm -f "$part"
}
data_read() { # DISK DEBUGFS-COMMAND, on a checked copy of the partition
    local part=$WORK/part-ro.img
    dd if="$1" of="$part" bs=512 skip="$data_start" count="$data_sectors" status=none
    e2fsck -fy "$part" >/dev/null 2>&1
    debugfs -R "$2" "$part" 2>/dev/null
    rm -f "$part"
}
for n in web1 web2; do
    cp --sparse=always "$OUT/disk.img" "$WORK/disk-$n.img"
    # Each node serves its name on :80 (init runs busybox httpd for
    # /data/www), so the VIP check can tell the backends apart.
    printf '%s\n' "$n" >"$WORK/index-$n.html"
    printf '%s\n' "$n" >"$WORK/node-$n"
    {
        echo "mkdir /www"
        echo "write $WORK/index-$n.html /www/index.html"
        [ "$n" = web2 ] && echo "write $WORK/node-$n /node"
    } | data_edit "$WORK/disk-$n.img"
done
declare -A START
start_vm() {
    local n=$1 i=${1#web}
    local log=$WORK/console-$n.log
    echo "=== boot $(date -u +%H:%M:%S) ===" >>"$log"
    START[$n]=$(now)
    ip netns exec "$LAB" qemu-system-x86_64 \
        -machine pc -cpu max -m "$VM_MEM" -smp 1 \
        -nodefaults -nographic -no-reboot \
        -serial "file:$log.cur" -monitor none \
        -kernel "$OUT/vmlinux" -initrd "$OUT/initramfs.img" \
        -append "console=ttyS0,115200 panic=-1 quiet ${BOOTARGS[$n]}" \
        -drive "file=$WORK/disk-$n.img,format=raw,if=virtio" \
        -device virtio-rng-pci \
        -netdev "tap,id=lan,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=lan,mac=${MAC[$n]},romfile=" \
        >"$WORK/qemu-$n.out" 2>&1 &
    QPID[$n]=$!
}
stop_vm() {
    local n=$1
    kill -9 "${QPID[$n]}" 2>/dev/null
    wait "${QPID[$n]}" 2>/dev/null
    QPID[$n]=""
    cat "$WORK/console-$n.log.cur" >>"$WORK/console-$n.log" 2>/dev/null
    rm -f "$WORK/console-$n.log.cur"
}
# wait_console NAME REGEX TIMEOUT: seconds from QEMU start, or empty.
wait_console() {
    local n=$1 re=$2 limit=$3 t0
    t0=$(now)
    while [ "$(since "$t0" | cut -d. -f1)" -lt "$limit" ]; do
        if grep -Eq "$re" "$WORK/console-$n.log.cur" 2>/dev/null; then
            since "${START[$n]}"
            return 0
        fi
        if ! kill -0 "${QPID[$n]}" 2>/dev/null; then
            return 1
        fi
        sleep 0.2
    done
    return 1
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null; }
status_json() { ip netns exec "$CLI" curl -s -m 2 "http://$1:8080/api/status"; }
role_of() {
    status_json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("role",""))' 2>/dev/null
}

# --- setup mode ------------------------------------------------------------
# The image ships no key: fresh, web1 comes up in setup mode (no daemon,
# 403 for everything but the setup page) and is set up through the page
# by a real HTTP client with the code from its console; the daemon then
# starts without a reboot. web2 gets the pair key the page showed on its
# data partition, as an operator would copy it.
setup_page() { ip netns exec "$CLI" curl -s -m 10 -o "$WORK/setup.html" -w '%{http_code}' "$@"; }
start_vm web1
if wait_console web1 'SETUP MODE: open' "$BOOT_TIMEOUT" >/dev/null; then
    code=$(grep -o 'setup code [0-9]*' "$WORK/console-web1.log.cur" | tail -1 | awk '{print $3}')
    st=""
    t0=$(now)
    while [ "$(since "$t0" | cut -d. -f1)" -lt 30 ]; do
        st=$(ip netns exec "$CLI" curl -s -m 2 -o /dev/null -w '%{http_code}' "http://${IP[web1]}:8080/api/status")
        [ "$st" = 403 ] && break
        sleep 0.5
    done
    if [ "$st" = 403 ] && ! grep -q 'duet-init: daemon started' "$WORK/console-web1.log.cur"; then
        ok "fresh image: web1 in setup mode (no key, no daemon, /api/status 403)"
    else
        bad "fresh image: web1 not in setup mode (/api/status '$st')"
    fi
    form=(--data-urlencode node=web1 --data-urlencode "config@$ROOT/firmware/duet.toml")
    st=$(setup_page "${form[@]}" --data-urlencode code=x "http://${IP[web1]}:8080/setup")
    wrong=$st
    st=$(setup_page "${form[@]}" --data-urlencode "code=$code" "http://${IP[web1]}:8080/setup")
    PAIR_KEY=$(grep -o 'id="pair-key">[0-9a-f]*' "$WORK/setup.html" | cut -d'>' -f2)
    if [ "$wrong" = 403 ] && [ "$st" = 200 ] && [ ${#PAIR_KEY} = 64 ] &&
        wait_console web1 'duet-init: daemon started' 60 >/dev/null; then
        ok "setup through the page: wrong code 403, then key generated and the daemon started without a reboot"
    else
        bad "setup through the page failed (wrong code: $wrong, setup: $st, key '${PAIR_KEY}')"
    fi
else
    bad "web1 did not come up in setup mode within $BOOT_TIMEOUT s"
    tail -20 "$WORK/console-web1.log.cur" 2>/dev/null | sed "s/^/  web1| /"
fi
# Its own admin token, as the factory config names one.
printf '%s\n' "${PAIR_KEY:-setup-failed-no-key}" >"$WORK/key"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin_token"
printf 'write %s /key\nwrite %s /admin_token\n' "$WORK/key" "$WORK/admin_token" |
    data_edit "$WORK/disk-web2.img"
start_vm web2

declare -A T_INIT T_DAEMON T_HB
for n in web1 web2; do
    if t=$(wait_console "$n" 'duet-init: daemon started' "$BOOT_TIMEOUT"); then
        T_DAEMON[$n]=$t
        T_INIT[$n]=$(grep -o '\[ *[0-9.]*\] duet-init: starting' "$WORK/console-$n.log.cur" | head -1 | tr -d '[]' | awk '{print $1}')
        ok "$n boots: daemon started $t s after QEMU start (kernel uptime at init: ${T_INIT[$n]} s)"
    else
        bad "$n did not start the daemon within $BOOT_TIMEOUT s (see $WORK/console-$n.log.cur)"
        tail -20 "$WORK/console-$n.log.cur" 2>/dev/null | sed "s/^/  $n| /"
    fi
done
for n in web1 web2; do
    grep -E 'duet-init: (mounted|loaded|eth0|config)' "$WORK/console-$n.log.cur" | sed "s/^/  $n| /"
done

for n in web1 web2; do
    if ip netns exec "$CLI" ping -c 3 -i 0.3 -W 2 -q "${IP[$n]}" >/dev/null; then
        ok "client pings $n (${IP[$n]})"
    else
        bad "client cannot ping $n (${IP[$n]})"
    fi
done

for n in web1 web2; do
    if t=$(wait_console "$n" "$HEARTBEAT_RE" 60); then
        T_HB[$n]=$t
        echo "vm-test: $n first heartbeat line on the console $t s after QEMU start"
    else
        T_HB[$n]="n/a"
    fi
done

declare -A RSS
for n in web1 web2; do RSS[$n]=$(rss_mib "${QPID[$n]}"); done

# VM_TEST_ONLY=boot (make bench): the boot figures, one line per VM, and stop.
if [ "${VM_TEST_ONLY:-}" = boot ]; then
    for n in web1 web2; do
        echo "BOOT $n daemon_started_s=${T_DAEMON[$n]:-n/a} first_heartbeat_s=${T_HB[$n]:-n/a} qemu_rss_mib=${RSS[$n]:-n/a}"
    done
    [ $failed -eq 0 ]
    exit
fi

# --- election -------------------------------------------------------------
have_daemon=0
director=""
t0=$(now)
while [ "$(since "$t0" | cut -d. -f1)" -lt 60 ]; do
    r1=$(role_of "${IP[web1]}") r2=$(role_of "${IP[web2]}")
    [ -n "$r1$r2" ] && have_daemon=1
    if [ "$r1" = director ] && [ "$r2" != director ] && [ -n "$r2" ]; then director=web1; break; fi
    if [ "$r2" = director ] && [ "$r1" != director ] && [ -n "$r1" ]; then director=web2; break; fi
    [ $have_daemon = 0 ] && [ "$(since "$t0" | cut -d. -f1)" -ge 20 ] && break
    sleep 1
done
no_daemon() {
    if [ "$ALLOW_NO_DAEMON" = 1 ]; then skip "$1 (no status page answers: daemon not in this image)"; else bad "$1 (no status page answers on :8080)"; fi
}
if [ -n "$director" ]; then
    other=web1; [ $director = web1 ] && other=web2
    ok "one director: $director (the other: $(role_of "${IP[$other]}"))"
    # The appliance's 6.1 kernel attaches the tc program through netlink
    # (no TCX): the in-kernel engine must still be the one that runs.
    engine=$(status_json "${IP[$director]}" | python3 -c 'import json,sys
print(json.load(sys.stdin).get("dataplane",{}).get("engine",""))' 2>/dev/null)
    if [ "$engine" = ebpf ]; then ok "the director forwards with the eBPF engine"
    else bad "the director runs the '$engine' engine, not eBPF (see its console log)"; fi
elif [ $have_daemon = 1 ]; then
    bad "no single director after 60 s (web1: '$r1', web2: '$r2')"
else
    no_daemon "election"
fi

# Both backends must be healthy on the director before the spread means
# anything (checks need `rise` successes).
if [ -n "$director" ]; then
    t0=$(now)
    while [ "$(since "$t0" | cut -d. -f1)" -lt 30 ]; do
        healthy=$(status_json "${IP[$director]}" | python3 -c 'import json,sys
b=json.load(sys.stdin).get("backends",[])
print(sum(1 for x in b if x.get("healthy")))' 2>/dev/null)
        [ "${healthy:-0}" -ge 2 ] && break
        sleep 0.5
    done
    echo "vm-test: director $director sees ${healthy:-0} healthy backends"
fi

# --- VIP ------------------------------------------------------------------
# Connections are opened together and held before any request is sent, so
# a least-connection scheduler sees them as active and spreads them.
vip_bodies() {
    ip netns exec "$CLI" python3 - "$VIP" "$1" <<'PY'
import socket, sys
vip, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    try:
        socks.append(socket.create_connection((vip, 80), timeout=3))
    except OSError:
        pass
for s in socks:
    try:
        s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        print(body.splitlines()[0] if body else "")
    except OSError:
        pass
    finally:
        s.close()
PY
}
bodies=$(vip_bodies 8)
answers=$(grep -c . <<<"$bodies")
distinct=$(grep . <<<"$bodies" | sort -u | tr '\n' ' ')
if [ "$answers" -gt 0 ]; then
    if [ "$(wc -w <<<"$distinct")" -ge 2 ]; then
        ok "VIP $VIP serves HTTP from both nodes ($answers/8 answers: $distinct)"
    else
        bad "VIP $VIP answers ($answers/8) but only from: $distinct (healthy backends: ${healthy:-?})"
    fi
else
    skip "VIP $VIP HTTP: nothing answers on :80"
fi

# --- failover -------------------------------------------------------------
if [ -n "$director" ]; then
    echo "vm-test: killing $director's QEMU (pid ${QPID[$director]})"
    tk=$(now)
    stop_vm "$director"
    took=""
    while [ "$(since "$tk" | cut -d. -f1)" -lt 30 ]; do
        if [ "$(role_of "${IP[$other]}")" = director ]; then took=$(since "$tk"); break; fi
        sleep 0.2
    done
    if [ -n "$took" ]; then ok "failover: $other is director $took s after $director was killed"
    else bad "failover: $other did not become director within 30 s"; fi
    if [ $answers -gt 0 ]; then
        served=""
        while [ "$(since "$tk" | cut -d. -f1)" -lt 30 ]; do
            if ip netns exec "$CLI" curl -s -m 1 -o /dev/null "http://$VIP/"; then served=$(since "$tk"); break; fi
            sleep 0.2
        done
        if [ -n "$served" ]; then ok "VIP serves again $served s after $director was killed"
        else bad "VIP does not answer within 30 s of the failover"; fi
    fi
    start_vm "$director"
    wait_console "$director" 'duet-init: daemon started' "$BOOT_TIMEOUT" >/dev/null \
        && ok "$director rebooted after the kill" || bad "$director did not come back"
else
    [ $have_daemon = 1 ] || no_daemon "failover"
fi

# --- persistence of the data partition --------------------------------------
n=web2
stop_vm $n
disk="$WORK/disk-$n.img"
data_read "$disk" "cat /duet.toml" >"$WORK/duet-$n.toml"
marker="# vm-test change $tag"
printf '%s\n' "$marker" >>"$WORK/duet-$n.toml"
size=$(stat -c %s "$WORK/duet-$n.toml")
printf 'rm /duet.toml\nwrite %s /duet.toml\n' "$WORK/duet-$n.toml" | data_edit "$disk"
for round in 1 2; do
    start_vm $n
    wait_console $n 'duet-init: config ' "$BOOT_TIMEOUT" >/dev/null
    if grep -q "config /data/duet.toml ($size bytes)" "$WORK/console-$n.log.cur"; then
        ok "reboot $round of $n: init runs the changed config (/data/duet.toml, $size bytes)"
    else
        bad "reboot $round of $n: changed config not in use: $(grep -m1 'duet-init: config' "$WORK/console-$n.log.cur")"
    fi
    # Let the daemon write its state before the hard power-off.
    sleep 3
    stop_vm $n
done
if data_read "$disk" "cat /duet.toml" | grep -qF "$marker"; then
    ok "the change is still on $n's data partition after two reboots"
else
    bad "the change is gone from $n's data partition"
fi
state=$(data_read "$disk" "ls -l /state" | awk 'NF>=9 && $NF!="." && $NF!=".." {print $NF}' | tr '\n' ' ')
echo "vm-test: $n /data/state holds: ${state:-(empty)}"

# --- upgrades with rollback -----------------------------------------------------
DUET=${DUET:-$ROOT/target/x86_64-unknown-linux-gnu/release/duet}
# Under OVMF (q35) the daemon is OOM-killed at -m 256M; 384M leaves room.
DISK_VM_MEM=${DISK_VM_MEM:-384M}
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
# Boots NAME from its own disk with FIRMWARE (bios|uefi), the way a box
# starts: no -kernel, and a reset reboots through the firmware again.
start_disk_vm() {
    local n=$1 fw=$2 i=${1#web}
    local log=$WORK/console-$n.log fwargs=(-machine pc)
    if [ "$fw" = uefi ]; then
        [ -f "$WORK/vars-$n.fd" ] || cp "$OVMF_VARS" "$WORK/vars-$n.fd"
        fwargs=(-machine q35
            -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE"
            -drive "if=pflash,format=raw,file=$WORK/vars-$n.fd")
    fi
    echo "=== boot $(date -u +%H:%M:%S) from disk ($fw) ===" >>"$log"
    START[$n]=$(now)
    ip netns exec "$LAB" qemu-system-x86_64 "${fwargs[@]}" \
        -cpu max -m "$DISK_VM_MEM" -smp 1 -nodefaults -nographic \
        -serial "file:$log.cur" -monitor none \
        -drive "file=$WORK/disk-$n.img,format=raw,if=virtio" \
        -device virtio-rng-pci \
        -netdev "tap,id=lan,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=lan,mac=${MAC[$n]},romfile=" \
        >"$WORK/qemu-$n.out" 2>&1 &
    QPID[$n]=$!
}
# wait_after NAME BYTES REGEX TIMEOUT: like wait_console, on what the
# console printed after its first BYTES; prints the matching line.
wait_after() {
    local n=$1 from=$2 re=$3 limit=$4 t0 line
    t0=$(now)
    while [ "$(since "$t0" | cut -d. -f1)" -lt "$limit" ]; do
        line=$(tail -c +"$((from + 1))" "$WORK/console-$n.log.cur" 2>/dev/null | grep -aEm1 "$re")
        if [ -n "$line" ]; then echo "$line"; return 0; fi
        kill -0 "${QPID[$n]}" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
console_size() { stat -c %s "$WORK/console-$1.log.cur" 2>/dev/null || echo 0; }
upgrade_cli() { # FILE: duet upgrade against web2, from the client
    ip netns exec "$CLI" "$DUET" upgrade "$1" --addr "${IP[web2]}:8080" \
        --token-file "$WORK/admin_token" 2>&1
}
# The broken image: the same initramfs, with virtio_net dropped from init's
# module list, so eth0 never appears and init cannot start the daemon.
make_broken_upgrade() {
    local dir=$WORK/broken
    rm -rf "$dir" && mkdir -p "$dir"
    tar -C "$dir" -xf "$OUT/upgrade.tar"
    zstd -qdc "$dir/initrd.img" | python3 -c '
import sys
d = sys.stdin.buffer.read(); out = bytearray(); i = 0
while i < len(d):
    f = [int(d[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
    ns, fs = f[11], f[6]
    name = d[i + 110:i + 110 + ns - 1]
    o = (i + 110 + ns + 3) & ~3
    data = d[o:o + fs]
    if name == b"etc/duet/modules":
        data = b"".join(l for l in data.splitlines(True) if not l.rstrip().endswith(b"/virtio_net.ko"))
        f[6] = len(data)
    hdr = b"070701" + b"".join(b"%08x" % v for v in f)
    out += hdr + d[i + 110:i + 110 + ns]
    out += b"\0" * (-len(out) % 4) + data
    out += b"\0" * (-len(out) % 4)
    i = (o + fs + 3) & ~3
    if name == b"TRAILER!!!":
        break
sys.stdout.buffer.write(out)' | zstd -q -12 -c >"$dir/initrd.new" && mv "$dir/initrd.new" "$dir/initrd.img"
    (cd "$dir" && sha256sum vmlinuz initrd.img cmdline >SHA256SUMS)
    tar --format=ustar -C "$dir" -cf "$WORK/broken.tar" SHA256SUMS vmlinuz initrd.img cmdline
    # And one whose kernel never reaches /init: its initrd is noise, so the
    # kernel finds no root and panics (panic=-1 reboots at once).
    head -c 65536 /dev/urandom >"$dir/initrd.img"
    (cd "$dir" && sha256sum vmlinuz initrd.img cmdline >SHA256SUMS)
    tar --format=ustar -C "$dir" -cf "$WORK/noinit.tar" SHA256SUMS vmlinuz initrd.img cmdline
}
esp_state() { mtype -i "$WORK/disk-$1.img@@1048576" ::/duet/state 2>/dev/null | awk -F= '/^confirmed=/ {print $2}'; }
# web2's console lines matching PATTERN since byte MARK: a failed check's context.
web2_console_since() { # MARK PATTERN
    tail -c +"$(($1 + 1))" "$WORK/console-web2.log.cur" | grep -a "$2" | tail -8 | sed 's/^/  web2| /'
}
data_files() { for f in duet.toml key node admin_token; do data_read "$1" "cat /$f"; done | sha256sum | cut -c1-16; }

if [ "${VM_TEST_UPGRADE:-1}" = 1 ]; then
    [ -n "${QPID[web1]:-}" ] || start_vm web1
    [ -z "${QPID[web2]:-}" ] || stop_vm web2
    export MTOOLS_SKIP_CHECK=1
    data_before=$(data_files "$WORK/disk-web2.img")
    if ! make_broken_upgrade; then bad "could not build the broken upgrade image"; fi
    for fw in bios uefi; do
        FW=${fw^^}
        start_disk_vm web2 "$fw"
        line=$(wait_after web2 0 'duet-init: (boot slot [ab]|upgrade: ROLLED)' "$BOOT_TIMEOUT")
        old=$(grep -o 'slot [ab]' <<<"$line" | tail -1 | cut -c6)
        if [ -z "$old" ] || ! wait_after web2 0 "$HEARTBEAT_RE" 60 >/dev/null; then
            bad "$FW: web2 did not boot from its disk into a slot and hear web1 (${line:-no slot line})"
            tail -20 "$WORK/console-web2.log.cur" 2>/dev/null | sed 's/^/  web2| /'
            stop_vm web2
            continue
        fi
        new=$([ "$old" = a ] && echo b || echo a)
        echo "vm-test: $FW: web2 runs slot $old, peer web1 heard"
        # A good upgrade: the other slot boots once and is confirmed.
        mark=$(console_size web2)
        tu=$(now)
        out=$(upgrade_cli "$OUT/upgrade.tar")
        echo "vm-test: duet upgrade upgrade.tar: $out"
        if grep -q "slot $new written" <<<"$out" &&
            wait_after web2 "$mark" "upgrade: slot $new on trial" "$BOOT_TIMEOUT" >/dev/null &&
            wait_after web2 "$mark" "upgrade: slot $new confirmed good" 120 >/dev/null; then
            ok "$FW: upgrade to the rebuilt image: slot $new booted once and was confirmed when its daemon heard web1 ($(since "$tu") s after duet upgrade)"
        else
            bad "$FW: upgrade to the rebuilt image was not confirmed (cli: $out)"
            web2_console_since "$mark" 'duet-init'
        fi
        # A broken one: back on the confirmed slot by itself.
        wait_after web2 "$mark" "$HEARTBEAT_RE" 60 >/dev/null
        mark=$(console_size web2)
        tu=$(now)
        out=$(upgrade_cli "$WORK/broken.tar")
        echo "vm-test: duet upgrade broken.tar: $out"
        if grep -q "slot $old written" <<<"$out" &&
            wait_after web2 "$mark" "upgrade: the trial system cannot start" "$BOOT_TIMEOUT" >/dev/null &&
            wait_after web2 "$mark" "upgrade: ROLLED BACK: slot $old was not confirmed.*back on slot $new" "$BOOT_TIMEOUT" >/dev/null &&
            wait_after web2 "$mark" "$HEARTBEAT_RE" 60 >/dev/null; then
            ok "$FW: upgrade to a broken image (no NIC driver, daemon cannot start) rolled back to slot $new by itself, peer heard again ($(since "$tu") s after duet upgrade)"
        else
            bad "$FW: upgrade to a broken image did not roll back to slot $new (cli: $out)"
            web2_console_since "$mark" 'duet-init'
        fi
        # A kernel that never reaches /init: only the boot loader's
        # one-shot brings the old slot back.
        mark=$(console_size web2)
        tu=$(now)
        out=$(upgrade_cli "$WORK/noinit.tar")
        echo "vm-test: duet upgrade noinit.tar: $out"
        if grep -q "slot $old written" <<<"$out" &&
            wait_after web2 "$mark" "upgrade: ROLLED BACK: slot $old was not confirmed \(it never reached init\); back on slot $new" "$BOOT_TIMEOUT" >/dev/null &&
            wait_after web2 "$mark" "$HEARTBEAT_RE" 60 >/dev/null; then
            ok "$FW: upgrade to a kernel that panics before /init: the boot loader's one-shot returned to slot $new ($(since "$tu") s after duet upgrade)"
        else
            bad "$FW: upgrade to a kernel that never reaches /init did not return to slot $new (cli: $out)"
            web2_console_since "$mark" 'duet-init\|Kernel panic'
        fi
        # A good image while the peer is down: never confirmed, so PID 1
        # gives up after its bound and the box returns (once, on BIOS).
        if [ "$fw" = bios ]; then
            stop_vm web1
            mark=$(console_size web2)
            tu=$(now)
            out=$(upgrade_cli "$OUT/upgrade.tar")
            echo "vm-test: duet upgrade upgrade.tar with web1 down: $out"
            if grep -q "slot $old written" <<<"$out" &&
                wait_after web2 "$mark" "upgrade: slot $old not confirmed within [0-9]+ s" "$((BOOT_TIMEOUT + 120))" >/dev/null &&
                wait_after web2 "$mark" "upgrade: ROLLED BACK: slot $old was not confirmed.*back on slot $new" "$BOOT_TIMEOUT" >/dev/null; then
                ok "$FW: upgrade while the peer is down: the trial's daemon never heard it, so the box went back to slot $new by itself ($(since "$tu") s after duet upgrade)"
            else
                bad "$FW: upgrade while the peer is down did not roll back to slot $new (cli: $out)"
                web2_console_since "$mark" 'duet-init'
            fi
            start_vm web1
            wait_after web2 "$mark" "$HEARTBEAT_RE" "$BOOT_TIMEOUT" >/dev/null
        fi
        sleep 2
        stop_vm web2
        st=$(esp_state web2)
        if [ "$st" = "$new" ]; then ok "$FW: the boot partition records slot $new as confirmed"
        else bad "$FW: the boot partition records slot '${st}', not $new"; fi
    done
    data_after=$(data_files "$WORK/disk-web2.img")
    if [ "$data_before" = "$data_after" ]; then
        ok "upgrades left web2's data partition files (duet.toml, key, node, admin_token) unchanged"
    else
        bad "web2's data partition files changed across the upgrades"
    fi
fi

# --- report -----------------------------------------------------------------
echo
echo "vm-test report"
for f in vmlinux vmlinuz initramfs.img disk.img; do
    printf '  size %-14s %s bytes\n' "$f" "$(stat -c %s "$OUT/$f")"
done
for n in web1 web2; do
    printf '  %s: QEMU start -> daemon started %s s, -> first heartbeat %s s\n' \
        "$n" "${T_DAEMON[$n]:-n/a}" "${T_HB[$n]:-n/a}"
done
for n in web1 web2; do
    printf '  %s: QEMU RSS %s MiB after boot (-m %s)\n' "$n" "${RSS[$n]:-n/a}" "$VM_MEM"
done
for r in "${RESULTS[@]}"; do echo "  $r"; done
echo "  consoles: $WORK/console-*.log"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]

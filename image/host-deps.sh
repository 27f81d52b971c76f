#!/bin/bash
# Installs the host tools `make image` and `make vm-test` need, idempotently.
#
# qemu-system-x86 is special: this machine ships qemu-utils from
# bookworm-backports, and bookworm's own qemu-system-x86 (7.2) would make apt
# remove it. When the installed qemu-utils is a backports build we take
# qemu-system-x86 from the same suite so the two stay at one version.
set -euo pipefail

need_image="dosfstools mtools fdisk e2fsprogs xz-utils zstd python3"
need_vm="iproute2 curl iputils-ping ovmf"
need_qemu="qemu-system-x86"

missing=()
for p in $need_image $need_vm; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); only the command matters.
if command -v python3 >/dev/null; then
    missing=("${missing[@]/python3}")
fi
have_qemu=1
command -v qemu-system-x86_64 >/dev/null || have_qemu=0

trimmed=()
for m in "${missing[@]}"; do [ -n "$m" ] && trimmed+=("$m"); done
if [ ${#trimmed[@]} -eq 0 ] && [ $have_qemu = 1 ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
qemu_target=""
if [ $have_qemu = 0 ]; then
    utils_ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ "$utils_ver" == *bpo12* ]]; then
        src=/etc/apt/sources.list.d/duet-bookworm-backports.sources
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
        qemu_target="-t bookworm-backports qemu-system-x86=$utils_ver"
    else
        qemu_target="qemu-system-x86"
    fi
fi

apt-get update -qq
# --no-install-recommends keeps the GUI/audio stack out; -s first so a plan
# that would remove packages (the qemu-utils pitfall) stops us instead.
install() {
    local plan
    plan=$(apt-get install -s --no-install-recommends "$@")
    if echo "$plan" | grep -q '^Remv '; then
        echo "host-deps: apt would remove packages, refusing:" >&2
        echo "$plan" | grep '^Remv ' >&2
        exit 1
    fi
    apt-get install -y -qq --no-install-recommends "$@"
}
[ ${#trimmed[@]} -gt 0 ] && install "${trimmed[@]}"
# shellcheck disable=SC2086 # qemu_target is deliberately split into options
[ -n "$qemu_target" ] && install $qemu_target
true

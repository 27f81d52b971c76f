#!/bin/bash
# Downloads the pinned packages of firmware/packages.pin into $OUT/debs and
# unpacks each into $OUT/pkg/<name>. Idempotent: a package already unpacked
# at the pinned version is skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/image/out}
mkdir -p "$OUT/debs" "$OUT/pkg"

updated=0
while read -r line; do
    line=${line%%#*}
    [ -z "${line// }" ] && continue
    name=${line%%=*}
    ver=${line#*=}
    stamp="$OUT/pkg/$name.version"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$ver" ]; then
        continue
    fi
    rm -f "$OUT/debs/${name}_"*.deb
    (
        cd "$OUT/debs"
        if ! apt-get download "$name=$ver" 2>/dev/null; then
            if [ $updated = 0 ]; then
                apt-get update -qq || true
            fi
            if ! apt-get download "$name=$ver"; then
                # The security archive only keeps the newest build of a
                # package; a pin that fell out of it keeps the same package
                # (same kernel ABI) at whatever version is now offered.
                echo "fetch: WARNING: $name=$ver is gone from the archive; taking the current $name" >&2
                apt-get download "$name"
            fi
        fi
    )
    updated=1
    deb=$(ls "$OUT/debs/${name}_"*.deb | head -1)
    rm -rf "$OUT/pkg/$name"
    dpkg-deb -x "$deb" "$OUT/pkg/$name"
    echo "$ver" >"$stamp"
    echo "fetch: $name $(dpkg-deb -f "$deb" Version)"
done <"$ROOT/firmware/packages.pin"

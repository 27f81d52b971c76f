#!/bin/bash
# make demo: a two-node duet cluster in network namespaces, reachable from
# this host through a veth into the demo LAN (198.18.0.254/24).
set -euo pipefail
BIN=$(realpath "${1:-target/release/duet}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=duetdemo
VIP=198.18.0.100
DIR=$(mktemp -d /tmp/duet-demo.XXXX)
PIDS=()

cleanup() {
    echo; echo "demo: cleaning up"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for ns in ${P}n1 ${P}n2 ${P}lan; do
        ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del $ns 2>/dev/null || true
    done
    ip link del ${P}h 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ "$(id -u)" != 0 ]; then echo "demo: needs root (network namespaces)"; exit 1; fi
# Leftovers of an interrupted demo.
for ns in ${P}n1 ${P}n2 ${P}lan; do ip netns del $ns 2>/dev/null || true; done
ip link del ${P}h 2>/dev/null || true

ip netns add ${P}lan
ip -n ${P}lan link add br0 type bridge
ip -n ${P}lan link set br0 up
ip link add ${P}h type veth peer name vh netns ${P}lan
ip -n ${P}lan link set vh master br0 up
ip addr add 198.18.0.254/24 dev ${P}h
ip link set ${P}h up

head -c 24 /dev/urandom | base64 > "$DIR/key"
head -c 18 /dev/urandom | base64 > "$DIR/token"
for i in 1 2; do
    ns=${P}n$i
    ip netns add $ns
    ip link add vn$i netns ${P}lan type veth peer name eth0 netns $ns
    ip -n ${P}lan link set vn$i master br0 up
    ip -n $ns link set lo up
    ip -n $ns addr add 198.18.0.$i/24 dev eth0
    ip -n $ns link set eth0 up
    mkdir -p "$DIR/web$i/state"
    cat > "$DIR/web$i/duet.toml" <<EOT
[cluster]
vip = "$VIP"
interface = "eth0"
vrid = 1
key_file = "$DIR/key"
admin_token_file = "$DIR/token"
status_listen = "198.18.0.$i:8080"
state_dir = "$DIR/web$i/state"

[[node]]
name = "web1"
address = "198.18.0.1"
priority = 150

[[node]]
name = "web2"
address = "198.18.0.2"
priority = 100

[heartbeat]
interval = "100ms"
dead_after = "1s"
ping = ["198.18.0.254"]

[[service]]
port = 80
protocol = "tcp"
scheduler = "wlc"
serve_local = true
check = { kind = "http", request = "/ldirector.html", receive = "Test Page", interval = "1s", timeout = "500ms", rise = 2, fall = 2, quiescent = true }
EOT
    ip netns exec $ns python3 "$ROOT/tests/support/websrv.py" --name web$i >/dev/null 2>&1 &
    PIDS+=($!)
    RUST_LOG=info ip netns exec $ns "$BIN" run -c "$DIR/web$i/duet.toml" > "$DIR/web$i/duet.log" 2>&1 &
    PIDS+=($!)
done

sleep 2
cat <<EOT

  duet demo is running: two nodes (web1 198.18.0.1, web2 198.18.0.2), VIP $VIP

  Try:
    curl http://$VIP/                         # answered by web1 or web2
    for i in \$(seq 10); do curl -s http://$VIP/; done
    open http://198.18.0.1:8080/  and  http://198.18.0.2:8080/   (status pages)
    curl -s http://198.18.0.1:8080/api/status | python3 -m json.tool
    curl -s http://198.18.0.1:8080/metrics | head -30

  Drain a backend (admin token in $DIR/token):
    curl -X POST -H "Authorization: Bearer \$(cat $DIR/token)" http://198.18.0.1:8080/api/backends/web2/drain
  Kill the director and watch the other take over:
    ip netns pids ${P}n1 | xargs -r kill -9      # if web1 is the director
  Logs: $DIR/web1/duet.log  $DIR/web2/duet.log

  Ctrl-C stops the demo and removes everything it created.
EOT
for i in 1 2; do curl -s -m 2 http://$VIP/ || echo "(VIP not answering yet)"; done
wait

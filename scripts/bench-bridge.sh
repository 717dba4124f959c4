#!/usr/bin/env bash
# Benchmarks mqbridge against Mosquitto's own bridge between the same pair of
# Mosquitto brokers, in one run, on this machine.
#
#   scripts/bench-bridge.sh            # 100k messages per max-rate run, 20k at 5,000 msg/s
#   COUNT=200000 scripts/bench-bridge.sh
#
# For each bridge (a: Mosquitto `connection` with `topic bench/# out <qos>`,
# b: mqbridge with one pipe a → b `bench/#`) and each QoS (0, 1): fresh
# brokers A and B, wait until a probe crosses, then `mqbridge-bench`
# publishes sequence-numbered 100-byte messages into A and counts them on B.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-100000}
RATE_COUNT=${RATE_COUNT:-20000}
RATE=${RATE:-5000}
SIZE=${SIZE:-100}
# mqbridge's per-pipe QoS 0 queue (the config default is 1000; Mosquitto's
# bridge here queues without bound, `max_queued_messages 0`).
QUEUE_SIZE=${QUEUE_SIZE:-1000}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
command -v mosquitto_pub >/dev/null || { echo "mosquitto-clients missing" >&2; exit 1; }
[ -x "$MOSQUITTO" ] || { echo "mosquitto missing at $MOSQUITTO" >&2; exit 1; }

cargo build --release --locked --bin mqbridge --bin mqbridge-bench >&2
BENCH=target/release/mqbridge-bench
MQB=target/release/mqbridge

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; return 1
}

# start_broker <name> <port> [extra conf]
start_broker() {
  local conf="$WORK/$1.conf"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nlog_dest none\n%s\n' "$2" "${3:-}" > "$conf"
  "$MOSQUITTO" -c "$conf" & PIDS+=($!)
  wait_port "$2"
}

# Publishes probes on A until one arrives on B (the bridge is up and subscribed).
wait_crossing() {
  for _ in $(seq 1 50); do
    mosquitto_sub -p "$2" -t bench/probe -C 1 -W 2 >/dev/null 2>&1 &
    local sp=$!
    sleep 0.2 # give the probe subscriber time to subscribe (this is a script, not a test)
    mosquitto_pub -p "$1" -t bench/probe -m probe -q 1
    if wait "$sp"; then return 0; fi
  done
  echo "bridge never forwarded a probe" >&2
  return 1
}

# Stops everything started for a case, newest first (the bridge before its brokers).
stop_all() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  PIDS=()
}

# run_case <bridge> <qos> <count> <rate>
run_case() {
  local bridge=$1 qos=$2 count=$3 rate=$4
  local pa pb
  pa=$(free_port); pb=$(free_port)
  start_broker b "$pb"
  if [ "$bridge" = mosquitto ]; then
    start_broker a "$pa" "connection bench
address 127.0.0.1:$pb
topic bench/# out $qos
cleansession false
clientid bench-native-$$"
  else
    start_broker a "$pa"
    cat > "$WORK/bridges.yaml" <<YAML
brokers:
  a:
    type: remote
    endpoints: [mqtt://127.0.0.1:$pa]
    client_id: bench-mqb-a-$$
  b:
    type: remote
    endpoints: [mqtt://127.0.0.1:$pb]
    client_id: bench-mqb-b-$$
pipes:
  bench:
    from: a
    to: b
    topics:
      - filter: bench/#
        qos: $qos
    queue: { size: $QUEUE_SIZE }
YAML
    "$MQB" run --log-level warn --config "$WORK/bridges.yaml" & PIDS+=($!)
  fi
  wait_crossing "$pa" "$pb"
  "$BENCH" --label "$bridge" --pub-port "$pa" --sub-port "$pb" --count "$count" --qos "$qos" \
    --size "$SIZE" --rate "$rate" --idle-secs 5 --topic bench/data
  stop_all
}

for qos in 0 1; do
  for bridge in mosquitto mqbridge; do
    run_case "$bridge" "$qos" "$COUNT" 0
  done
done
for qos in 0 1; do
  for bridge in mosquitto mqbridge; do
    run_case "$bridge" "$qos" "$RATE_COUNT" "$RATE"
  done
done

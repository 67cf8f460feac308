#!/usr/bin/env bash
# mqtt-ingest.sh -- EdgeMail gateway ingest and end-to-end benchmark with Debian's mosquitto_pub.
#   DEVICES concurrent `mosquitto_pub -l -q 1` publishers (one per device, MSGS_PER alerts each, ~200-byte alert JSON)
#   --> gateway (Release build, embedded broker, SQLite spool with synchronous=FULL, storm control off)
#   --> local mailbox (one fsync'd .eml per alert).
# Reports: ingest = first publisher start -> last publisher exit (every PUBLISH has its PUBACK, i.e. is committed);
#          e2e    = first publisher start -> DEVICES*MSGS_PER files in mailbox/new.
# Knobs: DEVICES=20 MSGS_PER=1000 PORT=18990 RELEASE_DIR=/tmp/art-gw-bench. Loopback only. Needs mosquitto-clients.
set -euo pipefail
DEVICES=${DEVICES:-20}
MSGS_PER=${MSGS_PER:-1000}
PORT=${PORT:-18990}
ART=${RELEASE_DIR:-/tmp/art-gw-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=$(mktemp -d /var/tmp/edgemail-gw-bench.XXXXXX)
dotnet build "$ROOT/gateway/EdgeMail.Gateway" -c Release --artifacts-path "$ART" -v q -nologo >/dev/null
DLL="$ART/bin/EdgeMail.Gateway/release/EdgeMail.Gateway.dll"
SECRET=bench-secret
HASH=$(dotnet "$DLL" hash-secret "$SECRET")
{
  echo '{ "DataDirectory": "'"$STATE"'/data", "Mqtt": { "Port": '"$PORT"' }, "Storm": { "Window": "00:00:00" },'
  echo '  "Logging": { "LogLevel": { "Default": "Warning", "EdgeMail.Gateway.Ingest.EmbeddedBroker": "Information" } },'
  echo '  "Users": { "ops": { "Name": "Ops", "Email": "ops@sink.edgemail.test" } },'
  echo '  "Routes": [ { "Devices": "*", "Codes": "*", "MinSeverity": "info", "To": [ "ops" ] } ], "Devices": {'
  for d in $(seq 1 "$DEVICES"); do
    sep=$([ "$d" -lt "$DEVICES" ] && echo , || true)
    echo '    "bench-'"$d"'": { "Secret": "'"$HASH"'", "Site": "Bench" }'"$sep"
  done
  echo '} }'
} > "$STATE/edgemail.json"
for d in $(seq 1 "$DEVICES"); do
  for i in $(seq 1 "$MSGS_PER"); do
    printf '{"v":1,"id":"b%d-%d","seq":%d,"state":"raised","sev":"warning","code":"BENCH_LOAD","text":"Benchmark alert number %d from device %d","values":{"n":%d},"boot":1,"count":1}\n' "$d" "$i" "$i" "$i" "$d" "$i"
  done > "$STATE/in-$d.txt"
done
dotnet "$DLL" --config "$STATE/edgemail.json" > "$STATE/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "MQTT broker listening" "$STATE/gateway.log" && break; sleep 0.1; done
# Warm the secret cache (first connect per device runs PBKDF2) outside the timed window.
for d in $(seq 1 "$DEVICES"); do mosquitto_pub -h 127.0.0.1 -p "$PORT" -i "bench-$d" -u "bench-$d" -P "$SECRET" -q 1 -t "edgemail/v1/bench-$d/status" -m '{}'; done
TOTAL=$((DEVICES * MSGS_PER))
start=$(date +%s.%N)
pids=()
for d in $(seq 1 "$DEVICES"); do
  mosquitto_pub -h 127.0.0.1 -p "$PORT" -i "bench-$d" -u "bench-$d" -P "$SECRET" -q 1 -t "edgemail/v1/bench-$d/alert" -l < "$STATE/in-$d.txt" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
ingest_end=$(date +%s.%N)
while [ "$(find "$STATE/data/mailbox/new" -name '*.eml' | wc -l)" -lt "$TOTAL" ]; do sleep 0.05; done
e2e_end=$(date +%s.%N)
cpu=$(awk '{print ($14+$15)/100}' /proc/$GW/stat)
python3 - "$start" "$ingest_end" "$e2e_end" "$TOTAL" "$cpu" "$DEVICES" <<'PY'
import sys
s, i, e, n, cpu, dev = map(float, sys.argv[1:])
print(f"devices={int(dev)} alerts={int(n)} ingest={n/(i-s):.0f}/s ({i-s:.2f} s) e2e={n/(e-s):.0f}/s ({e-s:.2f} s) gateway_cpu={cpu:.1f} s ({cpu/n*1e6:.0f} us/alert)")
PY
rm -rf "$STATE"

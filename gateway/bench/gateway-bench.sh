#!/usr/bin/env bash
# gateway-bench.sh -- the gateway benchmarks of issue 5, in one command, with the peer baselines in the same session.
#
#   loadgen (separate process: DEVICES MQTTnet clients, INFLIGHT QoS 1 publishes each, ~200-byte alert JSON)
#     --MQTT--> gateway (Release, embedded broker, SQLite spool synchronous=FULL, storm control off)
#     --SMTP--> sink (Postfix's smtp-sink for throughput; the load generator's own SMTP sink for latency)
#
# Stages (STAGES="ingest mosquitto latency memory peers" by default):
#   ingest   DEVICES x MSGS_PER alerts; ingest = first PUBLISH -> last PUBACK (every alert committed, fsync'd);
#            e2e = first PUBLISH -> smtp-sink has every mail (smtp-sink -M exits). RECEIPTS=1: the publishing devices
#            connect as the firmware does (persistent session, subscribed to their receipts, each acknowledged), so the
#            CPU per alert includes sending the accepted and relayed receipts and removing the kept ones; default 0
#            (publishers without a subscription, as every result before 2026-12-05 was measured). BYSTANDERS=N: N more
#            devices stay connected through the stage, idle and subscribed to their receipts, as a large fleet is.
#   mosquitto the ingest stage's load (same load generator, devices, in-flight window, payloads, warm-up) against
#            Debian's mosquitto alone (persistence on, port EXT_PORT): the like-for-like ingest anchor, in the same run.
#            mosquitto's persistence writes a snapshot every autosave_interval; it does not fsync each message as the
#            gateway's spool does before a PUBACK.
#   latency  the same at LAT_RATE alerts/s (default: a tenth of the ingest stage's e2e rate); PUBLISH -> sink's 250.
#   memory   IDLE_DEVICES connected idle devices; gateway RSS before (MEM_SETTLE=5 s after the broker listens, once the
#            rest has started; 0 reads it at once, as before 2026-12-05) and after, and bytes per connection. Each
#            device connects as the firmware does, a persistent session subscribed to its receipts (IDLE_RECEIPTS=0:
#            a clean session without subscription, as before 2026-12-05). Also the start with IDLE_DEVICES configured:
#            start_listen_ms to the broker's "listening" log line, start_cpu_ms the CPU used by the "before" reading.
#   external (not in the default set) the same load published to Debian's mosquitto (persistence on, port
#            EXT_PORT), the gateway as its client (Mqtt:Mode=external, persistent session): devices' PUBACKs come
#            from mosquitto; measured = first PUBLISH -> smtp-sink has every mail.
#   cluster  (not in the default set) 1, 2 and 3 gateway instances (CLUSTER_INSTANCES="1 2 3") side by side: each a
#            client of one Debian mosquitto with a shared subscription (Mqtt:External:SharedGroup) and all on one
#            PostgreSQL spool (.ci/postgres.sh: a throwaway cluster, fsync on, a fresh schema per row); DEVICES x
#            CLUSTER_MSGS_PER alerts (default 200) from first PUBLISH to smtp-sink having every mail; CPU seconds of each
#            gateway, of mosquitto and of the PostgreSQL server processes.
#   peers    ../shared/peers/mosquitto_qos1.sh (MSGS=50000 SIZE=200 RUNS=1) and postfix_relay.sh
#            (MSGS=5000 SESSIONS=20 SIZE=1024 REUSE=0 RUNS=1) -- needs root; installs postfix if missing.
# Knobs: DEVICES=50 MSGS_PER=1000 INFLIGHT=10 IDLE_DEVICES=10000 LAT_RATE= RELAY_CONCURRENCY=8 PORT=18990 (console on PORT-2)
#        SSE=N (N open dashboards, the console's event stream, during the timed ingest run)
#        COUNTERS=1 (ingest stage: allocations, GCs, thread-pool work items per alert; dotnet-counters global tool)
#        PERF=file.data (ingest stage: perf record -g of the gateway through the timed run, JIT frames resolvable;
#        PERF_FREQ=499 Hz; PERF_DELAY=1 s after the timed run starts; PERF_SECONDS=N stops it after N s instead of at
#        the end; read it with gateway/bench/perf-stages.py file.data)
#        INGEST_ONLY=1 (ingest stage: every figure -- CPU, COUNTERS, THREADS, IO, commits -- covers first PUBLISH to last
#        PUBACK only; the run ends there, without waiting for the mail; e2e figures are then not printed)
#        GW_ENV="NAME=value ..." (runtime settings for the gateway process, e.g. DOTNET_GCgen0size=0x4000000, to try them)
#        SINK_PORT=18925 ART=/tmp/art-gw-bench PEERS_DIR=<repo>/../shared/peers
# Device secrets in the generated config use PBKDF2 with 1,000 iterations (instead of 100,000) so that connecting
# 10,000 devices does not take minutes of CPU; after the first connect the gateway checks a cached SHA-256 anyway.
# Prints one "RESULT ..." line per stage. Loopback only.
set -euo pipefail
PATH="$PATH:$HOME/.dotnet/tools"   # dotnet-trace, dotnet-counters (global tools)
DEVICES=${DEVICES:-50}
MSGS_PER=${MSGS_PER:-1000}
INFLIGHT=${INFLIGHT:-10}
IDLE_DEVICES=${IDLE_DEVICES:-10000}
MEM_SETTLE=${MEM_SETTLE:-5}
IDLE_RECEIPTS=${IDLE_RECEIPTS:-1}
RECEIPTS=${RECEIPTS:-0}
BYSTANDERS=${BYSTANDERS:-0}
RELAY_CONCURRENCY=${RELAY_CONCURRENCY:-8}
PORT=${PORT:-18990}
SINK_PORT=${SINK_PORT:-18925}
STAGES=${STAGES:-ingest mosquitto latency memory peers}
ART=${ART:-/tmp/art-gw-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
STATE=$(mktemp -d /var/tmp/edgemail-gw-bench.XXXXXX)
SECRET=bench-secret
GW=""

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null || true
  [ -n "${SINKPID:-}" ] && kill "$SINKPID" 2>/dev/null || true
  [ -n "${PERFREC:-}" ] && kill -INT "$PERFREC" 2>/dev/null || true
  [ -n "${COUNTERPID:-}" ] && kill -TERM "$COUNTERPID" 2>/dev/null || true
  [ -n "${MOSQ:-}" ] && kill "$MOSQ" 2>/dev/null || true
  [ -n "${BYST:-}" ] && kill "$BYST" 2>/dev/null || true
  for g in ${GWS:-}; do kill "$g" 2>/dev/null || true; done
  [ -n "${PG_STARTED:-}" ] && TMPDIR="$STATE" bash "$ROOT/.ci/postgres.sh" stop >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building (Release) into $ART"
dotnet build "$ROOT/gateway/EdgeMail.Gateway" -c Release --artifacts-path "$ART" -v q -nologo >/dev/null
dotnet build "$ROOT/gateway/bench/LoadGen" -c Release --artifacts-path "$ART" -v q -nologo >/dev/null
DLL="$ART/bin/EdgeMail.Gateway/release/EdgeMail.Gateway.dll"
LOADGEN="$ART/bin/EdgeMail.Gateway.LoadGen/release/EdgeMail.Gateway.LoadGen.dll"
HASH=$(python3 -c '
import hashlib, base64, os, sys
salt = os.urandom(16); it = 1000
h = hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), salt, it, 32)
print("pbkdf2-sha256$%d$%s$%s" % (it, base64.b64encode(salt).decode(), base64.b64encode(h).decode()))' "$SECRET")

# write_config FILE DEVICES RELAY_PORT
write_config() {
  python3 - "$1" "$2" "$3" "$HASH" "$STATE/data" "$PORT" "$RELAY_CONCURRENCY" <<'PY'
import json, sys
path, n, relay_port, h, data, port, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
cfg = {
  "DataDirectory": data, "Mqtt": {"Port": port}, "Storm": {"Window": "00:00:00"}, "Console": {"Port": port - 2},
  "Logging": {"LogLevel": {"Default": "Warning", "EdgeMail.Gateway.Ingest.EmbeddedBroker": "Information"}},
  "Users": {"ops": {"Name": "Ops", "Email": "ops@sink.edgemail.test"}},
  "Routes": [{"Devices": "*", "Codes": "*", "MinSeverity": "info", "To": ["ops"]}],
  "Relay": {"Mode": "Smarthost", "Host": "127.0.0.1", "Port": relay_port, "Security": "None", "Concurrency": conc},
  # every simulated device connects from 127.0.0.1: lift the per-source CONNECT rate limit for the benchmark
  "MqttGuard": {"ConnectsPerMinutePerSource": 0, "PublishesPerMinutePerDevice": 0},
  "Devices": {f"bench-{d}": {"Secret": h, "Site": "Bench"} for d in range(1, n + 1)},
}
json.dump(cfg, open(path, "w"))
PY
}

# start_gateway CONFIG
start_gateway() {
  rm -rf "$STATE/data"
  if [ -n "${PERF:-}" ]; then
    # perf resolves JIT-compiled frames from /tmp/perf-PID.map, and only in anonymous memory: W^X double mapping
    # puts code in a memfd mapping perf cannot read, and ReadyToRun code of the framework is in no map at all.
    DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 DOTNET_ReadyToRun=0 dotnet "$DLL" --config "$1" > "$STATE/gateway.log" 2>&1 &
  else
    env ${GW_ENV:-} dotnet "$DLL" --config "$1" > "$STATE/gateway.log" 2>&1 &
  fi
  GW=$!
  for _ in $(seq 1 300); do grep -q "MQTT broker listening" "$STATE/gateway.log" && return 0; sleep 0.1; done
  cat "$STATE/gateway.log" >&2; exit 1
}
stop_gateway() { kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; GW=""; }
EXT_PORT=${EXT_PORT:-18993}
# Debian's mosquitto on EXT_PORT, persistence on, no queue or in-flight limits; state in $1 (default $STATE/mosq).
start_mosquitto() {
  local dir=${1:-$STATE/mosq}
  command -v mosquitto >/dev/null || { log "mosquitto missing: apt-get install mosquitto"; exit 1; }
  rm -rf "$dir"; mkdir -p "$dir"
  chmod 755 "$STATE"   # mosquitto drops to its own user when started as root
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$EXT_PORT" "$dir" > "$dir/mosquitto.conf"
  chown -R mosquitto "$dir" 2>/dev/null || true
  mosquitto -c "$dir/mosquitto.conf" > "$dir/log" 2>&1 &
  MOSQ=$!
  for _ in $(seq 1 100); do ss -Hltn "sport = :$EXT_PORT" | grep -q . && break; sleep 0.1; done
}
stop_mosquitto() { kill "$MOSQ" 2>/dev/null; wait "$MOSQ" 2>/dev/null || true; MOSQ=""; }
# start_sink N: Postfix's smtp-sink on SINK_PORT, exiting once it has N mails.
start_sink() { smtp-sink -u nobody -M "$1" "127.0.0.1:$SINK_PORT" 1024 > "$STATE/sink.out" 2>&1 & SINKPID=$!; }
# warm_up PORT [nosink]: outside the timed window every device connects once (PBKDF2 on first connect) and WARM_PER
# alerts per device go all the way to a first smtp-sink, so the JIT has compiled the whole path before the timed run.
WARM_PER=${WARM_PER:-40}
warm_up() {
  [ "${2:-}" = nosink ] || start_sink "$((DEVICES * WARM_PER))"
  dotnet "$LOADGEN" publish --port "$1" --devices "$DEVICES" --msgs "$WARM_PER" --inflight "$INFLIGHT" --secret "$SECRET" --tag w --receipts "$([ "$1" = "$PORT" ] && echo "$RECEIPTS" || echo 0)" >/dev/null
  [ "${2:-}" = nosink ] || { wait "$SINKPID" || true; SINKPID=""; }
}
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# utime and stime are fields 14 and 15 of /proc/PID/task/TID/stat counted after the "(comm)" field, whose name may
# hold spaces (".NET TP Worker").
thread_cpu() { for t in /proc/$1/task/*; do printf '%s\t%s\t%s\n' "${t##*/}" "$(cat "$t/comm" 2>/dev/null)" "$(awk '{sub(/^.*\) /, ""); print ($12+$13)/100}' "$t/stat" 2>/dev/null)"; done; }
# voluntary and involuntary context switches of all the process's threads (threads that ended are not counted)
ctx_switches() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/{v+=$2} /^nonvoluntary_ctxt_switches/{n+=$2} END{print v+0, n+0}'; }
spool_commits() { curl -s -H "Authorization: Bearer $(cat "$STATE/data/cli-api-key")" "http://127.0.0.1:$((PORT - 2))/metrics" | awk '/^edgemail_spool_commit_duration_seconds_count/{print $NF; f=1} END{if (!f) print 0}'; }
spool_commit_seconds() { curl -s -H "Authorization: Bearer $(cat "$STATE/data/cli-api-key")" "http://127.0.0.1:$((PORT - 2))/metrics" | awk '/^edgemail_spool_commit_duration_seconds_sum/{print $NF; f=1} END{if (!f) print 0}'; }
io_counts() { awk '/^syscw/{w=$2} /^wchar/{wb=$2} /^syscr/{r=$2} /^rchar/{rb=$2} END{print w, wb, r, rb}' "/proc/$1/io"; }
cpu_s() { awk '{printf "%.2f", ($14+$15)/100}' "/proc/$1/stat"; }

echo "MACHINE nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\" date=$(date -u +%Y-%m-%dT%H:%M:%SZ) dotnet=$(dotnet --version) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""

E2E_RATE=""
if [[ " $STAGES " == *" ingest "* ]]; then
  command -v smtp-sink >/dev/null || { log "smtp-sink missing: apt-get install postfix (or run the peers stage first)"; exit 1; }
  TOTAL=$((DEVICES * MSGS_PER))
  write_config "$STATE/ingest.json" "$((DEVICES + BYSTANDERS))" "$SINK_PORT"
  start_gateway "$STATE/ingest.json"
  if [ "$BYSTANDERS" -gt 0 ]; then  # BYSTANDERS=N: N more devices connected and subscribed to their receipts, idle
    mkfifo "$STATE/bystanders.in"
    dotnet "$LOADGEN" idle --port "$PORT" --devices "$BYSTANDERS" --first "$((DEVICES + 1))" --secret "$SECRET" --receipts 1 < "$STATE/bystanders.in" > "$STATE/bystanders.out" &
    BYST=$!
    exec 8> "$STATE/bystanders.in"
    for _ in $(seq 1 6000); do grep -q connected "$STATE/bystanders.out" && break; kill -0 "$BYST" 2>/dev/null || break; sleep 0.1; done
    log "bystanders: $(cat "$STATE/bystanders.out")"
  fi
  warm_up "$PORT"
  start_sink "$TOTAL"
  if [ "${SSE:-0}" -gt 0 ]; then  # SSE=N: N dashboards open (clients of the console's event stream) during the timed run
    for _ in $(seq 1 "$SSE"); do
      curl -sN -H "Authorization: Bearer $(cat "$STATE/data/cli-api-key")" "http://127.0.0.1:$((PORT - 2))/api/v1/events" > "$STATE/sse.out" &
    done
  fi
  cpu0=$(cpu_s "$GW")
  io0=$(io_counts "$GW")
  [ -n "${THREADS:-}" ] && { thread_cpu "$GW" > "$STATE/threads0"; cs0=$(ctx_switches "$GW"); commits0=$(spool_commits); csum0=$(spool_commit_seconds); }
  if [ -n "${TRACE:-}" ]; then  # TRACE=file.nettrace: CPU-sample the gateway for TRACE_SECONDS (8) of the run (dotnet-trace global tool)
    dotnet-trace ${TRACE_CMD:-collect-linux --profile cpu-sampling} -p "$GW" -o "$TRACE" --duration "00:00:00:$(printf %02d "${TRACE_SECONDS:-8}")" >/dev/null 2>&1 &
    TRACER=$!
    sleep 1
  fi
  if [ -n "${PERF:-}" ]; then
    # PERF=file.data: perf record -g of the gateway from PERF_DELAY (1) s into the timed run until the sink has every
    # mail, so the profile covers ingest, routing and delivery alike; gateway/bench/perf-stages.py reads it.
    # PERF_SECONDS=N: N seconds only (e.g. the ingest phase alone: PERF_DELAY=0.5 PERF_SECONDS=4).
    if [ -n "${PERF_SECONDS:-}" ]; then
      (sleep "${PERF_DELAY:-1}"; exec perf record -F "${PERF_FREQ:-499}" -g -p "$GW" -o "$PERF" -- sleep "$PERF_SECONDS" >/dev/null 2>&1) &
    else
      (sleep "${PERF_DELAY:-1}"; exec perf record -F "${PERF_FREQ:-499}" -g -p "$GW" -o "$PERF" >/dev/null 2>&1) &
    fi
    PERFREC=$!
  fi
  if [ -n "${COUNTERS:-}" ]; then
    # COUNTERS=1: the runtime's own counters through the timed run (dotnet-counters global tool): bytes allocated, GCs,
    # thread-pool work items and lock contentions per alert -- figures the machine's other load does not change.
    dotnet-counters collect -p "$GW" --counters System.Runtime --format csv -o "$STATE/counters.csv" --refresh-interval 1 >/dev/null 2>&1 &
    COUNTERPID=$!
    for _ in $(seq 1 50); do [ -s "$STATE/counters.csv" ] && break; sleep 0.1; done
  fi
  t0=$EPOCHREALTIME
  out=$(dotnet "$LOADGEN" publish --port "$PORT" --devices "$DEVICES" --msgs "$MSGS_PER" --inflight "$INFLIGHT" --secret "$SECRET" --tag i --receipts "$RECEIPTS")
  if [ -n "${INGEST_ONLY:-}" ]; then
    kill "$SINKPID" 2>/dev/null || true; wait "$SINKPID" 2>/dev/null || true; SINKPID=""
  else
    wait "$SINKPID"; SINKPID=""
  fi
  t1=$EPOCHREALTIME
  cpu1=$(cpu_s "$GW")
  io1=$(io_counts "$GW")
  [ -n "${THREADS:-}" ] && { thread_cpu "$GW" > "$STATE/threads1"; cs1=$(ctx_switches "$GW"); commits1=$(spool_commits); csum1=$(spool_commit_seconds); }
  if [ -n "${COUNTERPID:-}" ]; then
    sleep 1.5   # the last interval is written when it ends (with INGEST_ONLY=1 it holds a second after the ingest)
    kill -TERM "$COUNTERPID" 2>/dev/null || true; wait "$COUNTERPID" || true; COUNTERPID=""
    [ -s "$STATE/counters.csv" ] || { log "COUNTERS: no counters written (is dotnet-counters installed? dotnet tool install -g dotnet-counters)"; touch "$STATE/counters.csv"; }
    awk -F, -v n="$TOTAL" -v unit=alert -f "$ROOT/gateway/bench/counters.awk" "$STATE/counters.csv" >&2
  fi
  [ -n "${PERFREC:-}" ] && { [ -n "${PERF_SECONDS:-}" ] || kill -INT "$PERFREC" 2>/dev/null || true; wait "$PERFREC" || true; PERFREC=""; }
  if [ -n "${THREADS:-}" ]; then  # THREADS=1: gateway CPU seconds per thread name, and its file/socket writes and reads, to stderr
    awk -v n="$TOTAL" -v a="$io0" -v b="$io1" 'BEGIN{split(a,x," "); split(b,y," ");
      printf "IO per alert: %.1f write calls, %.1f KiB written, %.1f read calls, %.1f KiB read (files and sockets)\n", (y[1]-x[1])/n, (y[2]-x[2])/1024/n, (y[3]-x[3])/n, (y[4]-x[4])/1024/n}' >&2
    awk -v n="$TOTAL" -v a="$cs0" -v b="$cs1" 'BEGIN{split(a,x," "); split(b,y," ");
      printf "CSWITCH per alert: %.2f voluntary, %.2f involuntary context switches (all threads)\n", (y[1]-x[1])/n, (y[2]-x[2])/n}' >&2
    awk -v n="$TOTAL" -v a="$commits0" -v b="$commits1" -v s0="$csum0" -v s1="$csum1" 'BEGIN{printf "SPOOL %d group commits in the timed run, %.1f alerts per commit, %.2f ms per commit (BEGIN to durable COMMIT)\n", b-a, n/(b-a > 0 ? b-a : 1), (s1-s0)*1000/(b-a > 0 ? b-a : 1)}' >&2
    # CPU of each thread during the timed run (threads that ended meanwhile are not seen), summed by thread name
    awk -F'\t' 'NR==FNR{c0[$1]=$3; next} {c[$2]+=$3-c0[$1]} END{for (k in c) if (c[k]>0.05) printf "THREAD %-20s %.2f s\n", k, c[k]}' "$STATE/threads0" "$STATE/threads1" >&2 || true
  fi
  # The spool's WAL file after the run: its longest (SQLite cuts it back only to Spool:WalLimitMegabytes, at a restart).
  WAL_MIB=$(( $(stat -c %s "$STATE/data/spool.db-wal" 2>/dev/null || echo 0) / 1048576 ))
  [ -n "${INGEST_ONLY:-}" ] || E2E_RATE=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
  [ -n "${TRACER:-}" ] && { wait "$TRACER" || true; TRACER=""; }   # the trace is written after its window ends
  [ "${SSE:-0}" -gt 0 ] && { pkill -P $$ -x curl || true; echo "SSE $SSE event-stream client(s): $(grep -c '^event:' "$STATE/sse.out") events" >&2; }
  if [ -n "${INGEST_ONLY:-}" ]; then
    echo "RESULT ingest $out phase=ingest-only gateway_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') gateway_cpu_us_per_alert=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$TOTAL" 'BEGIN{printf "%.0f", (b-a)*1e6/n}') gateway_rss_mib=$(( $(rss_kib "$GW") / 1024 )) spool_wal_mib=$WAL_MIB load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
  else
  echo "RESULT ingest $out bystanders=$BYSTANDERS receipts=$RECEIPTS e2e_smtp_sink_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') e2e_smtp_sink_rate=$E2E_RATE gateway_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') gateway_cpu_us_per_alert=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$TOTAL" 'BEGIN{printf "%.0f", (b-a)*1e6/n}') gateway_rss_mib=$(( $(rss_kib "$GW") / 1024 )) spool_wal_mib=$WAL_MIB"
  fi
  [ "$BYSTANDERS" -gt 0 ] && { exec 8>&-; wait "$BYST" || true; }
  stop_gateway
fi

if [[ " $STAGES " == *" mosquitto "* ]]; then
  start_mosquitto
  warm_up "$EXT_PORT" nosink
  cpu0=$(cpu_s "$MOSQ")
  out=$(dotnet "$LOADGEN" publish --port "$EXT_PORT" --devices "$DEVICES" --msgs "$MSGS_PER" --inflight "$INFLIGHT" --secret "$SECRET" --tag i)
  cpu1=$(cpu_s "$MOSQ")
  echo "RESULT mosquitto $out mosquitto_cpu_us_per_msg=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$((DEVICES * MSGS_PER))" 'BEGIN{printf "%.0f", (b-a)*1e6/n}') load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
  stop_mosquitto
fi

if [[ " $STAGES " == *" latency "* ]]; then
  RATE=${LAT_RATE:-$(( ${E2E_RATE:-2000} / 10 ))}
  LAT_MSGS=$(( RATE * 20 / DEVICES + 1 ))   # about 20 s of load
  write_config "$STATE/latency.json" "$DEVICES" "$SINK_PORT"
  start_gateway "$STATE/latency.json"
  # Warm-up outside the timed window, as for ingest: every device connects and 10 alerts per device go all the way
  # to the sink at the same rate, so the JIT has compiled the path the measured alerts take.
  dotnet "$LOADGEN" publish --port "$PORT" --devices "$DEVICES" --msgs 10 --inflight "$INFLIGHT" --secret "$SECRET" --rate "$RATE" --sink-port "$SINK_PORT" --tag lw >/dev/null
  out=$(dotnet "$LOADGEN" publish --port "$PORT" --devices "$DEVICES" --msgs "$LAT_MSGS" --inflight "$INFLIGHT" --secret "$SECRET" --rate "$RATE" --sink-port "$SINK_PORT" --tag l)
  echo "RESULT latency rate=$RATE/s $out"
  stop_gateway
fi

if [[ " $STAGES " == *" external "* ]]; then
  start_mosquitto
  TOTAL=$((DEVICES * MSGS_PER))
  write_config "$STATE/external.json" "$DEVICES" "$SINK_PORT"
  python3 - "$STATE/external.json" "$EXT_PORT" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["Mqtt"] = {"Mode": "external", "External": {"Host": "127.0.0.1", "Port": int(sys.argv[2]), "ClientId": "edgemail-gateway-bench"}}
cfg["Logging"]["LogLevel"]["EdgeMail.Gateway.Ingest.ExternalBrokerClient"] = "Information"
json.dump(cfg, open(sys.argv[1], "w"))
PY
  rm -rf "$STATE/data"
  dotnet "$DLL" --config "$STATE/external.json" > "$STATE/gateway.log" 2>&1 &
  GW=$!
  for _ in $(seq 1 300); do grep -q "Connected to the external MQTT broker" "$STATE/gateway.log" && break; sleep 0.1; done
  warm_up "$EXT_PORT"
  start_sink "$TOTAL"
  cpu0=$(cpu_s "$GW")
  t0=$EPOCHREALTIME
  out=$(dotnet "$LOADGEN" publish --port "$EXT_PORT" --devices "$DEVICES" --msgs "$MSGS_PER" --inflight "$INFLIGHT" --secret "$SECRET" --tag i)
  wait "$SINKPID"; SINKPID=""
  t1=$EPOCHREALTIME
  cpu1=$(cpu_s "$GW")
  echo "RESULT external mosquitto_$out e2e_smtp_sink_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') e2e_smtp_sink_rate=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}') gateway_cpu_us_per_alert=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$TOTAL" 'BEGIN{printf "%.0f", (b-a)*1e6/n}')"
  stop_gateway
  stop_mosquitto
fi

if [[ " $STAGES " == *" cluster "* ]]; then
  command -v mosquitto >/dev/null || { log "mosquitto missing: apt-get install mosquitto"; exit 1; }
  command -v smtp-sink >/dev/null || { log "smtp-sink missing: apt-get install postfix"; exit 1; }
  MSGS=${CLUSTER_MSGS_PER:-200}
  TOTAL=$((DEVICES * MSGS))
  chmod 755 "$STATE"   # the PostgreSQL cluster runs as nobody, mosquitto drops to its own user
  PG_STARTED=1
  CONN=$(TMPDIR="$STATE" bash "$ROOT/.ci/postgres.sh" start)
  PGPORT_=$(sed -E 's/.*Port=([0-9]+).*/\1/' <<<"$CONN")
  PMPID=$(head -n1 "$STATE/edgemail-test-postgres/data/postmaster.pid")
  pg_cpu() { local t=0 c; for c in $PMPID $(pgrep -P "$PMPID"); do t=$(awk -v t="$t" '{printf "%.2f", t + ($14+$15)/100}' "/proc/$c/stat" 2>/dev/null || echo "$t"); done; echo "$t"; }
  for N in ${CLUSTER_INSTANCES:-1 2 3}; do
    EXT_PORT=$(( ${EXT_PORT_BASE:-18993} + N ))   # a fresh broker per row, on a port of its own
    psql -q -h 127.0.0.1 -p "$PGPORT_" -U edgemail -d postgres -c "CREATE SCHEMA bench_n$N" >/dev/null
    start_mosquitto "$STATE/mosq$N"
    GWS=""
    for i in $(seq 1 "$N"); do
      write_config "$STATE/cluster$N-$i.json" "$DEVICES" "$SINK_PORT"
      python3 - "$STATE/cluster$N-$i.json" "$EXT_PORT" "$i" "$CONN;Search Path=bench_n$N" "$STATE/data$N-$i" <<'PY'
import json, sys
path, port, i, conn, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
cfg = json.load(open(path))
cfg["DataDirectory"] = data
cfg["Mqtt"] = {"Mode": "external", "External": {"Host": "127.0.0.1", "Port": port, "ClientId": f"edgemail-bench-{i}", "SharedGroup": "bench"}}
cfg["Spool"] = {"Provider": "Postgres", "ConnectionString": conn}
cfg["Console"] = {"Port": 0}  # several instances on one machine
cfg["Logging"]["LogLevel"]["EdgeMail.Gateway.Ingest.ExternalBrokerClient"] = "Information"
json.dump(cfg, open(path, "w"))
PY
      dotnet "$DLL" --config "$STATE/cluster$N-$i.json" > "$STATE/gateway$N-$i.log" 2>&1 &
      GWS="$GWS $!"
      for _ in $(seq 1 300); do grep -q "Connected to the external MQTT broker" "$STATE/gateway$N-$i.log" && break; sleep 0.1; done
    done
    warm_up "$EXT_PORT"
    start_sink "$TOTAL"
    declare -A c0=(); for g in $GWS; do c0[$g]=$(cpu_s "$g"); done
    m0=$(cpu_s "$MOSQ"); p0=$(pg_cpu)
    t0=$EPOCHREALTIME
    out=$(dotnet "$LOADGEN" publish --port "$EXT_PORT" --devices "$DEVICES" --msgs "$MSGS" --inflight "$INFLIGHT" --secret "$SECRET" --tag i)
    for _ in $(seq 1 6000); do kill -0 "$SINKPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SINKPID" 2>/dev/null; then
      log "cluster $N: smtp-sink did not get all $TOTAL mails in 10 minutes"; tail -n 20 "$STATE"/gateway"$N"-*.log >&2; exit 1
    fi
    wait "$SINKPID" || true; SINKPID=""
    t1=$EPOCHREALTIME
    per=""; sum=0
    for g in $GWS; do d=$(awk -v a="${c0[$g]}" -v b="$(cpu_s "$g")" 'BEGIN{printf "%.1f", b-a}'); per="$per${per:+,}$d"; sum=$(awk -v s="$sum" -v d="$d" 'BEGIN{print s+d}'); done
    m1=$(cpu_s "$MOSQ"); p1=$(pg_cpu)
    echo "RESULT cluster instances=$N alerts=$TOTAL mosquitto_$out e2e_smtp_sink_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') e2e_smtp_sink_rate=$(awk -v n="$TOTAL" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}') gateway_cpu_s_each=$per gateway_cpu_us_per_alert_total=$(awk -v s="$sum" -v n="$TOTAL" 'BEGIN{printf "%.0f", s*1e6/n}') mosquitto_cpu_s=$(awk -v a="$m0" -v b="$m1" 'BEGIN{printf "%.1f", b-a}') postgres_cpu_s=$(awk -v a="$p0" -v b="$p1" 'BEGIN{printf "%.1f", b-a}') load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    for g in $GWS; do kill "$g" 2>/dev/null || true; wait "$g" 2>/dev/null || true; done
    GWS=""
    stop_mosquitto
  done
fi

if [[ " $STAGES " == *" memory "* ]]; then
  write_config "$STATE/memory.json" "$IDLE_DEVICES" "$SINK_PORT"
  t0=$(date +%s%N)
  start_gateway "$STATE/memory.json"
  listen_ms=$(( ($(date +%s%N) - t0) / 1000000 ))   # to the log line, read every 0.1 s
  sleep "$MEM_SETTLE"   # the console, the spool and the rest start after the broker listens: "before" is the started gateway
  before=$(rss_kib "$GW")
  start_cpu_ms=$(awk -v s="$(cpu_s "$GW")" 'BEGIN { print int(s * 1000) }')
  mkfifo "$STATE/idle.in"
  dotnet "$LOADGEN" idle --port "$PORT" --devices "$IDLE_DEVICES" --secret "$SECRET" --receipts "$IDLE_RECEIPTS" < "$STATE/idle.in" > "$STATE/idle.out" &
  IDLE=$!
  exec 9> "$STATE/idle.in"
  for _ in $(seq 1 6000); do grep -q connected "$STATE/idle.out" && break; kill -0 "$IDLE" 2>/dev/null || break; sleep 0.1; done
  sleep 5   # let the gateway settle after the connect storm before reading RSS
  after=$(rss_kib "$GW")
  conns=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
  echo "RESULT memory idle_devices=$IDLE_DEVICES receipts=$IDLE_RECEIPTS established=$conns $(cat "$STATE/idle.out") start_listen_ms=$listen_ms start_cpu_ms=$start_cpu_ms gateway_rss_before_mib=$((before / 1024)) gateway_rss_after_mib=$((after / 1024)) bytes_per_connection=$(( (after - before) * 1024 / (conns > 0 ? conns : 1) ))"
  exec 9>&-
  wait "$IDLE" || true
  stop_gateway
fi

if [[ " $STAGES " == *" peers "* ]]; then
  (cd "$PEERS_DIR" && MSGS=50000 SIZE=200 RUNS=1 ./mosquitto_qos1.sh 2>&1 | grep -E "^run|min" | sed 's/^/RESULT peer mosquitto_qos1 /')
  (cd "$PEERS_DIR" && MSGS=5000 SESSIONS=20 SIZE=1024 REUSE=0 RUNS=1 ./postfix_relay.sh 2>&1 | grep -E "^run|min" | sed 's/^/RESULT peer postfix_relay /')
fi

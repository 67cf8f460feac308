#!/usr/bin/env bash
# smtp-ingest.sh -- SMTP ingest benchmark: the EdgeMail gateway against Debian's Postfix, same load, same run.
#   smtp-source (SESSIONS parallel sessions, MSGS messages of SIZE bytes, postfix package)
#     --> gateway SMTP ingest 127.0.0.1:PORT (Release build, plain LAN endpoint, 127.0.0.1 allow-listed as device
#         bench-1, SQLite spool with synchronous=FULL: 250 only after the fsync'd commit)
#     --> smarthost relay --> smtp-sink -M MSGS 127.0.0.1:SINK_PORT
#   then the same smtp-source load through ../shared/peers/postfix_relay.sh (Postfix with its default durable
#   queue, relayhost = smtp-sink), interleaved run by run.
# Reports per run: accept = smtp-source start -> exit (every message answered 250), e2e = start -> smtp-sink exit.
# Knobs: MSGS=20000 SESSIONS=20 SIZE=1024 RUNS=3 PORT=12625 SINK_PORT=12626 RELEASE_DIR=/tmp/art-gw-bench
#        WARM=0 (messages sent first, untimed: WARM=2000 measures the steady state rather than the JIT's first minutes)
#        PERF=file.data (perf record -g of the gateway in each run, read with gateway/bench/perf-stages.py)
#        STAT=1 (system calls, context switches and CPU migrations of the gateway per message, from perf stat over the
#        same window as the CPU figure: counts that the machine's other load does not change, unlike CPU time)
#        COUNTERS=1 (bytes allocated, GCs, thread-pool work items per message over the same window, from the runtime's
#        counters: dotnet-counters global tool)
#        TRACE=file.nettrace (dotnet-trace of the gateway over the same window, `collect --profile gc-verbose` unless
#        TRACE_CMD says otherwise: sampled allocations with their types and stacks)
#        POSTFIX=1 (0 skips Postfix) PEERS=/work/shared/peers. Loopback only. Postfix part needs root.
#        QUIET_MAX_BUSY=25 QUIET_WAIT=60 (each gateway run waits until the machine is this quiet, for this long at most)
set -euo pipefail
PATH="$PATH:$HOME/.dotnet/tools"   # dotnet-counters, dotnet-trace (global tools)
MSGS=${MSGS:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
RUNS=${RUNS:-3}
WARM=${WARM:-0}
PORT=${PORT:-12625}
SINK_PORT=${SINK_PORT:-12626}
POSTFIX=${POSTFIX:-1}
ART=${RELEASE_DIR:-/tmp/art-gw-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${PEERS:-$(cd "$ROOT/.." && pwd)/shared/peers}
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null || { echo "needs smtp-source and smtp-sink: apt-get install postfix" >&2; exit 1; }
dotnet build "$ROOT/gateway/EdgeMail.Gateway" -c Release --artifacts-path "$ART" -v q -nologo >/dev/null
DLL="$ART/bin/EdgeMail.Gateway/release/EdgeMail.Gateway.dll"
HASH=$(printf '%s' bench-secret | dotnet "$DLL" hash-secret)
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'); msgs=$MSGS sessions=$SESSIONS size=$SIZE"

# A run that stops half-way (set -e: smtp-sink could not start, say) must not leave its gateway or sink holding the
# ports for the next run: both are ended by their process ids on the way out.
GW_PID="" SINK_PID=""
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null || true
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
}
trap cleanup EXIT

# Each gateway run starts on a quiet machine, as the peer scripts' runs do (their quiet_gate): it waits until the
# machine is at most QUIET_MAX_BUSY % busy over a second, for QUIET_WAIT s at most, and its line says how busy it was.
QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-25}
QUIET_WAIT=${QUIET_WAIT:-60}
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }  # busy, all (every CPU)
busy_now() {  # percent of all CPUs busy over the next second
  local a b
  a=$(cpu_ticks); sleep 1; b=$(cpu_ticks)
  awk -v a="$a" -v b="$b" 'BEGIN{split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0)}'
}
quiet_gate() {
  local until=$((SECONDS + QUIET_WAIT))
  while :; do
    BUSY_BEFORE=$(busy_now)
    if [ "$BUSY_BEFORE" -le "$QUIET_MAX_BUSY" ] || [ "$SECONDS" -ge "$until" ]; then return 0; fi
  done
}

gateway_run() {
  local run=$1 state gw sink start acc_end e2e_end cpu
  quiet_gate
  state=$(mktemp -d /var/tmp/edgemail-smtp-bench.XXXXXX)
  cat > "$state/edgemail.json" <<JSON
{ "DataDirectory": "$state/data", "Mqtt": { "Port": 0 }, "Storm": { "Window": "00:00:00" }, "Console": { "Port": $((PORT + 2)) },
  "Logging": { "LogLevel": { "Default": "Warning", "EdgeMail.Gateway.Ingest.Smtp.SmtpIngest": "Information" } },
  "Sender": { "Address": "alerts@edgemail.test", "DisplayName": "EdgeMail bench", "Hostname": "gw.edgemail.test" },
  "Users": { "ops": { "Name": "Ops", "Email": "ops@sink.edgemail.test" } },
  "Devices": { "bench-1": { "Secret": "$HASH", "Name": "Bench" } },
  "Routes": [ { "Devices": "*", "Codes": "*", "MinSeverity": "info", "To": [ "ops" ] } ],
  "Relay": { "Mode": "Smarthost", "Host": "127.0.0.1", "Port": $SINK_PORT, "Security": "None", "Concurrency": 8 },
  "Smtp": { "Endpoints": [ { "BindAddress": "127.0.0.1", "Port": $PORT, "Tls": "None" } ],
            "AllowedSources": [ { "Network": "127.0.0.1", "Device": "bench-1" } ],
            "MaxConnectionsPerSource": $((SESSIONS + 16)), "MessagesPerMinutePerDevice": 0, "MessagesPerMinutePerSource": 0 } }
JSON
  if [ -n "${PERF:-}" ]; then  # as in gateway-bench.sh: JIT frames resolvable by perf
    DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 DOTNET_ReadyToRun=0 dotnet "$DLL" --config "$state/edgemail.json" > "$state/gateway.log" 2>&1 &
  else
    dotnet "$DLL" --config "$state/edgemail.json" > "$state/gateway.log" 2>&1 &
  fi
  gw=$!
  GW_PID=$gw
  for _ in $(seq 1 200); do grep -q "SMTP submission listening" "$state/gateway.log" && break; kill -0 "$gw" || { cat "$state/gateway.log"; exit 1; }; sleep 0.05; done
  smtp-sink -u nobody -M "$((MSGS + WARM))" "127.0.0.1:$SINK_PORT" 1024 & sink=$!
  SINK_PID=$sink
  if [ "$WARM" -gt 0 ]; then  # WARM=N messages first, untimed, so that the JIT has compiled the path (and waits for the relay)
    smtp-source -s "$SESSIONS" -m "$WARM" -l "$SIZE" -f bench@lan.edgemail.test -t ops@sink.edgemail.test -S "gateway warm-up" -M bench-client.edgemail.test "127.0.0.1:$PORT"
    for _ in $(seq 1 600); do
      sent=$(curl -s -H "Authorization: Bearer $(cat "$state/data/cli-api-key")" "http://127.0.0.1:$((PORT + 2))/metrics" \
        | awk '/^edgemail_mail_recipients_total\{.*outcome="sent"/{s+=$NF} END{print s+0}')
      [ "${sent%.*}" -ge "$WARM" ] && break
      sleep 0.1
    done
  fi
  cpu0=$(awk '{print ($14+$15)/100}' "/proc/$gw/stat")
  perfrec=""
  if [ -n "${PERF:-}" ]; then  # PERF=file.data: perf record -g of the gateway from the first message until smtp-sink has every mail (run N: file.data.N)
    perf record -F "${PERF_FREQ:-499}" -g -p "$gw" -o "$PERF.$run" >/dev/null 2>&1 &
    perfrec=$!
  fi
  statrec=""
  if [ -n "${STAT:-}" ]; then
    perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -x, -p "$gw" -o "$state/perf-stat" >/dev/null 2>&1 &
    statrec=$!
  fi
  counterrec=""
  if [ -n "${COUNTERS:-}" ]; then
    dotnet-counters collect -p "$gw" --counters System.Runtime --format csv -o "$state/counters.csv" --refresh-interval 1 >/dev/null 2>&1 &
    counterrec=$!
    for _ in $(seq 1 50); do [ -s "$state/counters.csv" ] && break; sleep 0.1; done
  fi
  tracerec=""
  if [ -n "${TRACE:-}" ]; then
    # A background job of a script ignores SIGINT, which is how dotnet-trace is told to finish its file: undone here.
    # shellcheck disable=SC2086 # TRACE_CMD is a command line
    (trap - INT; exec dotnet-trace ${TRACE_CMD:-collect --profile gc-verbose} -p "$gw" -o "$TRACE" >/dev/null 2>&1) &
    tracerec=$!
    for _ in $(seq 1 50); do [ -s "$TRACE" ] && break; sleep 0.1; done
  fi
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$MSGS" -l "$SIZE" -f bench@lan.edgemail.test -t ops@sink.edgemail.test -S "gateway bench" -M bench-client.edgemail.test "127.0.0.1:$PORT"
  acc_end=$(date +%s.%N)
  wait "$sink"
  e2e_end=$(date +%s.%N)
  [ -n "$perfrec" ] && { kill -INT "$perfrec" 2>/dev/null; wait "$perfrec" || true; }
  if [ -n "$statrec" ]; then
    kill -INT "$statrec" 2>/dev/null; wait "$statrec" || true
    awk -F, -v r="$run" -v n="$MSGS" '$3 ~ /context-switches|cpu-migrations|sys_enter/ {v[$3]=$1}
      END {printf "gateway run %d per message: %.1f system calls, %.2f context switches, %.2f CPU migrations\n", r,
        v["raw_syscalls:sys_enter"]/n, v["context-switches"]/n, v["cpu-migrations"]/n}' "$state/perf-stat"
  fi
  [ -n "$tracerec" ] && { kill -INT "$tracerec" 2>/dev/null; wait "$tracerec" || true; }
  if [ -n "$counterrec" ]; then
    sleep 1.5   # the last interval is written when it ends
    kill -TERM "$counterrec" 2>/dev/null || true; wait "$counterrec" || true
    [ -s "$state/counters.csv" ] || { echo "COUNTERS: none written (dotnet tool install -g dotnet-counters)"; touch "$state/counters.csv"; }
    awk -F, -v n="$MSGS" -v unit=message -f "$ROOT/gateway/bench/counters.awk" "$state/counters.csv" | sed "s/^/gateway run $run /"
  fi
  cpu_all=$(awk '{print ($14+$15)/100}' "/proc/$gw/stat")
  cpu=$(awk -v a="$cpu_all" -v c0="$cpu0" 'BEGIN{print a - c0}')
  kill "$gw"; wait "$gw" 2>/dev/null || true
  GW_PID="" SINK_PID=""
  awk -v r="$run" -v s="$start" -v a="$acc_end" -v e="$e2e_end" -v n="$MSGS" -v c="$cpu" -v t="$cpu_all" -v q="$BUSY_BEFORE" 'BEGIN{
    printf "gateway run %d: accepted %d in %.2f s = %.0f msgs/s; at smtp-sink after %.2f s = %.0f msgs/s end-to-end; gateway CPU %.1f s (%.0f us/msg) from the first message, %.1f s (%.0f us/msg) with its start; machine %d%% busy before\n",
      r, n, a-s, n/(a-s), e-s, n/(e-s), c, c*1e6/n, t, t*1e6/n, q }'
  rm -rf "$state"
}

for run in $(seq 1 "$RUNS"); do
  gateway_run "$run"
  if [ "$POSTFIX" = 1 ]; then
    MSGS=$MSGS SESSIONS=$SESSIONS SIZE=$SIZE RUNS=1 QUIET_MAX_BUSY=${QUIET_MAX_BUSY:-100} bash "$PEERS/postfix_relay.sh" 2>/dev/null | grep -E '^run 1:' | sed "s/^run 1:/postfix run $run:/"
  fi
done

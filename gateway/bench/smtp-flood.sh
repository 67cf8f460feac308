#!/usr/bin/env bash
# smtp-flood.sh -- slow-client flood against the gateway's SMTP listener.
#   CONNS idle clients (from 127.0.0.1) connect, read the 220 greeting and then say nothing (as a slowloris would);
#   measures connections per second (connect -> greeting, all clients at once), gateway RSS before and with the
#   idle connections (KiB per connection), and -- while they are all held open -- how long a well-behaved device
#   (from 127.0.0.2, allow-listed) needs for a whole SMTP transaction (connect .. 250 after spool commit).
# Knobs: CONNS=5000 PORT=12725 RELEASE_DIR=/tmp/art-gw-bench. Loopback only.
set -euo pipefail
CONNS=${CONNS:-5000}
PORT=${PORT:-12725}
ART=${RELEASE_DIR:-/tmp/art-gw-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ulimit -n 20000
dotnet build "$ROOT/gateway/EdgeMail.Gateway" -c Release --artifacts-path "$ART" -v q -nologo >/dev/null
DLL="$ART/bin/EdgeMail.Gateway/release/EdgeMail.Gateway.dll"
HASH=$(printf '%s' bench-secret | dotnet "$DLL" hash-secret)
STATE=$(mktemp -d /var/tmp/edgemail-smtp-flood.XXXXXX)
cat > "$STATE/edgemail.json" <<JSON
{ "DataDirectory": "$STATE/data", "Mqtt": { "Port": 0 },
  "Logging": { "LogLevel": { "Default": "Warning", "EdgeMail.Gateway.Ingest.Smtp.SmtpIngest": "Information" } },
  "Users": { "ops": { "Name": "Ops", "Email": "ops@sink.edgemail.test" } },
  "Devices": { "good-1": { "Secret": "$HASH" } },
  "Smtp": { "Endpoints": [ { "BindAddress": "127.0.0.1", "Port": $PORT, "Tls": "None" } ],
            "AllowedSources": [ { "Network": "127.0.0.2", "Device": "good-1" } ],
            "MaxConnections": $((CONNS + 100)), "MaxConnectionsPerSource": $((CONNS + 10)), "CommandTimeout": "00:10:00", "SessionTimeout": "00:20:00" } }
JSON
dotnet "$DLL" --config "$STATE/edgemail.json" > "$STATE/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true; rm -rf "$STATE"' EXIT
for _ in $(seq 1 200); do grep -q "SMTP submission listening" "$STATE/gateway.log" && break; sleep 0.05; done
echo "machine: $(nproc) CPUs, $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'); conns=$CONNS"
python3 - "$PORT" "$CONNS" "$GW" <<'PY'
import selectors, socket, sys, time, smtplib
port, n, gw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss_kib():
    for line in open(f"/proc/{gw}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
def good_device():
    t = time.perf_counter()
    s = smtplib.SMTP(source_address=("127.0.0.2", 0)); s.connect("127.0.0.1", port); s.ehlo("good.device")
    s.sendmail("good@lan.test", ["ops@sink.edgemail.test"], b"Subject: still served\r\n\r\nok\r\n"); s.quit()
    return time.perf_counter() - t
good_device()                      # warm-up (JIT) outside the measurement
base = rss_kib(); idle_good = good_device()
sel = selectors.DefaultSelector(); socks = []
t0 = time.perf_counter()
for i in range(n):
    c = socket.socket(); c.setblocking(False); c.connect_ex(("127.0.0.1", port)); sel.register(c, selectors.EVENT_READ); socks.append(c)
greeted = 0; refused = 0
while greeted + refused < n and time.perf_counter() - t0 < 120:
    for key, _ in sel.select(timeout=1):
        data = key.fileobj.recv(512)
        if data.startswith(b"220"): greeted += 1
        else: refused += 1
        sel.unregister(key.fileobj)
t1 = time.perf_counter()
time.sleep(1.0)                     # let the server settle its buffers before reading RSS (a measurement pause, not synchronisation)
flood = rss_kib()
lat = sorted(good_device() for _ in range(5))
print(f"flood: {greeted} greeted, {refused} refused/closed of {n} in {t1-t0:.2f} s = {greeted/(t1-t0):.0f} connections/s")
print(f"gateway RSS: {base/1024:.1f} MiB before, {flood/1024:.1f} MiB with {greeted} idle connections = {(flood-base)/max(greeted,1):.1f} KiB per idle connection")
print(f"well-behaved device, full SMTP transaction incl. spool commit: {idle_good*1000:.0f} ms before the flood; during it median {lat[2]*1000:.0f} ms, max {lat[-1]*1000:.0f} ms (5 runs)")
for c in socks: c.close()
PY

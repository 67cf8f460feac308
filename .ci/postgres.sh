#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for benchmarks and manual runs: Debian's postgresql, initdb'd in a temporary
# directory, run by an unprivileged user (PostgreSQL refuses to run as root), on 127.0.0.1 and a port the OS had free.
#
#   .ci/postgres.sh start   prints the connection string and writes it to ${TMPDIR:-/tmp}/edgemail-test-postgres/connection
#   .ci/postgres.sh stop    stops the cluster and removes its directory
#
# The tests need none of this: they start a cluster of their own the same way (tests/EdgeMail.Testing/TestPostgres.cs).
# To point them at this one (or any other), export EDGEMAIL_TEST_POSTGRES="$(.ci/postgres.sh start)".
set -euo pipefail
state="${TMPDIR:-/tmp}/edgemail-test-postgres"
conn_file="$state/connection"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/initdb" ] || { echo "postgres.sh: no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql" >&2; exit 1; }
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  run_as=(runuser -u nobody --)
fi

case "${1:-}" in
start)
  if [ -f "$conn_file" ] && [ -f "$state/data/postmaster.pid" ] && "${run_as[@]}" "$bin/pg_ctl" -D "$state/data" status >/dev/null 2>&1; then
    cat "$conn_file"; exit 0
  fi
  rm -rf "$state"
  mkdir -p "$state"
  [ "$(id -u)" -eq 0 ] && chown nobody "$state"
  chmod 700 "$state"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${run_as[@]}" "$bin/initdb" -D "$state/data" -U edgemail --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 \
    || { cat "$state/initdb.log" >&2; exit 1; }
  cat >>"$state/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$state'
max_connections = 300
shared_buffers = 128MB
fsync = on
synchronous_commit = on
log_min_messages = warning
CONF
  "${run_as[@]}" "$bin/pg_ctl" -D "$state/data" -l "$state/server.log" -w -t 60 start >/dev/null \
    || { cat "$state/server.log" >&2; exit 1; }
  echo "Host=127.0.0.1;Port=$port;Username=edgemail;Database=postgres" >"$conn_file"
  chmod 644 "$conn_file"
  cat "$conn_file"
  ;;
stop)
  if [ -d "$state/data" ]; then
    "${run_as[@]}" "$bin/pg_ctl" -D "$state/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$state"
  ;;
*)
  echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# compare.sh -- the gateway's CPU per alert at two commits, run alternately on this machine and paired.
#
#   gateway/bench/compare.sh BASE [OTHER]        e.g.  gateway/bench/compare.sh main~3 HEAD
#
# One run of gateway-bench.sh moves by about ±40 µs per alert on the project VM with nothing changed, more than most
# single changes; and within a pair, the run that goes second tends to differ from the first. So each commit is
# checked out into a worktree of its own and built into its own artifacts, the two are run alternately PAIRS times,
# and which goes first alternates from pair to pair. Each run is that commit's own gateway-bench.sh with BENCH
# (default: the ingest stage in its steady state, with allocation counters).
# Prints every run's line, then per commit the mean CPU per alert (and KiB allocated per alert, from COUNTERS), and
# the mean of the pairs' differences (OTHER - BASE) with its standard error: a difference within two standard errors
# of zero is not one this many pairs can show.
# Knobs: PAIRS=5  BENCH="STAGES=ingest WARM_PER=400 COUNTERS=1" (NAME=value words, no spaces inside a value)
#        KEEP=0 (1 keeps the worktrees and their builds)
# OTHER defaults to HEAD; WORKTREE as either side means this checkout as it is, uncommitted changes included.
set -euo pipefail
BASE=${1:?usage: compare.sh BASE [OTHER]}
OTHER=${2:-HEAD}
PAIRS=${PAIRS:-5}
BENCH=${BENCH:-STAGES=ingest WARM_PER=400 COUNTERS=1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/edgemail-compare.XXXXXX)
PEERS_DIR=${PEERS_DIR:-$(cd "$ROOT/.." && pwd)/shared/peers}

cleanup() {
  [ "${KEEP:-0}" = 1 ] && { echo "kept: $WORK" >&2; return; }
  for side in base other; do
    [ -d "$WORK/$side" ] && [ ! -L "$WORK/$side" ] && git -C "$ROOT" worktree remove --force "$WORK/$side" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

checkout() {  # side rev
  if [ "$2" = WORKTREE ]; then
    ln -s "$ROOT" "$WORK/$1"
  else
    git -C "$ROOT" worktree add --detach --force "$WORK/$1" "$2" >/dev/null 2>&1 || { echo "cannot check out $2" >&2; exit 1; }
  fi
  echo "$1 = $2 ($(git -C "$WORK/$1" rev-parse --short HEAD)$( [ "$2" = WORKTREE ] && ! git -C "$ROOT" diff --quiet HEAD && echo ' + uncommitted changes'))"
}
checkout base "$BASE"
checkout other "$OTHER"

run() {  # side pair
  local line cpu counters
  # shellcheck disable=SC2086 # BENCH is a list of NAME=value words
  line=$(cd "$WORK/$1" && env $BENCH ART="$WORK/art-$1" PEERS_DIR="$PEERS_DIR" bash gateway/bench/gateway-bench.sh 2>&1 \
    | grep -E '^RESULT ingest|^COUNTERS per alert' | tr '\n' ' ')
  cpu=$(grep -oE 'gateway_cpu_us_per_alert=[0-9.]+' <<< "$line" | cut -d= -f2)
  counters=$(grep -oE '[0-9.]+ KiB allocated' <<< "$line" | cut -d' ' -f1)
  [ -n "$cpu" ] || { echo "run of $1 printed no CPU per alert: $line" >&2; exit 1; }
  echo "$2 $1 $cpu ${counters:--}" >> "$WORK/runs"
  printf 'pair %d %-5s %s µs per alert%s (load %s)\n' "$2" "$1" "$cpu" "${counters:+, $counters KiB allocated}" "$(cut -d' ' -f1 /proc/loadavg)"
}

echo "machine: $(nproc) CPUs, $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'); $PAIRS pairs of: $BENCH"
for pair in $(seq 1 "$PAIRS"); do
  if [ $((pair % 2)) = 1 ]; then run base "$pair"; run other "$pair"; else run other "$pair"; run base "$pair"; fi
done

awk '
  { cpu[$1, $2] = $3; if ($4 != "-") { kib[$2] += $4; nk[$2]++ } sum[$2] += $3; n[$2]++; pairs[$1] = 1 }
  END {
    for (p in pairs) { d = cpu[p, "other"] - cpu[p, "base"]; m++; sd += d; sdd += d * d }
    mean = sd / m; var = m > 1 ? (sdd - m * mean * mean) / (m - 1) : 0; se = sqrt(var > 0 ? var : 0) / sqrt(m)
    for (s in n) printf "%-5s mean %.0f µs per alert%s over %d runs\n", s, sum[s] / n[s], nk[s] ? sprintf(", %.1f KiB allocated", kib[s] / nk[s]) : "", n[s]
    printf "other - base: %+.0f µs per alert, standard error %.0f (%d pairs)%s\n", mean, se, m,
      (mean > 2 * se || mean < -2 * se) ? "" : ": within two standard errors of no difference"
  }' "$WORK/runs"

# counters.awk -- sums a `dotnet-counters collect --format csv` file (System.Runtime, 1 s refresh) over a run and prints
# the runtime's figures per unit of work: figures the machine's other load does not change (the pause time aside).
# Usage: awk -F, -v n=MESSAGES -v unit=alert -f counters.awk counters.csv
$3 ~ /\/ 1 sec/ { v[$3] += $5 }
$3 ~ /gc.pause.time/ { p += $5 }
END {
  printf "COUNTERS per %s: %.1f KiB allocated, %.4f gen0 + %.4f gen1 + %.4f gen2 GCs, %.1f us in GC pauses, %.2f thread-pool work items, %.3f lock contentions\n",
    unit, v["dotnet.gc.heap.total_allocated (By / 1 sec)"] / 1024 / n,
    v["dotnet.gc.collections ({collection} / 1 sec)[gc.heap.generation=gen0]"] / n,
    v["dotnet.gc.collections ({collection} / 1 sec)[gc.heap.generation=gen1]"] / n,
    v["dotnet.gc.collections ({collection} / 1 sec)[gc.heap.generation=gen2]"] / n,
    p * 1e6 / n,
    v["dotnet.thread_pool.work_item.count ({work_item} / 1 sec)"] / n,
    v["dotnet.monitor.lock_contentions ({contention} / 1 sec)"] / n
}

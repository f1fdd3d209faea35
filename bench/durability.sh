#!/usr/bin/env bash
# usage: bench/durability.sh [-d SECS] [-r RUNS] [--server-cpu N] [--load-cpu N]
#
# What keeping usages costs: keep-alive (64 connections) and pipelined (16 deep) POSTs against
# usaged with --in-memory, --sync never, --sync interval (the default) and --sync always, in
# the same run. Prints requests/s, p50/p99 and the ratio to --in-memory (medians of RUNS).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
secs=10 runs=3 server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    -r) runs=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done

ensure_tools
setup_results -durability bench/durability.sh "${args[@]}"
trap 'kill ${USAGED_PID:-} 2>/dev/null || true' EXIT

for run in $(seq 1 "$runs"); do
  for mode in in-memory never interval always; do
    rm -rf "$WORK/data"
    if [[ $mode == in-memory ]]; then flags=(--in-memory); else flags=(--data-dir "$WORK/data" --sync "$mode"); fi
    start_usaged "$server_cpu" --threads 1 "${flags[@]}"
    for scenario in keepalive pipelined; do
      script=$([[ $scenario == keepalive ]] && echo post.lua || echo pipeline.lua)
      raw="$WORK/$mode-$scenario-$run.txt"
      DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" --latency -s "$ROOT/bench/$script" \
        "http://127.0.0.1:$USAGED_PORT/api/usages" >"$raw" 2>&1
      rps=$(awk '/^Requests\/sec/ {print $2}' "$raw")
      bad=$(awk '/Non-2xx|Socket errors/ {e=1} END {print e+0}' "$raw")
      p50=$(awk '$1 == "50%" {print $2}' "$raw") p99=$(awk '$1 == "99%" {print $2}' "$raw")
      echo "$mode $scenario $rps $bad $p50 $p99" >>"$WORK/rows.txt"
      printf '  %-10s %-9s run %d: %10.0f req/s  p50 %s p99 %s%s\n' "$mode" "$scenario" "$run" "$rps" "$p50" "$p99" \
        "$([[ $bad == 0 ]] || echo '  FAILED (errors)')"
    done
    kill "$USAGED_PID"; wait "$USAGED_PID" 2>/dev/null || true
  done
done

{
  echo "| scenario | mode | req/s | vs in-memory | p50 | p99 | status |"
  echo "|---|---|---:|---:|---:|---:|---|"
  for scenario in keepalive pipelined; do
    base=$(awk -v s=$scenario '$1 == "in-memory" && $2 == s {print $3}' "$WORK/rows.txt" | median)
    for mode in in-memory never interval always; do
      rps=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s {print $3}' "$WORK/rows.txt" | median)
      p50=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s {print $5}' "$WORK/rows.txt" | tail -1)
      p99=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s {print $6}' "$WORK/rows.txt" | tail -1)
      bad=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s && $4 != 0' "$WORK/rows.txt" | wc -l)
      awk -v s="$scenario" -v m="$mode" -v r="$rps" -v b="$base" -v p50="$p50" -v p99="$p99" -v st="$([[ $bad == 0 ]] && echo ok || echo FAILED)" \
        'BEGIN {printf "| %s | %s | %.0f | %.2f | %s | %s | %s |\n", s, m, r, r / b, p50, p99, st}'
    done
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s (p50/p99: last run); results in $OUT"
! grep -q FAILED "$OUT/summary.md"

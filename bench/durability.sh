#!/usr/bin/env bash
# usage: bench/durability.sh [-d SECS] [-r RUNS] [--depth N] [--syncs N] [--data-dir DIR] [--server-cpu N] [--load-cpu N]
#
# What keeping usages costs, in one run: one worker (--threads 1) pinned to one CPU, wrk pinned
# to another; --in-memory against --sync never, interval (the default) and always; keep-alive
# POSTs at 64 and at 256 connections, and pipelined (64 connections, DEPTH deep). First it
# measures this machine's fdatasync latency where the journal lives (append + fdatasync, median
# of SYNCS) and prints beside it the closed-loop limit a client gets with --sync always:
# requests in flight ÷ sync latency. Then, per scenario and mode: requests/s and its ratio to
# --in-memory, p50/p99 (n/a pipelined: wrk times a whole batch), server CPU µs per request
# (utime+stime of every thread over the run) and its ratio to --in-memory. Medians of RUNS;
# the journal (default: in this run's results folder) is deleted after each server run.
# Results in bench/results/<UTC stamp>-<host>-durability/: summary.md, meta.txt, raw/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 runs=3 depth=16 syncs=1000 data_root="" server_cpu=0 load_cpu=1
option() {
  case $1 in
    --depth) depth=${2-} TAKES=2 ;;
    --syncs) syncs=${2-} TAKES=2 ;;
    --data-dir) data_root=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers secs runs depth syncs

ensure_tools
build --release --example fsync_latency
new_results -durability "mode=--in-memory against --sync never, interval, always" \
  "duration=${secs} s per run" "runs=$runs (medians; p50/p99 of the last run)" "pipeline depth=$depth" \
  "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 on CPU $load_cpu"
data_root=${data_root:-$WORK}
mkdir -p "$data_root"
DATA="$data_root/usaged-bench-data.$$"
AT_EXIT+=('rm -rf "$DATA"')
modes=(in-memory never interval always)
scenarios=(keepalive-64 keepalive-256 pipelined-64)

# in_flight SCENARIO: requests a closed-loop client keeps outstanding.
in_flight() {
  local conns=${1##*-}
  if [[ $1 == pipelined-* ]]; then echo $((conns * depth)); else echo "$conns"; fi
}

# The fdatasync this machine does where the journal lives.
fs="$(stat -f -c %T "$data_root") on $(df -P "$data_root" | awk 'NR == 2 {print $1}')"
sync_line=$("$RELEASE/examples/fsync_latency" --dir "$data_root" --count "$syncs")
sync_us=$(sed -n 's/.*median_us=\([0-9.]*\).*/\1/p' <<<"$sync_line")
meta "journal fs" "$fs"
meta fdatasync "$sync_line"

echo "fdatasync: $sync_line ($fs)"
for run in $(seq 1 "$runs"); do
  for mode in "${modes[@]}"; do
    rm -rf "$DATA"
    if [[ $mode == in-memory ]]; then flags=(--in-memory); else flags=(--data-dir "$DATA" --sync "$mode"); fi
    start_usaged "$server_cpu" --threads 1 "${flags[@]}"
    warm_up "$USAGED_PORT"
    for scenario in "${scenarios[@]}"; do
      wrk_run "$USAGED_PID" "$WORK/$mode-$scenario-$run.txt" "${scenario##*-}" "$(script_for "$scenario")" "$USAGED_PORT"
      row "$mode" "$scenario"
    done
    stop_usaged
    rm -rf "$DATA"
  done
done

# last COLUMN MODE SCENARIO: the value in the last run.
last() { awk -v c="$1" -v m="$2" -v s="$3" '$1 == m && $2 == s {v = $c} END {print v}' "$WORK/rows.txt"; }
{
  echo "fdatasync latency ($fs, append 128 B + fdatasync): $sync_line"
  for scenario in "${scenarios[@]}"; do
    n=$(in_flight "$scenario")
    awk -v s="$scenario" -v n="$n" -v l="$sync_us" \
      'BEGIN {printf "closed-loop limit with --sync always, %s: %d in flight ÷ %.1f µs = %.0f req/s\n", s, n, l, n / (l / 1e6)}'
  done
  echo
  table_head scenario mode "req/s>" "vs in-memory>" "limit (in flight ÷ sync)>" "p50>" "p99>" "CPU µs/req>" \
    "CPU vs in-memory>" status
  for scenario in "${scenarios[@]}"; do
    base=$(med 3 in-memory "$scenario") base_cpu=$(med 4 in-memory "$scenario")
    for mode in "${modes[@]}"; do
      rps=$(med 3 "$mode" "$scenario") cpu=$(med 4 "$mode" "$scenario")
      limit=-
      [[ $mode == always ]] && limit=$(awk -v n="$(in_flight "$scenario")" -v l="$sync_us" 'BEGIN {printf "%.0f", n / (l / 1e6)}')
      echo "| $scenario | $mode | $(num %.0f "$rps") | $(ratio "$rps" "$base") | $limit |" \
        "$(unit "$(last 6 "$mode" "$scenario")" ms) | $(unit "$(last 7 "$mode" "$scenario")" ms) |" \
        "$(num %.3f "$cpu") | $(ratio "$cpu" "$base_cpu") | $(status "$mode" "$scenario") |"
    done
  done
  echo
  awk -v a="$(med 3 always keepalive-256)" -v b="$(med 3 in-memory keepalive-256)" \
    'BEGIN {printf "--sync always at 256 connections: %.2f × in-memory req/s (target ≥ 0.8)\n", (b > 0 ? a / b : 0)}'
  for scenario in keepalive-64 pipelined-64; do
    awk -v s="$scenario" -v a="$(med 4 interval "$scenario")" -v b="$(med 4 in-memory "$scenario")" \
      'BEGIN {printf "--sync interval CPU per request, %s: %+.1f %% against in-memory (target within 5 %%)\n", s, (b > 0 ? (a / b - 1) * 100 : 0)}'
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s (p50/p99: last run); results in $OUT"
! grep -q FAILED "$OUT/summary.md"

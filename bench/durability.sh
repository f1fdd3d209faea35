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
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
secs=10 runs=3 depth=16 syncs=1000 data_root="" server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    -r) runs=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --syncs) syncs=$2; shift 2 ;;
    --data-dir) data_root=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
[[ $secs =~ ^[0-9]+$ && $runs =~ ^[0-9]+$ && $depth =~ ^[0-9]+$ && $syncs =~ ^[0-9]+$ ]] || usage
((secs > 0 && runs > 0 && depth > 0 && syncs > 0)) || usage

ensure_tools
setup_results -durability bench/durability.sh "${args[@]}"
(cd "$ROOT" && cargo build --release --quiet --example fsync_latency)
data_root=${data_root:-$WORK}
mkdir -p "$data_root"
DATA="$data_root/usaged-bench-data.$$"
trap 'kill ${USAGED_PID:-} 2>/dev/null || true; rm -rf "$DATA" "$WORK/data"' EXIT
hz=$(getconf CLK_TCK)
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
echo "$sync_line ($fs)" >"$WORK/fsync.txt"
{
  echo "fs: $fs"
  echo "pinning: usaged --threads 1 on CPU $server_cpu, wrk -t1 on CPU $load_cpu"
} >>"$OUT/machine.txt"

# run_one MODE SCENARIO: one wrk run against the server started for MODE; appends
# "mode scenario rps cpu_us bad p50 p99" to rows.txt.
run_one() {
  local mode=$1 scenario=$2 conns=${2##*-} script=post.lua
  [[ $scenario == pipelined-* ]] && script=pipeline.lua
  local raw="$WORK/$mode-$scenario-$run.txt" t0 t1
  t0=$(cpu_ticks "$USAGED_PID")
  DEPTH=$depth taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$ROOT/bench/$script" \
    "http://127.0.0.1:$USAGED_PORT/api/usages" >"$raw" 2>&1 || true
  t1=$(cpu_ticks "$USAGED_PID")
  local rps reqs bad p50=n/a p99=n/a cpu_us
  rps=$(awk '/^Requests\/sec/ {print $2}' "$raw")
  reqs=$(awk '/requests in/ {print $1}' "$raw")
  bad=$(awk '/Non-2xx|Socket errors/ {e=1} END {print e+0}' "$raw")
  [[ -n $rps && -n $reqs && $reqs != 0 ]] || { rps=0 reqs=1 bad=1; }
  if [[ $scenario != pipelined-* ]]; then
    p50=$(awk '$1 == "50%" {print $2}' "$raw") p99=$(awk '$1 == "99%" {print $2}' "$raw")
  fi
  cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.3f", d / hz * 1e6 / n}')
  echo "$mode $scenario $rps $cpu_us $bad ${p50:-n/a} ${p99:-n/a}" >>"$WORK/rows.txt"
  printf '  %-9s %-13s run %d: %10.0f req/s  p50 %-8s p99 %-8s %7s µs CPU/req%s\n' "$mode" "$scenario" "$run" \
    "$rps" "${p50:-n/a}" "${p99:-n/a}" "$cpu_us" "$([[ $bad == 0 ]] || echo '  FAILED (errors, see raw output)')"
}

echo "fdatasync: $sync_line ($fs)"
for run in $(seq 1 "$runs"); do
  for mode in "${modes[@]}"; do
    rm -rf "$DATA"
    if [[ $mode == in-memory ]]; then flags=(--in-memory); else flags=(--data-dir "$DATA" --sync "$mode"); fi
    start_usaged "$server_cpu" --threads 1 "${flags[@]}"
    # Warm-up, discarded.
    taskset -c "$load_cpu" wrk -t1 -c64 -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:$USAGED_PORT/api/usages" >/dev/null
    for scenario in "${scenarios[@]}"; do
      run_one "$mode" "$scenario"
    done
    kill "$USAGED_PID"; wait "$USAGED_PID" 2>/dev/null || true
    rm -rf "$DATA" "$WORK/data"
  done
done

# col MODE SCENARIO N: the median of column N over the runs.
col() { awk -v m="$1" -v s="$2" -v c="$3" '$1 == m && $2 == s {print $c}' "$WORK/rows.txt" | median; }
{
  echo "fdatasync latency ($fs, append 128 B + fdatasync): $sync_line"
  for scenario in "${scenarios[@]}"; do
    n=$(in_flight "$scenario")
    awk -v s="$scenario" -v n="$n" -v l="$sync_us" \
      'BEGIN {printf "closed-loop limit with --sync always, %s: %d in flight ÷ %.1f µs = %.0f req/s\n", s, n, l, n / (l / 1e6)}'
  done
  echo
  echo "| scenario | mode | req/s | vs in-memory | limit (in flight ÷ sync) | p50 | p99 | CPU µs/req | CPU vs in-memory | status |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
  for scenario in "${scenarios[@]}"; do
    base=$(col in-memory "$scenario" 3) base_cpu=$(col in-memory "$scenario" 4)
    n=$(in_flight "$scenario")
    for mode in "${modes[@]}"; do
      rps=$(col "$mode" "$scenario" 3) cpu=$(col "$mode" "$scenario" 4)
      p50=$(awk -v s="$scenario" -v m="$mode" '$1 == m && $2 == s {print $6}' "$WORK/rows.txt" | tail -1)
      p99=$(awk -v s="$scenario" -v m="$mode" '$1 == m && $2 == s {print $7}' "$WORK/rows.txt" | tail -1)
      bad=$(awk -v s="$scenario" -v m="$mode" '$1 == m && $2 == s && $5 != 0' "$WORK/rows.txt" | wc -l)
      limit=-
      [[ $mode == always ]] && limit=$(awk -v n="$n" -v l="$sync_us" 'BEGIN {printf "%.0f", n / (l / 1e6)}')
      awk -v s="$scenario" -v m="$mode" -v r="$rps" -v b="$base" -v lim="$limit" -v p50="$p50" -v p99="$p99" \
        -v c="$cpu" -v bc="$base_cpu" -v st="$([[ $bad == 0 ]] && echo ok || echo FAILED)" \
        'function ratio(x, y) {return y > 0 ? sprintf("%.2f", x / y) : "n/a"}
         BEGIN {printf "| %s | %s | %.0f | %s | %s | %s | %s | %.3f | %s | %s |\n", s, m, r, ratio(r, b), lim, p50, p99, c, ratio(c, bc), st}'
    done
  done
  echo
  awk -v a="$(col always keepalive-256 3)" -v b="$(col in-memory keepalive-256 3)" \
    'BEGIN {printf "--sync always at 256 connections: %.2f × in-memory req/s (target ≥ 0.8)\n", (b > 0 ? a / b : 0)}'
  for scenario in keepalive-64 pipelined-64; do
    awk -v s="$scenario" -v a="$(col interval "$scenario" 4)" -v b="$(col in-memory "$scenario" 4)" \
      'BEGIN {printf "--sync interval CPU per request, %s: %+.1f %% against in-memory (target within 5 %%)\n", s, (b > 0 ? (a / b - 1) * 100 : 0)}'
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s (p50/p99: last run); results in $OUT"
! grep -q FAILED "$OUT/summary.md"

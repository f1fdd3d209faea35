#!/usr/bin/env bash
# usage: bench/post.sh [-d SECS] [-c CONNS] [-r RUNS] [--depth N] [--server-cpu N] [--load-cpu N]
#
# usaged against nginx in the same run, each pinned to the same CPU, wrk pinned to another:
# keep-alive POST of the README body, and the same pipelined DEPTH deep. Prints requests/s,
# server CPU time per request and the usaged/nginx ratios (medians of RUNS runs), and keeps the
# raw output in bench/results/<UTC stamp>-<host>/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
secs=10 conns=64 runs=3 depth=16 server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    -c) conns=$2; shift 2 ;;
    -r) runs=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done

ensure_tools
setup_results "" bench/post.sh "${args[@]}"
trap 'kill ${USAGED_PID:-} ${NGINX_PID:-} 2>/dev/null || true' EXIT

# run_one NAME PID PORT SCENARIO: one wrk run; appends "name scenario rps cpu_us_per_req errors".
run_one() {
  local name=$1 pid=$2 port=$3 scenario=$4 script
  script=$([ "$scenario" = keepalive ] && echo post.lua || echo pipeline.lua)
  local raw="$WORK/$name-$scenario-$run.txt"
  local t0 t1
  t0=$(cpu_ticks "$pid")
  DEPTH=$depth taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${secs}s" -s "$ROOT/bench/$script" \
    "http://127.0.0.1:$port/api/usages" >"$raw" 2>&1
  t1=$(cpu_ticks "$pid")
  local rps reqs errors
  rps=$(awk '/^Requests\/sec/ {print $2}' "$raw")
  reqs=$(awk '/requests in/ {print $1}' "$raw")
  errors=$(awk '/Non-2xx|Socket errors/ {e=1} END {print e+0}' "$raw")
  local hz; hz=$(getconf CLK_TCK)
  local cpu_us; cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.3f", d / hz * 1e6 / n}')
  echo "$name $scenario $rps $cpu_us $errors" >>"$WORK/rows.txt"
  printf '  %-7s %-9s run %d: %10.0f req/s  %6s us CPU/req%s\n' "$name" "$scenario" "$run" "$rps" "$cpu_us" \
    "$([ "$errors" = 0 ] || echo '  ERRORS (see raw output)')"
}

start_usaged "$server_cpu" --threads 1
start_nginx "$server_cpu" 3901
# Warm-up, discarded.
taskset -c "$load_cpu" wrk -t1 -c"$conns" -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:$USAGED_PORT/api/usages" >/dev/null
taskset -c "$load_cpu" wrk -t1 -c"$conns" -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:3901/api/usages" >/dev/null
for run in $(seq 1 "$runs"); do
  for scenario in keepalive pipelined; do
    run_one usaged "$USAGED_PID" "$USAGED_PORT" "$scenario"
    run_one nginx "$NGINX_PID" 3901 "$scenario"
  done
done

{
  echo "| scenario | usaged req/s | nginx req/s | ratio | usaged CPU µs/req | nginx CPU µs/req | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for scenario in keepalive pipelined; do
    u=$(awk -v s=$scenario '$1=="usaged" && $2==s {print $3}' "$WORK/rows.txt" | median)
    n=$(awk -v s=$scenario '$1=="nginx" && $2==s {print $3}' "$WORK/rows.txt" | median)
    uc=$(awk -v s=$scenario '$1=="usaged" && $2==s {print $4}' "$WORK/rows.txt" | median)
    nc=$(awk -v s=$scenario '$1=="nginx" && $2==s {print $4}' "$WORK/rows.txt" | median)
    bad=$(awk -v s=$scenario '$2==s && $5!=0' "$WORK/rows.txt" | wc -l)
    label="$scenario (c=$conns$([ "$scenario" = pipelined ] && echo ", depth $depth"))$([ "$bad" = 0 ] || echo ' FAILED: errors')"
    awk -v l="$label" -v u="$u" -v n="$n" -v uc="$uc" -v nc="$nc" \
      'BEGIN {printf "| %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f |\n", l, u, n, u / n, uc, nc, uc / nc}'
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s; raw output in $OUT"

#!/usr/bin/env bash
# usage: bench/bulk.sh [--smoke] [-d SECS] [-r RUNS] [-c CONNS] [--depth N] [--sizes LIST] [--server-cpu N] [--load-cpu N]
#
# NDJSON bulks against single-usage POSTs in one run (issue 14; the shape of the bench-socket
# study's table: 1 MB and 10 MB bodies, with and without connection reuse). usaged runs with one
# worker (--threads 1), every thread of it pinned to --server-cpu (default 0), the loaders to
# --load-cpu (default 1), with a journal (default --sync interval, in the results folder) and,
# for comparison, --in-memory. Rows:
#   single POSTs keep-alive (wrk -t1 -cCONNS, bench/post.lua) and pipelined DEPTH deep
#   (bench/pipeline.lua); bulks of each LIST size in MB (default 1,10) of the same usage, one at
#   a time on one connection (reused) or on a new connection each (bench/bulk.py); a size past
#   16MiB raises the server's --max-bulk-body to it; and the largest size once more with two
#   clients side by side (each reusing its connection), so the server never idles between bulks.
# Each row gets a fresh server (the journal is deleted after it) and, but with --smoke, a second
# of keep-alive POSTs to warm up. Printed: usages/s, MB/s (request bytes sent, head and body),
# server CPU µs per usage (utime+stime of every thread over the row, from /proc) and the usages
# one CPU-second stores at that cost, the ratio to keep-alive single POSTs, and to the target of
# 3M usages/s on one core; medians of RUNS runs.
#   --smoke  1 run of 1 s per row, no warm-up: keeps the script working (CI)
# Results in bench/results/<UTC stamp>-<host>-bulk/: summary.md, meta.txt, raw/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=5 runs=3 conns=64 depth=16 sizes=1,10 smoke=0 server_cpu=0 load_cpu=1
option() {
  case $1 in
    --smoke) smoke=1 TAKES=1 ;;
    -c) conns=${2-} TAKES=2 ;;
    --depth) depth=${2-} TAKES=2 ;;
    --sizes) sizes=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
if ((smoke)); then secs=1 runs=1; fi
numbers secs runs conns depth
[[ $sizes =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || usage
IFS=, read -ra mbs <<<"$sizes"
TARGET_UPS=3000000
# --max-bulk-body: the default (16MiB), or the largest bulk when it is larger.
limit=$((16 << 20))
for mb in "${mbs[@]}"; do ((mb * 1000000 <= limit)) || limit=$((mb * 1000000)); done

ensure_tools
build --release
new_results -bulk "mode=$( ((smoke)) && echo smoke || echo full): NDJSON bulks against single POSTs" \
  "duration=${secs} s per row" "runs=$runs (medians)" "connections=$conns (wrk rows)" \
  "pipeline depth=$depth" "bulk sizes=$sizes MB" \
  "pinning=usaged --threads 1 (every thread) on CPU $server_cpu, wrk -t1 and bench/bulk.py on CPU $load_cpu" \
  "servers=journal (--sync interval) and --in-memory, a fresh one per row"

scenarios=(keepalive pipelined)
for mb in "${mbs[@]}"; do scenarios+=("bulk-$mb-reused" "bulk-$mb-new"); done
# The largest size again with two clients side by side: the server never waits for a bulk.
scenarios+=("bulk-${mbs[-1]}-two")

# wire_bytes PORT: the bytes of one request of bench/post.lua (wrk.format: request line, Host,
# Content-Type, Content-Length, blank line, body).
wire_bytes() {
  local body='{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
  printf 'POST /api/usages HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' \
    "$1" "${#body}" "$body" | wc -c
}

# field KEY FILE: KEY's value in bench/bulk.py's KEY=VALUE line.
field() {
  sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" "$2"
}

# measure SERVER SCENARIO: one row against the running server, appended to WORK/rows.txt as
# "SERVER SCENARIO usages/s cpu_us/usage errors MB/s" and printed.
measure() {
  local server=$1 scenario=$2 raw="$WORK/$1-$2-$run.txt" t0 t1 ups cpu errors mbps mb
  if [[ $scenario == bulk-* ]]; then
    mb=${scenario#bulk-} mb=${mb%-*}
    t0=$(cpu_ticks "$USAGED_PID")
    timeout "$((secs + 60))" taskset -c "$load_cpu" python3 "$ROOT/bench/bulk.py" "$USAGED_PORT" \
      --mb "$mb" --secs "$secs" "$([[ $scenario == *-new ]] && echo --new || echo --reuse)" \
      --streams "$([[ $scenario == *-two ]] && echo 2 || echo 1)" >"$raw" 2>&1 || true
    t1=$(cpu_ticks "$USAGED_PID")
    ups=$(field usages_s "$raw") mbps=$(field mb_s "$raw") errors=$(field errors "$raw")
    [[ -n $ups && $(field usages "$raw") != 0 ]] || ups=0 errors=1
    cpu=$(per_request "$((t1 - t0))" "$(field usages "$raw")")
  else
    wrk_run "$USAGED_PID" "$raw" "$conns" "$(script_for "$scenario")" "$USAGED_PORT"
    ups=$RPS cpu=$CPU_US errors=$ERRORS
    mbps=$(awk -v r="$RPS" -v b="$(wire_bytes "$USAGED_PORT")" 'BEGIN {printf "%.1f", r * b / 1e6}')
  fi
  echo "$server $scenario $ups $cpu $errors $mbps" >>"$WORK/rows.txt"
  printf '  %-8s %-15s run %d: %10.0f usages/s %8s MB/s %7s µs CPU/usage%s\n' "$server" "$scenario" \
    "$run" "$ups" "$mbps" "$cpu" "$([[ $errors == 0 ]] || echo "  FAILED ($errors errors, see raw output)")"
}

for run in $(seq 1 "$runs"); do
  for server in journal memory; do
    for scenario in "${scenarios[@]}"; do
      if [[ $server == memory ]]; then start_usaged "$server_cpu" --threads 1 --max-bulk-body "$limit" --in-memory
      else start_usaged "$server_cpu" --threads 1 --max-bulk-body "$limit"; fi
      ((smoke)) || warm_up "$USAGED_PORT"
      measure "$server" "$scenario"
      stop_usaged
    done
  done
done

# per_cpu_s CPU_US: usages one CPU-second of the server stores at CPU_US µs each, or n/a.
per_cpu_s() {
  awk -v c="$1" 'BEGIN {if (c ~ /^[0-9.]+$/ && c > 0) printf "%.0f", 1e6 / c; else printf "n/a"}'
}

# label SCENARIO: what a row is, for the table.
label() {
  case $1 in
    keepalive) echo "single POST, keep-alive (c=$conns) | reused" ;;
    pipelined) echo "single POST, pipelined $depth deep (c=$conns) | reused" ;;
    bulk-*)
      local mb=${1#bulk-}
      mb=${mb%-*}
      echo "bulk $mb MB ($((mb * 1000000 / 99)) lines) |" \
        "$(case $1 in *-new) echo 'new per bulk' ;; *-two) echo 'reused, 2 clients side by side' ;; *) echo reused ;; esac)" ;;
  esac
}

{
  table_head scenario connection "usages/s>" "MB/s>" "CPU µs/usage>" "usages per CPU-s>" "× keep-alive>" "÷ 3M>" \
    "in-memory usages/s>" "in-memory CPU µs/usage>" status
  ka=$(med 3 journal keepalive)
  best=0
  for scenario in "${scenarios[@]}"; do
    u=$(med 3 journal "$scenario") m=$(med 3 memory "$scenario")
    st=ok
    [[ $(status journal "$scenario") == ok && $(status memory "$scenario") == ok ]] || st=FAILED
    if [[ $scenario == bulk-* && $st == ok ]]; then best=$(awk -v a="$best" -v b="$u" 'BEGIN {print (b > a) ? b : a}'); fi
    echo "| $(label "$scenario") | $(num %.0f "$u") | $(num %.1f "$(med 6 journal "$scenario")") |" \
      "$(num %.3f "$(med 4 journal "$scenario")") | $(per_cpu_s "$(med 4 journal "$scenario")") | $(ratio "$u" "$ka") | $(ratio "$u" "$TARGET_UPS") |" \
      "$(num %.0f "$m") | $(num %.3f "$(med 4 memory "$scenario")") | $st |"
  done
  echo
  echo "Medians of $runs runs of ${secs} s per row; usaged --threads 1 and all its threads on CPU" \
    "$server_cpu, loaders on CPU $load_cpu. Journal: --sync interval. MB/s: request bytes sent" \
    "(head and body). Bulks: one at a time per client, each answer read before the next is sent," \
    "so with one client the server idles between them (the 2-client row does not); usages per" \
    "CPU-s (10^6 / CPU µs) is what a saturated core stores."
  echo "Best bulk with the journal: $(num %.0f "$best") usages/s = $(ratio "$best" "$TARGET_UPS") × the" \
    "target of 3,000,000 on one core ($(awk -v b="$best" -v t="$TARGET_UPS" 'BEGIN {print (b >= t) ? "met" : "not met"}'))."
} | tee "$OUT/summary.md"
echo "results in $OUT"
! grep -q FAILED "$OUT/summary.md"

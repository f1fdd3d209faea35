#!/usr/bin/env bash
# usage: bench/post.sh [--keys] [-d SECS] [-c CONNS] [-r RUNS] [--depth N] [--server-cpu N] [--load-cpu N]
#
# usaged (one worker) against nginx (one worker) in the same run, each pinned to the same CPU,
# wrk pinned to another: keep-alive POST of the README body, and the same pipelined DEPTH deep.
# Prints requests/s, server CPU time per request (utime+stime of every thread and process over
# the run) and the usaged/nginx ratios, medians of RUNS runs, and the keep-alive p99 (pipelined:
# n/a, wrk times a whole batch, not a request). Results in bench/results/<UTC stamp>-<host>/:
# summary.md, meta.txt, raw/ (wrk's output; the journal is deleted).
#   --keys  usaged only, one server, the kinds taking turns, all through bench/keyed.lua: POSTs
#           with a unique Idempotency-Key each (36 characters, UUID-shaped), without one, and
#           with a unique header of the same length that no server reads (the same bytes and
#           loader work as the keyed ones). Prints req/s and CPU µs/req of each, and keyed ÷
#           unkeyed (the issue's target: CPU µs/req ≤ 1.10) and keyed ÷ same-size header (the
#           key's own cost). Results in bench/results/<UTC stamp>-<host>-keys/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 conns=64 runs=3 depth=16 keys=0 server_cpu=0 load_cpu=1
option() {
  case $1 in
    --keys) keys=1 TAKES=1 ;;
    -c) conns=${2-} TAKES=2 ;;
    --depth) depth=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers secs conns runs depth

ensure_tools
build --release

# keys_run KIND SCENARIO: one wrk run of bench/keyed.lua against usaged, keep-alive or
# pipelined DEPTH deep, with a key on every POST (KIND key), none (KIND none) or a header of the
# key's size that no server reads (KIND pad); a row of WORK/rows.txt.
keys_run() {
  local d=1 k
  [[ $2 == keepalive ]] || d=$depth
  case $1 in key) k=1 ;; pad) k=pad ;; *) k=0 ;; esac
  # A nonce per run and kind, so that no key repeats on the server.
  depth=$d KEYS=$k NONCE=$((RANDOM * 32768 + RANDOM)) \
    wrk_run "$USAGED_PID" "$WORK/$1-$2-$run.txt" "$conns" keyed.lua "$USAGED_PORT"
  [[ $2 == keepalive ]] || P50=n/a P99=n/a
  row "$1" "$2"
}

if ((keys)); then
  new_results -keys "mode=POSTs with a unique Idempotency-Key each, without, and with a same-size unread header; usaged only" \
    "duration=${secs} s per run" "runs=$runs (medians)" "connections=$conns" "pipeline depth=$depth" \
    "pinning=usaged (one worker, journal) on CPU $server_cpu, wrk -t1 on CPU $load_cpu" \
    "load=bench/keyed.lua for every kind (KEYS=0, 1, pad)"
  start_usaged "$server_cpu" --threads 1
  warm_up "$USAGED_PORT"
  for run in $(seq 1 "$runs"); do
    for scenario in keepalive pipelined; do
      for kind in none pad key; do keys_run "$kind" "$scenario"; done
    done
  done
  stop_usaged
  {
    table_head scenario "no key req/s>" "CPU µs/req>" "same-size header req/s>" "CPU µs/req>" \
      "key req/s>" "CPU µs/req>" "CPU key ÷ no key>" "target ≤ 1.10" "CPU key ÷ same-size>"
    for scenario in keepalive pipelined; do
      n=$(med 4 none $scenario) p=$(med 4 pad $scenario) k=$(med 4 key $scenario)
      r=$(ratio "$k" "$n")
      verdict=$(awk -v r="$r" 'BEGIN {if (r == "n/a") print "n/a"; else print (r <= 1.10) ? "met" : "not met"}')
      bad=$(($(failed none $scenario) + $(failed pad $scenario) + $(failed key $scenario)))
      label="$scenario (c=$conns$([[ $scenario == pipelined ]] && echo ", depth $depth"))$( ((bad == 0)) || echo ' FAILED: errors')"
      echo "| $label | $(num %.0f "$(med 3 none $scenario)") | $(num %.2f "$n") | $(num %.0f "$(med 3 pad $scenario)") |" \
        "$(num %.2f "$p") | $(num %.0f "$(med 3 key $scenario)") | $(num %.2f "$k") | $r | $verdict | $(ratio "$k" "$p") |"
    done
    echo
    echo "Medians of $runs runs of ${secs} s, the kinds taking turns on one server (journal on)."
    echo "A server that does not know Idempotency-Key ignores it like the same-size header."
  } | tee "$OUT/summary.md"
  echo "results in $OUT"
  ! grep -q FAILED "$OUT/summary.md"
  exit
fi

new_results "" "mode=keep-alive and pipelined POST, usaged against nginx" "duration=${secs} s per run" \
  "runs=$runs (medians)" "connections=$conns" "pipeline depth=$depth" \
  "pinning=each server (one worker) on CPU $server_cpu, wrk -t1 on CPU $load_cpu"

start_usaged "$server_cpu" --threads 1
start_nginx "$server_cpu"
warm_up "$USAGED_PORT"
warm_up "$NGINX_PORT"
for run in $(seq 1 "$runs"); do
  for scenario in keepalive pipelined; do
    wrk_run "$USAGED_PID" "$WORK/usaged-$scenario-$run.txt" "$conns" "$(script_for $scenario)" "$USAGED_PORT"
    row usaged "$scenario"
    wrk_run "$NGINX_PID" "$WORK/nginx-$scenario-$run.txt" "$conns" "$(script_for $scenario)" "$NGINX_PORT"
    row nginx "$scenario"
  done
done
stop_usaged

{
  table_head scenario "usaged req/s>" "nginx req/s>" "ratio>" "usaged CPU µs/req>" "nginx CPU µs/req>" "ratio>" \
    "usaged p99>" "nginx p99>"
  for scenario in keepalive pipelined; do
    u=$(med 3 usaged $scenario) n=$(med 3 nginx $scenario)
    uc=$(med 4 usaged $scenario) nc=$(med 4 nginx $scenario)
    bad=$(($(failed usaged $scenario) + $(failed nginx $scenario)))
    label="$scenario (c=$conns$([[ $scenario == pipelined ]] && echo ", depth $depth"))$( ((bad == 0)) || echo ' FAILED: errors')"
    echo "| $label | $(num %.0f "$u") | $(num %.0f "$n") | $(ratio "$u" "$n") | $(num %.2f "$uc") | $(num %.2f "$nc") |" \
      "$(ratio "$uc" "$nc") | $(unit "$(med 7 usaged $scenario)" ms) | $(unit "$(med 7 nginx $scenario)" ms) |"
  done
  echo
  echo "Medians of $runs runs of ${secs} s. p99: n/a pipelined (wrk times a whole batch of $depth, not a request)."
} | tee "$OUT/summary.md"
echo "results in $OUT"
! grep -q FAILED "$OUT/summary.md"

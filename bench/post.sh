#!/usr/bin/env bash
# usage: bench/post.sh [-d SECS] [-c CONNS] [-r RUNS] [--depth N] [--server-cpu N] [--load-cpu N]
#
# usaged (one worker) against nginx (one worker) in the same run, each pinned to the same CPU,
# wrk pinned to another: keep-alive POST of the README body, and the same pipelined DEPTH deep.
# Prints requests/s, server CPU time per request (utime+stime of every thread and process over
# the run) and the usaged/nginx ratios, medians of RUNS runs, and the keep-alive p99 (pipelined:
# n/a, wrk times a whole batch, not a request). Results in bench/results/<UTC stamp>-<host>/:
# summary.md, meta.txt, raw/ (wrk's output; the journal is deleted).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 conns=64 runs=3 depth=16 server_cpu=0 load_cpu=1
option() {
  case $1 in
    -c) conns=${2-} TAKES=2 ;;
    --depth) depth=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers secs conns runs depth

ensure_tools
build --release
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

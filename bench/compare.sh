#!/usr/bin/env bash
# usage: bench/compare.sh [-d SECS] [-r RUNS] [-c CONNS] [-s post|pipeline] BINARY MODE [BINARY MODE ...]
#
# Two (or more) builds or journal modes against each other in the same run: each BINARY with
# MODE (in-memory, never, interval, always) serves with one worker on CPU 0, wrk on CPU 1, the
# configurations alternating run by run so drift on a shared machine hits each alike. Prints
# the medians of req/s and of server CPU µs per request, and the CPU ratio to the first one.
# Example (the state before a change against now):
#   git worktree add /tmp/before HEAD~3 && (cd /tmp/before && cargo build --release)
#   bench/compare.sh -s pipeline /tmp/before/target/release/usaged interval target/release/usaged interval
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
secs=4 runs=5 conns=64 script=post
while [[ ${1:-} == -* ]]; do
  case $1 in
    -d) secs=$2; shift 2 ;;
    -r) runs=$2; shift 2 ;;
    -c) conns=$2; shift 2 ;;
    -s) script=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) sed -n '2p' "$0" | sed 's/^# //'; exit 2 ;;
  esac
done
(($# >= 2 && $# % 2 == 0)) || { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
cfg=("$@")
work=$(mktemp -d)
trap 'kill ${pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
for r in $(seq "$runs"); do
  for ((i = 0; i < ${#cfg[@]}; i += 2)); do
    exe=${cfg[i]} mode=${cfg[i+1]}
    rm -rf "$work/data"
    if [[ $mode == in-memory ]]; then flags=(--in-memory); else flags=(--data-dir "$work/data" --sync "$mode"); fi
    taskset -c 0 "$exe" --port 0 --bind 127.0.0.1 --threads 1 "${flags[@]}" 2>"$work/err" &
    pid=$!
    for _ in $(seq 500); do grep -q ' workers)$' "$work/err" 2>/dev/null && break; sleep 0.01; done
    port=$(sed -n 's/^listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/err")
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    DEPTH=16 taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s "$ROOT/bench/$script.lua" \
      "http://127.0.0.1:$port/api/usages" >"$work/wrk.txt"
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    hz=$(getconf CLK_TCK)
    echo "$i $(awk '/^Requests/ {print $2}' "$work/wrk.txt") $(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$hz" 'BEGIN {printf "%.3f", (b - a) * 1e6 / hz / n}')" >>"$work/rows"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
first=$(awk '$1 == 0 {print $3}' "$work/rows" | median)
printf '%s, %d connections, medians of %d runs of %ss\n' "$script" "$conns" "$runs" "$secs"
for ((i = 0; i < ${#cfg[@]}; i += 2)); do
  rps=$(awk -v i="$i" '$1 == i {print $2}' "$work/rows" | median)
  cpu=$(awk -v i="$i" '$1 == i {print $3}' "$work/rows" | median)
  awk -v b="${cfg[i]}" -v m="${cfg[i+1]}" -v r="$rps" -v c="$cpu" -v f="$first" \
    'BEGIN {printf "  %-50s %-9s %10.0f req/s %7.3f µs CPU/req (%.2f ×)\n", b, m, r, c, c / f}'
done

#!/usr/bin/env bash
# usage: scripts/profile.sh [-d SECS] [--pipelined] [--server-cpu N] [--load-cpu N]
#
# Profile usaged under wrk load: perf record (software cpu-clock event, call graphs) on the
# `profiling` build (release code, full symbols), folded with inferno into flamegraph.svg;
# also perf stat software counters and syscalls per request (strace -c -f over a short wrk
# run; strace slows the server, the counts stay right). Output in bench/results/<UTC stamp>-<host>-profile/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 script=post.lua server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    --pipelined) script=pipeline.lua; shift ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done

ensure_tools
for tool in perf:linux-perf strace:strace; do
  command -v "${tool%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null; }
done
command -v inferno-flamegraph >/dev/null || cargo install --quiet inferno
(cd "$ROOT" && cargo build --profile profiling --quiet)
OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$(hostname)-profile"
WORK="$OUT/raw"
mkdir -p "$WORK"
record_machine "$OUT/machine.txt"
trap 'kill ${USAGED_PID:-} ${LOAD_PID:-} ${STRACE_PID:-} 2>/dev/null || true' EXIT

# Start the profiling build (start_usaged runs target/release; point it at the profiling one).
taskset -c "$server_cpu" "$ROOT/target/profiling/usaged" --port 0 --bind 127.0.0.1 --threads 1 --data-dir "$WORK/data" 2>"$WORK/usaged.err" &
USAGED_PID=$!
for _ in $(seq 1 500); do grep -q '^listening on' "$WORK/usaged.err" && break; sleep 0.01; done
USAGED_PORT=$(sed -n 's/^listening on [0-9.]*:\([0-9]*\).*/\1/p' "$WORK/usaged.err")

DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d"$((secs + 2))s" -s "$ROOT/bench/$script" \
  "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk.txt" 2>&1 &
LOAD_PID=$!
perf record -e cpu-clock -F 4999 -g -p "$USAGED_PID" -o "$WORK/perf.data" -- sleep "$secs" 2>"$WORK/perf-record.err"
perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$USAGED_PID" -- sleep 1 2>"$OUT/perf-stat.txt"
wait "$LOAD_PID" || true
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$WORK/folded.txt"
inferno-flamegraph <"$WORK/folded.txt" >"$OUT/flamegraph.svg"
{ perf report -i "$WORK/perf.data" --no-children -g none --stdio --percent-limit 0.8 2>/dev/null || true; } | grep -v "^#" | grep -v "^$" >"$OUT/top.txt" || true
# Syscalls per request.
strace -c -f -p "$USAGED_PID" -o "$WORK/strace.txt" &
STRACE_PID=$!
sleep 0.5 # let strace attach before the load starts (its attach message is not machine-readable)
DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d3s -s "$ROOT/bench/$script" \
  "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk-strace.txt" 2>&1
kill -INT "$STRACE_PID"; wait "$STRACE_PID" || true
reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk-strace.txt")
{
  echo "requests: $reqs"
  awk -v n="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "%-14s %10d calls  %.3f per request\n", $NF, $4, $4 / n}' "$WORK/strace.txt"
} | tee "$OUT/syscalls.txt"
grep Requests/sec "$WORK/wrk.txt"
cat "$OUT/perf-stat.txt"
head -40 "$OUT/top.txt"
echo "flamegraph: $OUT/flamegraph.svg"

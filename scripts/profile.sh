#!/usr/bin/env bash
# usage: scripts/profile.sh [-d SECS] [--pipelined] [--server-cpu N] [--load-cpu N] [--keep-perf-data]
#
# Profile usaged (one worker, the `profiling` build: release code with full debug info) under
# wrk load (keep-alive POSTs, or pipelined 16 deep) for SECS seconds: perf record on the
# software cpu-clock event (1999 Hz) with DWARF call graphs (`--call-graph dwarf`: 8 KiB of user
# stack copied per sample, unwound by perf afterwards; frame pointers would not do, as std and
# libc are built without them and the stacks would stop at the first libc frame). perf also
# names inlined frames from the debug info, so a stack reads worker loop → read → frame → route
# → validate → store (and encode the journal record) → write; the journal thread's write and
# sync show under usaged-journal-N. Then perf stat software counters, and syscalls per request
# (strace -c -f over a short second run; strace slows the server, the counts stay right).
# Prints the share of the worker threads' (usaged-worker-N) samples whose stack passes through
# a usaged:: frame (goal: at least 90 %). Installs perf, strace (Debian) and inferno (cargo)
# when missing. Results in bench/results/<UTC stamp>-<host>-profile/:
#   stacks.folded   every sample's stack, folded by inferno-collapse-perf (thread name first)
#   flamegraph.svg  inferno-flamegraph of stacks.folded
#   top.txt         perf report: the hottest functions, self time
#   perf-stat.txt, syscalls.txt, meta.txt, raw/ (wrk; perf.data only with --keep-perf-data)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 script=post.lua server_cpu=0 load_cpu=1 keep=0
option() {
  case $1 in
    --pipelined) script=pipeline.lua TAKES=1 ;;
    --keep-perf-data) keep=1 TAKES=1 ;;
  esac
}
parse_options "$@"
numbers secs

ensure_tools
need perf linux-perf
need strace strace
command -v inferno-flamegraph >/dev/null || cargo install --quiet inferno
build --profile profiling
new_results -profile "mode=$([[ $script == post.lua ]] && echo keep-alive || echo pipelined 16 deep) POST, 64 connections, perf record -F 1999 --call-graph dwarf" \
  "duration=${secs} s recorded (wrk runs ${secs} + 2 s)" "runs=1" \
  "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 and perf on CPU $load_cpu"
((keep)) || AT_EXIT+=('rm -f "$WORK/perf.data"')

start_usaged --bin "$TARGET/profiling/usaged" "$server_cpu" --threads 1
DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d"$((secs + 2))s" -s "$ROOT/bench/$script" \
  "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk.txt" 2>&1 &
LOAD_PID=$!
sleep 1 # wrk connects
# Counters over the same seconds as the samples.
perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$USAGED_PID" -- sleep "$secs" 2>"$OUT/perf-stat.txt" &
STAT_PID=$!
taskset -c "$load_cpu" perf record -e cpu-clock -F 1999 --call-graph dwarf -p "$USAGED_PID" \
  -o "$WORK/perf.data" -- sleep "$secs" 2>"$WORK/perf-record.err"
wait "$STAT_PID" "$LOAD_PID" || true
grep -i 'lost' "$WORK/perf-record.err" >&2 || true
# Without the period field, each sample counts 1 in the folded stacks.
perf script -F comm,tid,time,event,ip,sym,dso -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/stacks.folded"
inferno-flamegraph --title "usaged, $(sed -n 's/^mode: //p' "$OUT/meta.txt")" <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"
{ perf report -i "$WORK/perf.data" --no-children -g none --stdio --percent-limit 0.8 2>/dev/null || true; } |
  grep -v '^#' | grep -v '^$' >"$OUT/top.txt" || true

# Syscalls per request.
strace -c -f -p "$USAGED_PID" -o "$WORK/strace.txt" &
STRACE_PID=$!
sleep 0.5 # let strace attach before the load starts (its attach message is not machine-readable)
DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d3s -s "$ROOT/bench/$script" \
  "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk-strace.txt" 2>&1
kill -INT "$STRACE_PID"
wait "$STRACE_PID" || true
reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk-strace.txt")
{
  echo "requests: $reqs"
  awk -v n="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "%-14s %10d calls  %.3f per request\n", $NF, $4, $4 / n}' "$WORK/strace.txt"
} | tee "$OUT/syscalls.txt"
stop_usaged

grep Requests/sec "$WORK/wrk.txt"
cat "$OUT/perf-stat.txt"
head -40 "$OUT/top.txt"
# The share of worker samples with a usaged:: frame (a folded line: the thread's name as its
# first frame, the sample count last). Without named worker threads, the share over all.
awk '{
  n = $NF; sub(/ [0-9]+$/, ""); split($0, f, ";")
  worker = f[1] ~ /^usaged-worker/; all += n; if (worker) w += n
  if (index($0, "usaged::")) { mine += n; if (worker) wmine += n }
} END {
  if (w > 0) printf "worker-thread samples whose stack has a usaged:: frame: %d of %d (%.1f %%; goal >= 90 %%)\n", wmine, w, 100 * wmine / w
  else printf "no thread named usaged-worker-N: over all %d samples, %d have a usaged:: frame (%.1f %%)\n", all, mine, all ? 100 * mine / all : 0
}' "$OUT/stacks.folded" | tee -a "$OUT/meta.txt"
echo "flamegraph: $OUT/flamegraph.svg (folded stacks: stacks.folded)"

#!/usr/bin/env bash
# usage: bench/observe.sh [-d SECS] [-r RUNS] [--off-rev REV] [--server-cpu N] [--load-cpu N]
#
# What watching costs, in the same run: keep-alive (64) and pipelined (16 deep) POSTs against
#   off:        a build without metrics (git REV, default e81426a: the commit before them),
#   metrics:    this build (metrics are always on),
#   access-log: this build with --access-log to a file,
# all --in-memory on one worker. Prints requests/s, server CPU per request and ratios to "off".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
secs=10 runs=3 off_rev=e81426a server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    -r) runs=$2; shift 2 ;;
    --off-rev) off_rev=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done

ensure_tools
setup_results -observe bench/observe.sh "${args[@]}"
# The reference build, in its own worktree and target directory.
tree="$ROOT/target/observe-off-src"
if [[ ! -d $tree ]]; then git -C "$ROOT" worktree add --detach "$tree" "$off_rev" >/dev/null; fi
git -C "$tree" checkout -q --detach "$off_rev"
(cd "$tree" && cargo build --release --quiet --target-dir "$ROOT/target/observe-off")
OFF_BIN="$ROOT/target/observe-off/release/usaged"
trap 'kill ${PID:-} 2>/dev/null || true' EXIT

start() { # BINARY ARGS...
  local bin=$1; shift
  local log="$WORK/server.err"
  taskset -c "$server_cpu" "$bin" --port 0 --bind 127.0.0.1 --threads 1 --in-memory "$@" 2>"$log" &
  PID=$!
  for _ in $(seq 1 500); do grep -q '^listening on' "$log" && break; sleep 0.01; done
  PORT=$(sed -n 's/^listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log")
}

HZ=$(getconf CLK_TCK)
for run in $(seq 1 "$runs"); do
  for mode in off metrics access-log; do
    case $mode in
      off) start "$OFF_BIN" ;;
      metrics) start "$ROOT/target/release/usaged" ;;
      access-log) start "$ROOT/target/release/usaged" --access-log "$WORK/access.log" ;;
    esac
    for scenario in keepalive pipelined; do
      script=$([[ $scenario == keepalive ]] && echo post.lua || echo pipeline.lua)
      raw="$WORK/$mode-$scenario-$run.txt"
      t0=$(cpu_ticks "$PID")
      DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" -s "$ROOT/bench/$script" \
        "http://127.0.0.1:$PORT/api/usages" >"$raw" 2>&1
      t1=$(cpu_ticks "$PID")
      rps=$(awk '/^Requests\/sec/ {print $2}' "$raw")
      reqs=$(awk '/requests in/ {print $1}' "$raw")
      cpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.3f", d / hz * 1e6 / n}')
      echo "$mode $scenario $rps $cpu" >>"$WORK/rows.txt"
      printf '  %-10s %-9s run %d: %10.0f req/s  %s us CPU/req\n' "$mode" "$scenario" "$run" "$rps" "$cpu"
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true
    rm -f "$WORK/access.log"
  done
done

{
  echo "| scenario | build | req/s | vs off | CPU µs/req | vs off |"
  echo "|---|---|---:|---:|---:|---:|"
  for scenario in keepalive pipelined; do
    r0=$(awk -v s=$scenario '$1 == "off" && $2 == s {print $3}' "$WORK/rows.txt" | median)
    c0=$(awk -v s=$scenario '$1 == "off" && $2 == s {print $4}' "$WORK/rows.txt" | median)
    for mode in off metrics access-log; do
      r=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s {print $3}' "$WORK/rows.txt" | median)
      c=$(awk -v s=$scenario -v m=$mode '$1 == m && $2 == s {print $4}' "$WORK/rows.txt" | median)
      awk -v s=$scenario -v m=$mode -v r="$r" -v r0="$r0" -v c="$c" -v c0="$c0" \
        'BEGIN {printf "| %s | %s | %.0f | %.3f | %.3f | %.3f |\n", s, m, r, r / r0, c, c / c0}'
    done
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s; results in $OUT"

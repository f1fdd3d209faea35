#!/usr/bin/env bash
# usage: bench/observe.sh [-d SECS] [-r RUNS] [--off-rev REV] [--server-cpu N] [--load-cpu N]
#
# What watching costs, in the same run: keep-alive (64) and pipelined (16 deep) POSTs against
#   off:        a build without metrics (git REV, default e81426a: the commit before them),
#   metrics:    this build (metrics are always on),
#   access-log: this build with --access-log to a file,
# all --in-memory on one worker. Prints requests/s, server CPU per request and ratios to "off".
# REV is checked out into a git worktree that lives only while the script runs (a stale one,
# say from a cleaned target/, is pruned first); its build directory is kept for the next run.
# Results in bench/results/<UTC stamp>-<host>-observe/: summary.md, meta.txt, raw/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 runs=3 off_rev=e81426a server_cpu=0 load_cpu=1
option() {
  case $1 in
    --off-rev) off_rev=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers secs runs

ensure_tools
build --release
new_results -observe "mode=no metrics ($off_rev) against metrics and metrics + --access-log, --in-memory" \
  "duration=${secs} s per run" "runs=$runs (medians)" \
  "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 on CPU $load_cpu"
tree="$TARGET/observe-off-src"
git -C "$ROOT" worktree prune
if [[ -e $tree ]]; then
  git -C "$ROOT" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
fi
git -C "$ROOT" worktree add --detach "$tree" "$off_rev" >/dev/null
AT_EXIT+=('git -C "$ROOT" worktree remove --force "$tree"; git -C "$ROOT" worktree prune')
(cd "$tree" && cargo build --release --quiet --target-dir "$TARGET/observe-off")
meta "off build" "$(git -C "$tree" rev-parse --short HEAD)"

for run in $(seq 1 "$runs"); do
  for mode in off metrics access-log; do
    case $mode in
      off) start_usaged --bin "$TARGET/observe-off/release/usaged" "$server_cpu" --threads 1 --in-memory ;;
      metrics) start_usaged "$server_cpu" --threads 1 --in-memory ;;
      access-log) start_usaged "$server_cpu" --threads 1 --in-memory --access-log "$WORK/access.log" ;;
    esac
    for scenario in keepalive pipelined; do
      wrk_run "$USAGED_PID" "$WORK/$mode-$scenario-$run.txt" 64 "$(script_for $scenario)" "$USAGED_PORT"
      row "$mode" "$scenario"
    done
    stop_usaged
    rm -f "$WORK/access.log"
  done
done

{
  table_head scenario build "req/s>" "vs off>" "CPU µs/req>" "vs off>" status
  for scenario in keepalive pipelined; do
    r0=$(med 3 off $scenario) c0=$(med 4 off $scenario)
    for mode in off metrics access-log; do
      r=$(med 3 $mode $scenario) c=$(med 4 $mode $scenario)
      echo "| $scenario | $mode | $(num %.0f "$r") | $(ratio "$r" "$r0") | $(num %.3f "$c") | $(ratio "$c" "$c0") |" \
        "$(status $mode $scenario) |"
    done
  done
} | tee "$OUT/summary.md"
echo "medians of $runs runs of ${secs}s; results in $OUT"
! grep -q FAILED "$OUT/summary.md"

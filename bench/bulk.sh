#!/usr/bin/env bash
# usage: bench/bulk.sh [RUNS]
#
# SKELETON (issue 14): NDJSON bulks of 1 MB and 10 MB against usaged with one worker, with and
# without connection reuse (bench/bulk.py: usages/s, MB/s, server CPU ns per usage, journal
# thread included). Still to do: the same run's single-usage POSTs, keep-alive and pipelined
# (bench/post.sh's wrk scenarios through bench/lib.sh), pinning, medians, results directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
dir=$(mktemp -d)
"$CARGO_TARGET_DIR/release/usaged" --port 0 --threads 1 --bind 127.0.0.1 --data-dir "$dir" \
  2>"$dir.err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.err"' EXIT
for _ in $(seq 100); do
  grep -q '^listening on' "$dir.err" && break
  sleep 0.1 # polling the startup line, bounded to 10 s
done
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir.err")
[ -n "$port" ] || { cat "$dir.err"; exit 1; }
timeout 300 python3 "$ROOT/bench/bulk.py" "$port" "$pid" --runs "$runs"

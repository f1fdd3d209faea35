#!/usr/bin/env bash
# usage: scripts/stress.sh [SCALE]
#
# The hostile-client suite (tests/hostile.rs) at SCALE times its CI size (default 5: 10,000
# slowloris connections and 50,000 idle ones where the open-file limit allows, 2,000 clients
# against 256 descriptors, 500,000 pipelined requests from a client that never reads, 250 rounds
# of abrupt clients, a drain under 320 posting connections), one test at a time, then a table of
# what was tried and what held. Raise limits first: scripts/tune.sh --apply.
set -euo pipefail
scale=${1:-5}
[[ $scale =~ ^[0-9]+$ ]] || { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
USAGED_STRESS_SCALE=$scale cargo test --release --test hostile -- --test-threads=1 --nocapture 2>&1 | tee "$log" || status=$?
echo
echo "| test | tried | held |"
echo "|---|---|---|"
grep -o 'STRESS|.*' "$log" | cut -d'|' -f2- | sed 's/|/ | /g; s/^/| /; s/$/ |/'
grep -E '^test .* FAILED$' "$log" | sed 's/^test \(.*\) \.\.\. FAILED$/| \1 | | FAILED |/' || true
exit "$status"

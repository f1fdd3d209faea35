#!/usr/bin/env bash
# usage: scripts/fuzz.sh [CASES]
#
# The property-based fuzz suite (tests/fuzz.rs) with many more cases than CI runs (default
# 200,000 per target): request head, chunked decoder, JSON scanner, timestamp parser and the
# whole connection state machine. A failure prints the smallest input proptest found.
set -euo pipefail
cases=${1:-200000}
[[ $cases =~ ^[0-9]+$ ]] || { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
cd "$(dirname "$0")/.."
FUZZ_CASES=$cases cargo test --release --test fuzz -- --nocapture

#!/usr/bin/env bash
# usage: bench/memory.sh [-n USAGES] [-i IDLE_CONNS] [--server-cpu N] [--load-cpu N]
#
# Memory, measured on the real server (one worker):
#  1. RSS growth per stored usage while at least USAGES (default 10,000,000) README-shaped
#     usages are posted (wrk, pipelined 16 deep); target: at most 32 bytes per usage.
#  2. RSS per idle keep-alive connection: IDLE_CONNS (default 10,000) connections each make one
#     request and then stay open; target: at most 16 KiB per connection.
# Results in bench/results/<UTC stamp>-<host>-memory/: summary.md, meta.txt, raw/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

usages=10000000 idle=10000 server_cpu=0 load_cpu=1
option() {
  case $1 in
    -n) usages=${2-} TAKES=2 ;;
    -i) idle=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers usages idle

ensure_tools
build --release
new_results -memory "mode=RSS per stored usage, then per idle connection" "usages=at least $usages (wrk, pipelined 16 deep, 5 s runs)" \
  "idle connections=$idle" "runs=1" "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 on CPU $load_cpu"
ulimit -n $((idle + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# 1. Usages.
start_usaged "$server_cpu" --threads 1
base=$(rss_kib "$USAGED_PID")
stored=0
while ((stored < usages)); do
  DEPTH=16 taskset -c "$load_cpu" wrk -t1 -c32 -d5s -s "$ROOT/bench/pipeline.lua" \
    "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk-$stored.txt" 2>&1
  grep -q 'Non-2xx' "$WORK/wrk-$stored.txt" && { echo "non-2xx answers: see $WORK" >&2; exit 1; }
  stored=$((stored + $(awk '/requests in/ {print $1}' "$WORK/wrk-$stored.txt")))
  echo "  stored $stored usages, RSS $(rss_kib "$USAGED_PID") KiB"
done
after=$(rss_kib "$USAGED_PID")
per_usage=$(awk -v a="$after" -v b="$base" -v n="$stored" 'BEGIN {printf "%.1f", (a - b) * 1024 / n}')
stop_usaged

# 2. Idle connections.
start_usaged "$server_cpu" --threads 1
base=$(rss_kib "$USAGED_PID")
python3 - "$USAGED_PORT" "$idle" "$WORK/idle.ready" <<'PY' &
import socket, sys, time
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
    conns.append(s)
for s in conns:
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        data += s.recv(4096)
open(ready, "w").write("ok")
time.sleep(30)
PY
PY_PID=$!
for _ in $(seq 1 6000); do [ -f "$WORK/idle.ready" ] && break; sleep 0.01; done
[ -f "$WORK/idle.ready" ] || { echo "idle clients did not connect" >&2; exit 1; }
after=$(rss_kib "$USAGED_PID")
per_conn=$(awk -v a="$after" -v b="$base" -v n="$idle" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
kill "$PY_PID" 2>/dev/null || true
stop_usaged

{
  table_head measure "value>" "target>"
  echo "| RSS growth per stored usage ($stored usages) | $per_usage B | ≤ 32 B |"
  echo "| RSS per idle keep-alive connection ($idle connections) | $per_conn B | ≤ 16384 B |"
} | tee "$OUT/summary.md"
echo "results in $OUT"

#!/usr/bin/env bash
# usage: scripts/monitor.sh [-d SECS] [--server-cpu N] [--load-cpu N]
#
# A real Prometheus (Debian's package) scrapes usaged's /metrics every second on loopback while
# wrk loads it; then Prometheus is asked for the requests/s and p99 over the run, printed beside
# wrk's own figures. Installs wrk and prometheus with apt-get when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
secs=10 server_cpu=0 load_cpu=1
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    -d) secs=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
((secs >= 5)) || { echo "-d must be at least 5 seconds" >&2; exit 2; }

ensure_tools
command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
setup_results -monitor scripts/monitor.sh "${args[@]}"
trap 'kill ${USAGED_PID:-} ${PROM_PID:-} 2>/dev/null || true' EXIT

start_usaged "$server_cpu" --threads 1
PROM_PORT=3902
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: usaged
    static_configs:
      - targets: ['127.0.0.1:$USAGED_PORT']
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
for _ in $(seq 1 1000); do
  curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
  sleep 0.01
done
curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null || { echo "prometheus did not start" >&2; exit 1; }
# Wait until Prometheus has scraped usaged once (bounded), so the run has a "before" sample.
for _ in $(seq 1 100); do
  curl -sfG "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=up{job="usaged"}' | grep -q '"1"\]' && break
  sleep 0.1
done
start=$(date +%s.%N)
taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" --latency -s "$ROOT/bench/post.lua" \
  "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/wrk.txt"
end=$(date +%s.%N)
# Two scrape intervals, so the last samples of the run are in.
sleep 2.5
window="${secs}s"
query() { # QUERY TIME
  curl -sfG "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" --data-urlencode "time=$2" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "nan")'
}
# Requests/s: the counter as Prometheus scraped it just before and just after the run.
after=$(awk -v e="$end" 'BEGIN {printf "%.3f", e + 1.5}')
posts='sum(usaged_requests_total{route="create_usage"})'
c0=$(query "$posts" "$start") c1=$(query "$posts" "$after")
prom_rps=$(awk -v a="$c0" -v b="$c1" -v s="$start" -v e="$end" 'BEGIN {print (b - a) / (e - s)}')
prom_p99=$(query "histogram_quantile(0.99, sum(increase(usaged_request_duration_seconds_bucket[$window])) by (le))" "$after")
wrk_rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.txt")
wrk_p99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")
{
  echo "| measure | Prometheus (usaged's /metrics) | wrk |"
  echo "|---|---:|---:|"
  awk -v p="$prom_rps" -v w="$wrk_rps" 'BEGIN {printf "| requests/s | %.0f | %.0f |\n", p, w}'
  awk -v p="$prom_p99" -v w="$wrk_p99" 'BEGIN {printf "| p99 | %.3f ms (server time, bucket bound) | %s (round trip) |\n", p * 1000, w}'
} | tee "$OUT/summary.md"
echo "Prometheus: counter before and after the run, histogram over the last $window; results in $OUT"

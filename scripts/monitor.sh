#!/usr/bin/env bash
# usage: scripts/monitor.sh [-d SECS] [--server-cpu N] [--load-cpu N]
#
# A real Prometheus (Debian's package) scrapes usaged's /metrics every second on loopback while
# wrk loads it; then Prometheus is asked for the requests/s and p99 over the run, printed beside
# wrk's own figures. Installs wrk and prometheus with apt-get when missing. Both listen on ports
# the kernel picks. Results in bench/results/<UTC stamp>-<host>-monitor/: summary.md, meta.txt, raw/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

secs=10 server_cpu=0 load_cpu=1
parse_options "$@"
numbers secs
((secs >= 5)) || { echo "-d must be at least 5 seconds" >&2; exit 2; }

ensure_tools
need prometheus prometheus
build --release
new_results -monitor "mode=Prometheus scraping usaged every second under keep-alive POSTs (64 connections)" \
  "duration=${secs} s" "runs=1" "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 on CPU $load_cpu"

start_usaged "$server_cpu" --threads 1
PROM_PORT=$(free_port)
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
AT_EXIT+=('rm -rf "$WORK/prom"')
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
wrk_run "$USAGED_PID" "$WORK/wrk.txt" 64 post.lua "$USAGED_PORT"
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
{
  table_head measure "Prometheus (usaged's /metrics)>" "wrk>"
  awk -v p="$prom_rps" -v w="$RPS" 'BEGIN {printf "| requests/s | %.0f | %.0f |\n", p, w}'
  awk -v p="$prom_p99" -v w="$P99 ms" 'BEGIN {printf "| p99 | %.3f ms (server time, bucket bound) | %s (round trip) |\n", p * 1000, w}'
} | tee "$OUT/summary.md"
echo "Prometheus: counter before and after the run, histogram over the last $window; results in $OUT"

#!/usr/bin/env bash
# usage: bench/cluster.sh [--duration SECS | -d SECS] [--runs R | -r R] [-c CONNS] [--smoke] [--server-cpu N] [--proxy-cpu N] [--load-cpu N]
#
# What HAProxy in front of usaged costs (issue 12), every scenario in the same run, the
# scenarios taking turns within each run:
#   direct       one usaged node, wrk straight to it
#   http         the same node behind HAProxy `mode http` (the `usaged haproxy-config` frontend)
#   tcp          the same node behind HAProxy `mode tcp` (its --tcp-port frontend)
#   http-2nodes  two nodes (--node 0/1 --nodes 2) behind HAProxy `mode http`
#   tcp-2nodes   the same two nodes behind HAProxy `mode tcp`
# Keep-alive POSTs of the README body (bench/post.lua), wrk -t1 with CONNS connections
# (default 64). Each usaged runs one worker (--threads 1) with the server's default journal
# (--sync interval, as bench/post.sh; deleted at the end); each HAProxy (2.6, config from
# `usaged haproxy-config --nbthread 1`) runs one thread.
#
# The numbers, medians of R runs of SECS seconds (default 3 × 5 s; --smoke: 1 × 1 s, no warm-up):
#   req/s            what wrk completed, and its ratio to `direct`
#   usaged µs/req    utime+stime of every usaged process (all threads: worker and journal) over
#                    the run, from /proc/PID/stat, divided by the requests wrk completed
#   HAProxy µs/req   the same for the HAProxy process (n/a for `direct`)
#   total µs/req     both together, and its ratio to `direct`
#   HAProxy/usaged   HAProxy µs ÷ usaged µs of the same row, and ÷ usaged µs of `direct`: the
#                    HAProxy cores a given number of usaged cores needs at that mode
#                    (cores_proxy = cores_usaged × HAProxy µs / usaged µs). Behind the proxy
#                    usaged runs well below its capacity here and wakes for fewer requests at
#                    a time, so its µs/req rises; a usaged core kept busy costs what `direct`
#                    shows, which makes the second ratio the one to plan with.
#   p99              wrk's round-trip latency
# Caveats. On a 2-CPU machine nothing here runs on a core of its own: every usaged is pinned to
# CPU 0 (both nodes of the 2-node scenarios share it), HAProxy and wrk share CPU 1 (--proxy-cpu,
# --load-cpu). req/s is therefore bound by whichever CPU saturates first, and through the proxy
# that is CPU 1, where wrk and HAProxy compete: the rates through HAProxy are not what separate
# machines would reach. The per-request CPU costs are the figures to read (and to scale across
# machines by); sharing a CPU distorts them little, though a busier process batches more work
# per wake-up. Both counts include health checks (HAProxy checks /health every 100 ms per server
# and backend: a few per second, negligible against the request rate).
# Results in bench/results/<UTC stamp>-<host>-cluster/: summary.md, meta.txt, raw/ (wrk's
# output, HAProxy configs and logs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH=$PATH:/usr/sbin:/usr/local/sbin
source "$ROOT/bench/lib.sh"

secs=5 runs=3 conns=64 smoke=0 server_cpu=0 load_cpu=1 proxy_cpu=''
option() {
  case $1 in
    --duration) secs=${2-} TAKES=2 ;;
    --runs) runs=${2-} TAKES=2 ;;
    -c) conns=${2-} TAKES=2 ;;
    --proxy-cpu) proxy_cpu=${2-} TAKES=2 ;;
    --smoke) smoke=1 TAKES=1 ;;
  esac
}
parse_options "$@"
secs=${secs%s}
if ((smoke)); then secs=1 runs=1; fi
proxy_cpu=${proxy_cpu:-$load_cpu}
numbers secs runs conns
scenarios=(direct http tcp http-2nodes tcp-2nodes)

need wrk wrk
need haproxy haproxy
need python3 python3
build --release
pinning="usaged (each node, 1 worker) on CPU $server_cpu; HAProxy (nbthread 1) on CPU $proxy_cpu;"
pinning+=" wrk -t1 on CPU $load_cpu"
new_results -cluster "mode=keep-alive POST (README body) direct, through HAProxy http and tcp, 1 and 2 nodes" \
  "duration=${secs} s per run" "runs=$runs (medians)" "connections=$conns" "pinning=$pinning" \
  "journal=usaged's default (--sync interval), in raw/data, deleted at the end" \
  "haproxy=$(haproxy -v | head -1)"
trap 'exit 143' TERM INT
echo "pinning: $pinning"
[[ $proxy_cpu != "$load_cpu" ]] || echo "note: HAProxy and wrk share CPU $proxy_cpu: read µs/req, not req/s"

# start_haproxy NAME EPOCH NODE_PORT...: HAProxy for usaged nodes on those loopback ports, its
# config rendered by `usaged haproxy-config --nbthread 1 --epoch EPOCH` (BASE:NODES; none when
# empty) (http frontend HA_HTTP, tcp frontend HA_TCP,
# free ports; tried again with others if one was taken meanwhile), pinned to proxy_cpu, in the
# foreground (-db) as a background job. Sets HA_PID, HA_HTTP, HA_TCP.
start_haproxy() {
  local name=$1 epoch=$2 p
  shift 2
  local args=(haproxy-config --bind 127.0.0.1 --nbthread 1)
  [[ -z $epoch ]] || args+=(--epoch "$epoch")
  for p; do args+=(--node "127.0.0.1:$p"); done
  for _ in 1 2 3 4 5; do
    HA_HTTP=$(free_port) HA_TCP=$(free_port)
    [[ $HA_HTTP != "$HA_TCP" ]] || continue
    "$RELEASE/usaged" "${args[@]}" --port "$HA_HTTP" --tcp-port "$HA_TCP" >"$WORK/$name.cfg"
    taskset -c "$proxy_cpu" haproxy -db -f "$WORK/$name.cfg" </dev/null 2>>"$WORK/$name.log" &
    HA_PID=$!
    if wait_port "$HA_HTTP" "$HA_PID" && wait_port "$HA_TCP" "$HA_PID"; then return 0; fi
    kill "$HA_PID" 2>/dev/null || true
    wait "$HA_PID" 2>/dev/null || true
  done
  cat "$WORK/$name.log" >&2
  return 1
}

# ticks PID...: the processes' CPU time together, in clock ticks.
ticks() {
  local t=0 p
  for p; do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}

# The processes: one node with its HAProxy, two nodes (a cluster epoch with base 1000, as
# a cluster's first epoch would be started: ids 1001, 1002, ...) with theirs.
start_usaged --name solo "$server_cpu" --threads 1
SOLO_PID=$USAGED_PID SOLO_PORT=$USAGED_PORT
PAIR_PIDS=() PAIR_PORTS=()
for k in 0 1; do
  start_usaged --name "node$k" "$server_cpu" --threads 1 --node "$k" --nodes 2 --cluster-base 1000
  PAIR_PIDS+=("$USAGED_PID") PAIR_PORTS+=("$USAGED_PORT")
done
start_haproxy haproxy-solo '' "$SOLO_PORT"
SOLO_HA=$HA_PID SOLO_HTTP=$HA_HTTP SOLO_TCP=$HA_TCP
start_haproxy haproxy-pair 1000:2 "${PAIR_PORTS[@]}"
PAIR_HA=$HA_PID PAIR_HTTP=$HA_HTTP PAIR_TCP=$HA_TCP

# setup SCENARIO: where wrk connects (PORT), the usaged processes (SERVERS) and HAProxy (PROXY,
# empty for direct).
setup() {
  case $1 in
    direct) PORT=$SOLO_PORT SERVERS=("$SOLO_PID") PROXY='' ;;
    http) PORT=$SOLO_HTTP SERVERS=("$SOLO_PID") PROXY=$SOLO_HA ;;
    tcp) PORT=$SOLO_TCP SERVERS=("$SOLO_PID") PROXY=$SOLO_HA ;;
    http-2nodes) PORT=$PAIR_HTTP SERVERS=("${PAIR_PIDS[@]}") PROXY=$PAIR_HA ;;
    tcp-2nodes) PORT=$PAIR_TCP SERVERS=("${PAIR_PIDS[@]}") PROXY=$PAIR_HA ;;
  esac
}

# measure SCENARIO: one wrk run; rows "usaged|haproxy|total SCENARIO rps µs errors p50 p99" in
# WORK/rows.txt (lib.sh's med and failed read them), and a line printed.
measure() {
  local s0 s1 p0=0 p1=0 server proxy total
  setup "$1"
  s0=$(ticks "${SERVERS[@]}")
  [[ -z $PROXY ]] || p0=$(cpu_ticks "$PROXY")
  wrk_run "${SERVERS[0]}" "$WORK/$1-$run.txt" "$conns" post.lua "$PORT"
  s1=$(ticks "${SERVERS[@]}")
  [[ -z $PROXY ]] || p1=$(cpu_ticks "$PROXY")
  server=$(per_request "$((s1 - s0))" "$REQS") proxy=n/a total=$server
  if [[ -n $PROXY ]]; then
    proxy=$(per_request "$((p1 - p0))" "$REQS")
    total=$(per_request "$((s1 - s0 + p1 - p0))" "$REQS")
  fi
  local who us
  for who in usaged haproxy total; do
    case $who in usaged) us=$server ;; haproxy) us=$proxy ;; total) us=$total ;; esac
    echo "$who $1 $RPS $us $ERRORS $P50 $P99" >>"$WORK/rows.txt"
  done
  printf '  %-12s run %d: %8.0f req/s  usaged %7s  HAProxy %7s µs CPU/req  p99 %-9s%s\n' "$1" "$run" \
    "$RPS" "$server" "$proxy" "$(unit "$P99" ms)" \
    "$([[ $ERRORS == 0 ]] || echo "  FAILED ($ERRORS errors, see raw output)")"
}

if ((!smoke)); then
  for port in "$SOLO_PORT" "$SOLO_HTTP" "$SOLO_TCP" "$PAIR_HTTP" "$PAIR_TCP"; do warm_up "$port"; done
fi
for run in $(seq 1 "$runs"); do
  for scenario in "${scenarios[@]}"; do measure "$scenario"; done
done

# label SCENARIO: the table's words for it.
label() {
  case $1 in
    direct) echo "1 node, direct" ;;
    http) echo "1 node, HAProxy mode http" ;;
    tcp) echo "1 node, HAProxy mode tcp" ;;
    http-2nodes) echo "2 nodes, HAProxy mode http" ;;
    tcp-2nodes) echo "2 nodes, HAProxy mode tcp" ;;
  esac
}

rps0=$(med 3 usaged direct) total0=$(med 4 total direct) usaged0=$(med 4 usaged direct)
{
  table_head scenario "req/s>" "× direct>" "usaged µs/req>" "HAProxy µs/req>" "total µs/req>" \
    "× direct>" "HAProxy/usaged>" "HAProxy/usaged direct>" "p99>" status
  for scenario in "${scenarios[@]}"; do
    r=$(med 3 usaged "$scenario") u=$(med 4 usaged "$scenario") h=$(med 4 haproxy "$scenario")
    t=$(med 4 total "$scenario")
    echo "| $(label "$scenario") | $(num %.0f "$r") | $(ratio "$r" "$rps0") | $(num %.2f "$u") |" \
      "$(num %.2f "$h") | $(num %.2f "$t") | $(ratio "$t" "$total0") | $(ratio "$h" "$u") | $(ratio "$h" "$usaged0") |" \
      "$(unit "$(med 7 usaged "$scenario")" ms) | $(status usaged "$scenario") |"
  done
  echo
  echo "Medians of $runs runs of ${secs} s, keep-alive POST, $conns connections. Pinning: $pinning."
  echo "CPU per request: utime+stime from /proc over each run ÷ requests completed."
  echo "HAProxy/usaged: HAProxy cores per usaged core at that mode, against usaged's µs/req in the"
  echo "same row (usaged there far from busy) and in the direct row (usaged busy: plan with this)."
  echo "Issue 12's 16-core figures for comparison: usaged 6.9 µs/req; HAProxy mode http 20.6 µs/req"
  echo "(2.99 HAProxy cores per usaged core), mode tcp 12.8 µs/req (1.86)."
} | tee "$OUT/summary.md"
echo "results in $OUT"
! grep -q FAILED "$OUT/summary.md"

#!/usr/bin/env bash
# usage: bench/ship.sh [--duration SECS | -d SECS] [--runs R | -r R] [--usages N] [-c CONNS] [--smoke] [--server-cpu N] [--load-cpu N] [--pg-cpu N]
#
# The PostgreSQL shipper (issue 13), against a private PostgreSQL cluster the script starts
# (initdb + pg_ctl in a temporary directory, a Unix socket there only, no TCP; as the `postgres`
# user when run as root; PostgreSQL's default durability: fsync on) and stops at the end.
#
# 1. Shipping throughput. A journal of about N usages (default 1,000,000; --smoke 100,000):
#    the release server (default workers, so several stripes) takes pipelined POSTs of the
#    README body from wrk (16 deep, stopped once N were answered: a few hundred more may be
#    stored) and is stopped. Then, R times, into emptied tables (TRUNCATE, CHECKPOINT):
#    `usaged ship --data-dir DIR --to URL` (unpinned, beside PostgreSQL), timed from its start
#    until `SELECT sum(shipped) FROM usaged_shipped` (polled every 50 ms on one connection,
#    stamped by PostgreSQL's clock) reaches the journal's count. Reported: usages/s, the
#    shipper process's CPU µs per usage, PostgreSQL's (utime+stime of the postmaster, the
#    processes it reaped and its live children, from /proc: the polling query's backend
#    included), and whether `count(*)` of `usages` equals the journal's count. Target
#    (issue 13): ≥ 200,000 usages/s; the summary says pass or miss.
# 2. Cost to the server. Keep-alive POSTs (bench/post.lua, wrk -t1, CONNS connections, default
#    64) for SECS seconds (default 5; --smoke 1) against a fresh one-worker server (--threads 1,
#    default journal --sync interval) without and with `--ship-to` (tables emptied first), the
#    two taking turns within each of R runs (default 3; --smoke 1). Reported: req/s and server
#    CPU µs/req over the load (every thread, the shipper thread included, which is also shown
#    on its own), PostgreSQL's CPU µs/req over the load; when the load stops, the lag gauge
#    (`usaged_ship_lag_usages`: what the shipper saw on disk at its last look and has not
#    shipped, so 0 while each batch takes all it saw) and the usages stored but not yet shipped
#    (`usaged_usages_stored_total` − `usaged_ship_rows_total`); how long after the load all were
#    shipped (that difference 0); the shipper thread's and PostgreSQL's CPU per usage from the
#    load's start until then; and that `sum(shipped)` in PostgreSQL equals the stored count.
#    Pinning: the server (all its threads: worker, journal, shipper) on CPU 0, wrk on CPU 1
#    (--server-cpu, --load-cpu); PostgreSQL is not pinned (--pg-cpu N pins it, every process
#    of the cluster, for both parts) and shares the machine with both.
# Medians of R runs; n/a where a figure could not be measured. Each step is bounded (timeout);
# on exit everything started is stopped (servers, shipper, wrk, psql, the PostgreSQL cluster)
# and the journals and the cluster are deleted.
# Results in bench/results/<UTC stamp>-<host>-ship/: summary.md, meta.txt, raw/ (wrk's output,
# server, shipper and PostgreSQL logs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH=$PATH:/usr/sbin:/usr/local/sbin
source "$ROOT/bench/lib.sh"

secs=5 runs=3 usages=1000000 conns=64 smoke=0 server_cpu=0 load_cpu=1 pg_cpu=''
option() {
  case $1 in
    --duration) secs=${2-} TAKES=2 ;;
    --runs) runs=${2-} TAKES=2 ;;
    --usages) usages=${2-} TAKES=2 ;;
    -c) conns=${2-} TAKES=2 ;;
    --pg-cpu) pg_cpu=${2-} TAKES=2 ;;
    --smoke) smoke=1 TAKES=1 ;;
  esac
}
parse_options "$@"
secs=${secs%s}
if ((smoke)); then secs=1 runs=1 usages=100000; fi
numbers secs runs usages conns
[[ -z $pg_cpu || $pg_cpu =~ ^[0-9]+$ ]] || usage
TARGET_RATE=200000

# need_postgres: PostgreSQL's server programs (Debian's `postgresql`, as .ci/run installs it:
# a policy-rc.d refuses to start the system cluster during the install). Sets PG_BIN.
need_postgres() {
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "installing postgresql" >&2
    local policy=/usr/sbin/policy-rc.d made=''
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made=1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    [[ -z $made ]] || rm -f "$policy"
  fi
  PG_BIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)
}

need wrk wrk
need curl curl
need_postgres
build --release
pg_pin=${pg_cpu:+on CPU $pg_cpu}
pinning="part 2: usaged (--threads 1; worker, journal and shipper threads) on CPU $server_cpu, wrk -t1 on"
pinning+=" CPU $load_cpu, PostgreSQL ${pg_pin:-unpinned}; part 1: usaged ship unpinned, PostgreSQL ${pg_pin:-unpinned}"
new_results -ship "mode=1: usaged ship of a journal into empty tables; 2: keep-alive POST with and without --ship-to" \
  "usages=$usages (part 1's journal, about)" "duration=${secs} s per run (part 2)" "runs=$runs (medians)" \
  "connections=$conns" "pinning=$pinning" "postgresql=$("$PG_BIN/postgres" --version)" \
  "postgresql settings=initdb defaults (fsync on, synchronous_commit on), Unix socket only"
trap 'exit 143' TERM INT
echo "pinning: $pinning"

# --- PostgreSQL --------------------------------------------------------------------------------

# start_pg: a fresh cluster in a temporary directory (user `usaged`, trust on its socket, which
# only the directory's owner can reach), started. Sets PG_DIR, PG_PID, PG_URL, PSQL; the
# clean-up stops it and deletes it.
start_pg() {
  PG_DIR=$(mktemp -d /tmp/usaged-bench-pg.XXXXXX)
  AT_EXIT+=(stop_pg)
  PG_AS=()
  if ((EUID == 0)); then
    local user=postgres
    id postgres >/dev/null 2>&1 || user=nobody
    chown "$user" "$PG_DIR"
    PG_AS=(runuser -u "$user" --)
  fi
  (cd "$PG_DIR" && timeout 120 "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U usaged -A trust \
    --no-sync -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1)
  (cd "$PG_DIR" && timeout 90 "${PG_AS[@]}" "$PG_BIN/pg_ctl" start -w -t 60 -D "$PG_DIR/data" \
    -l "$PG_DIR/log" -o "-c listen_addresses='' -k $PG_DIR" >/dev/null)
  PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
  # Every process of the cluster; the backends forked later inherit the postmaster's.
  [[ -z $pg_cpu ]] || taskset -a -c -p "$pg_cpu" "$PG_PID" >/dev/null
  [[ -z $pg_cpu ]] || for p in $(pgrep -P "$PG_PID"); do taskset -a -c -p "$pg_cpu" "$p" >/dev/null; done
  PG_URL="postgres://usaged@${PG_DIR//\//%2F}/postgres"
  PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$PG_DIR" -U usaged -d postgres)
  export LC_ALL=C PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning'
  unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD
}

# stop_pg: stop the cluster at once, keep its log in raw/, delete it.
stop_pg() {
  [[ -n ${PG_DIR:-} && -d $PG_DIR ]] || return 0
  cp "$PG_DIR/log" "$WORK/postgres.log" 2>/dev/null || true
  (cd "$PG_DIR" && timeout 60 "${PG_AS[@]}" "$PG_BIN/pg_ctl" stop -w -m immediate -t 30 -D "$PG_DIR/data" \
    >/dev/null 2>&1) || kill -KILL "$PG_PID" 2>/dev/null || true
  rm -rf "$PG_DIR"
}

# sql STATEMENTS: run them (bounded), print what psql printed.
sql() {
  timeout 120 "${PSQL[@]}" -c "$1"
}

# empty_tables: the schema (`usaged ship --print-schema`) created if missing, both tables
# emptied, a checkpoint so that no run inherits another's dirty pages.
empty_tables() {
  "$RELEASE/usaged" ship --print-schema | timeout 120 "${PSQL[@]}" >/dev/null
  sql "TRUNCATE usages, usaged_shipped; CHECKPOINT;" >/dev/null
}

# pg_ticks: PostgreSQL's CPU time in clock ticks: the postmaster's (with the children it has
# reaped) and that of its live children.
pg_ticks() {
  local t p
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$PG_PID/stat")
  for p in $(pgrep -P "$PG_PID" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# --- Helpers -----------------------------------------------------------------------------------

# metric PORT NAME: the value of an unlabelled sample on usaged's /metrics (empty if absent).
metric() {
  { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" || true; } | awk -v n="$2" '$1 == n {print $2; exit}'
}

# ship_thread_ticks PID: CPU time of usaged's shipper thread (`usaged-ship`), in clock ticks.
ship_thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    if [[ $(cat "$t/comm" 2>/dev/null) == usaged-ship ]]; then
      awk '{print $14 + $15}' "$t/stat"
      return 0
    fi
  done
  echo 0
}

# keep KEY VALUE: one measurement, for xmed.
keep() {
  echo "$1 $2" >>"$WORK/extra.txt"
}

# xmed KEY: the median of KEY's measurements, or n/a.
xmed() {
  awk -v k="$1" '$1 == k {print $2}' "$WORK/extra.txt" 2>/dev/null | median
}

# per_usage TICKS USAGES: CPU µs per usage (n/a without usages) — per_request's arithmetic.
per_usage() {
  per_request "$@"
}

# now: seconds since the epoch, to the microsecond.
now() {
  date +%s.%6N
}

# --- 1. Shipping throughput --------------------------------------------------------------------

# build_journal: about `usages` usages in WORK/journal, written by the release server under
# pipelined POSTs, the server then stopped. Sets JOURNAL and N (what the server stored).
build_journal() {
  JOURNAL="$WORK/journal"
  AT_EXIT+=('rm -rf "$JOURNAL"')
  cat >"$WORK/budget.lua" <<'EOF'
-- wrk: bench/pipeline.lua's requests, stopped once BUDGET responses came back.
local depth = tonumber(os.getenv("DEPTH") or "16")
local left = tonumber(os.getenv("BUDGET"))
local body = '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
local req
init = function(args)
  req = string.rep(wrk.format("POST", "/api/usages", {["Content-Type"] = "application/json"}, body), depth)
end
request = function() return req end
response = function(status, headers, body)
  left = left - 1
  if left <= 0 then wrk.thread:stop() end
end
EOF
  rm -rf "$JOURNAL"
  start_usaged --name journal "0-$(($(nproc) - 1))" --data-dir "$JOURNAL"
  # wrk's thread stops at the budget, but wrk itself sleeps out -d: it is killed once the count
  # is reached and stays put for 100 ms.
  DEPTH=16 BUDGET=$usages timeout 300 wrk -t1 -c"$conns" -d290s -s "$WORK/budget.lua" \
    "http://127.0.0.1:$USAGED_PORT/api/usages" >"$WORK/journal-wrk.txt" 2>&1 &
  local loader=$! last=-1 end=$((SECONDS + 290))
  N=0
  while ((SECONDS < end)) && kill -0 "$loader" 2>/dev/null; do
    sleep 0.1
    last=$N N=$(metric "$USAGED_PORT" usaged_usages_stored_total)
    ((${N:-0} < usages || N != last)) || break
  done
  kill "$loader" 2>/dev/null || true
  wait "$loader" 2>/dev/null || true
  N=$(metric "$USAGED_PORT" usaged_usages_stored_total)
  kill "$USAGED_PID"
  wait "$USAGED_PID" 2>/dev/null || true
  [[ ${N:-0} =~ ^[1-9][0-9]*$ ]] || { echo "the journal server stored nothing" >&2; exit 1; }
  echo "journal: $N usages, $(du -sh "$JOURNAL" | cut -f1) in $(find "$JOURNAL" -name '*.seg' | wc -l) segments"
}

# wait_shipped PROGRESS N LIMIT PID: until the progress file (lines "epoch|sum", a psql \watch)
# shows N (LIMIT seconds at most, and only while the shipper PID lives). Prints the epoch at
# which PostgreSQL first showed it; fails if it did not.
wait_shipped() {
  local progress=$1 n=$2 end=$((SECONDS + $3)) pid=$4 at
  while ((SECONDS < end)); do
    at=$(awk -F'|' -v n="$n" '$2 + 0 >= n {print $1; exit}' "$progress")
    if [[ -n $at ]]; then
      echo "$at"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# ship_once: one timed `usaged ship` of the journal into emptied tables; its figures kept
# (ship_rate, ship_us, pg_us, ship_rows) and printed.
ship_once() {
  local progress="$WORK/progress-$run.txt" limit=$((60 + N / 10000)) t0 at p0 p1 c1 watch pid rows rate
  empty_tables
  rm -f "$JOURNAL/SHIPPED"
  : >"$progress"
  timeout "$((limit + 30))" "${PSQL[@]}" >"$progress" 2>"$WORK/progress-$run.err" \
    <<<"SELECT extract(epoch FROM clock_timestamp()), coalesce(sum(shipped), 0) FROM usaged_shipped \\watch 0.05" &
  watch=$!
  p0=$(pg_ticks)
  t0=$(now)
  timeout "$((limit + 30))" "$RELEASE/usaged" ship --data-dir "$JOURNAL" --to "$PG_URL" \
    2>"$WORK/ship-$run.err" &
  pid=$!
  rate=n/a c1='' p1=''
  if at=$(wait_shipped "$progress" "$N" "$limit" "$pid"); then
    c1=$(cpu_ticks "$pid") p1=$(pg_ticks)
    rate=$(awk -v n="$N" -v a="$t0" -v b="$at" 'BEGIN {if (b > a) printf "%.0f", n / (b - a); else print "n/a"}')
  fi
  kill "$pid" "$watch" 2>/dev/null || true
  wait "$pid" "$watch" 2>/dev/null || true
  rows=$(sql "SELECT count(*) FROM usages")
  keep ship_rate "$rate"
  keep ship_rows "$rows"
  if [[ -n $c1 ]]; then
    keep ship_us "$(per_usage "$c1" "$N")"
    keep pg_us "$(per_usage "$((p1 - p0))" "$N")"
  fi
  printf '  usaged ship run %d: %s usages/s  shipper %s, PostgreSQL %s µs CPU/usage  %s rows in usages%s\n' \
    "$run" "$rate" "$(per_usage "${c1:-0}" "$N")" "$(per_usage "$((${p1:-$p0} - p0))" "$N")" "$rows" \
    "$([[ $rate != n/a && $rows == "$N" ]] || echo "  FAILED (see raw/ship-$run.err)")"
}

# --- 2. Cost to the server ---------------------------------------------------------------------

# drained PORT STORED LIMIT: seconds from now until usaged_ship_rows_total reaches STORED (polled
# every 50 ms, LIMIT seconds at most), or n/a.
drained() {
  local t0 end=$((SECONDS + $3)) rows
  t0=$(now)
  while ((SECONDS < end)); do
    rows=$(metric "$1" usaged_ship_rows_total)
    if ((${rows:-0} >= $2)); then
      awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'
      return 0
    fi
    sleep 0.05
  done
  echo n/a
}

# serve_once MODE: one keep-alive run against a fresh server, MODE plain or ship (--ship-to);
# rows in WORK/rows.txt ("server MODE rps µs errors p50 p99"), the rest kept, a line printed.
serve_once() {
  local mode=$1 flags=(--threads 1) s0 s1 p0 p1 lag=n/a drain=n/a shipped stored rows bad=0
  if [[ $mode == ship ]]; then
    empty_tables
    flags+=(--ship-to "$PG_URL")
  fi
  start_usaged "$server_cpu" "${flags[@]}"
  if [[ $mode == ship ]]; then
    for _ in $(seq 200); do [[ $(metric "$USAGED_PORT" usaged_ship_connected) == 1 ]] && break; sleep 0.05; done
  fi
  s0=$(ship_thread_ticks "$USAGED_PID") p0=$(pg_ticks)
  wrk_run "$USAGED_PID" "$WORK/$mode-$run.txt" "$conns" post.lua "$USAGED_PORT"
  s1=$(ship_thread_ticks "$USAGED_PID") p1=$(pg_ticks)
  echo "server $mode $RPS $CPU_US $ERRORS $P50 $P99" >>"$WORK/rows.txt"
  keep "pg_load_$mode" "$(per_request "$((p1 - p0))" "$REQS")"
  if [[ $mode == ship ]]; then
    keep thread_load "$(per_request "$((s1 - s0))" "$REQS")"
    lag=$(metric "$USAGED_PORT" usaged_ship_lag_usages)
    stored=$(metric "$USAGED_PORT" usaged_usages_stored_total)
    rows=$(metric "$USAGED_PORT" usaged_ship_rows_total)
    drain=$(drained "$USAGED_PORT" "${stored:-0}" 120)
    shipped=$(sql "SELECT coalesce(sum(shipped), 0) FROM usaged_shipped")
    [[ $drain != n/a && $shipped == "$stored" ]] || bad=1
    s1=$(ship_thread_ticks "$USAGED_PID") p1=$(pg_ticks)
    keep lag_end "${lag:-n/a}"
    keep unshipped_end "$((${stored:-0} - ${rows:-0}))"
    keep drain_s "$drain"
    keep thread_total "$(per_usage "$((s1 - s0))" "$stored")"
    keep pg_total "$(per_usage "$((p1 - p0))" "$stored")"
    ((bad == 0)) || keep failed_ship 1
  fi
  stop_usaged
  printf '  %-6s run %d: %8.0f req/s  %7s µs CPU/req  at the end: lag gauge %s, unshipped %s, all shipped %s s later%s\n' \
    "$mode" "$run" "$RPS" "$CPU_US" "${lag:-n/a}" "$( [[ $mode == plain ]] && echo n/a || echo $((${stored:-0} - ${rows:-0})))" "$drain" \
    "$([[ $ERRORS == 0 && $bad == 0 ]] || echo "  FAILED ($ERRORS errors; shipped ${shipped:-?} of ${stored:-?})")"
}

# --- The runs ----------------------------------------------------------------------------------

start_pg
echo "1. shipping throughput"
build_journal
meta "journal" "$N usages from the release server (pipelined POSTs), $(find "$JOURNAL" -name '*.seg' | wc -l) segments"
for run in $(seq 1 "$runs"); do ship_once; done
rm -rf "$JOURNAL"
echo "2. cost to the server"
for run in $(seq 1 "$runs"); do
  for mode in plain ship; do serve_once "$mode"; done
done

# --- Summary -----------------------------------------------------------------------------------

rate=$(xmed ship_rate)
verdict=$(awk -v r="$rate" -v t="$TARGET_RATE" 'BEGIN {if (r ~ /^[0-9.]+$/) print (r >= t ? "pass" : "miss"); else print "n/a"}')
ship_status=ok
if awk -v n="$N" '$1 == "ship_rate" && $2 == "n/a" || $1 == "ship_rows" && $2 != n {f = 1} END {exit !f}' "$WORK/extra.txt"; then
  ship_status=FAILED
fi
rps0=$(med 3 server plain) cpu0=$(med 4 server plain)
{
  echo "### 1. Shipping throughput: \`usaged ship\` of a $N-usage journal into empty tables"
  echo
  table_head "usages/s>" "target>" result "shipper µs/usage>" "PostgreSQL µs/usage>" status
  echo "| $(num %.0f "$rate") | ≥ $TARGET_RATE | $verdict | $(num %.3f "$(xmed ship_us)") |" \
    "$(num %.3f "$(xmed pg_us)") | $ship_status |"
  echo
  echo "### 2. Cost to the server: keep-alive POST, one worker, without and with \`--ship-to\`"
  echo
  table_head server "req/s>" "× without>" "server µs/req>" "× without>" "shipper thread µs/req>" \
    "PostgreSQL µs/req>" "lag gauge at end>" "unshipped at end>" "all shipped after (s)>" "shipper µs/usage>" "PostgreSQL µs/usage>" \
    "p99>" status
  for mode in plain ship; do
    r=$(med 3 server $mode) c=$(med 4 server $mode) st=$(status server $mode)
    [[ $mode == plain ]] || ! grep -q '^failed_ship ' "$WORK/extra.txt" || st=FAILED
    if [[ $mode == plain ]]; then
      label="without --ship-to" t=n/a lag=n/a un=n/a drain=n/a tt=n/a pt=n/a
    else
      label="with --ship-to" t=$(xmed thread_load) lag=$(xmed lag_end) un=$(xmed unshipped_end)
      drain=$(xmed drain_s)
      tt=$(xmed thread_total) pt=$(xmed pg_total)
    fi
    echo "| $label | $(num %.0f "$r") | $(ratio "$r" "$rps0") | $(num %.2f "$c") | $(ratio "$c" "$cpu0") |" \
      "$(num %.2f "$t") | $(num %.2f "$(xmed "pg_load_$mode")") | $(num %.0f "$lag") | $(num %.0f "$un") | $(num %.2f "$drain") |" \
      "$(num %.2f "$tt") | $(num %.2f "$pt") | $(unit "$(med 7 server $mode)" ms) | $st |"
  done
  echo
  echo "Medians of $runs runs ($N usages shipped per run in part 1; ${secs} s of load per run in part 2,"
  echo "$conns connections). Pinning: $pinning. CPU: utime+stime from /proc (PostgreSQL: every"
  echo "process of the cluster). Part 2's server µs/req covers the load only (the shipper thread's"
  echo "share shown beside it). At the end of the load: the lag gauge \`usaged_ship_lag_usages\`"
  echo "(records seen on disk at the shipper's last look and not shipped) and the usages stored but"
  echo "not shipped (\`usaged_usages_stored_total\` − \`usaged_ship_rows_total\`); \"all shipped after\":"
  echo "seconds from the load's end until that difference was 0. The µs/usage columns run from the"
  echo "load's start until then."
} | tee "$OUT/summary.md"
echo "results in $OUT"
! grep -q FAILED "$OUT/summary.md"

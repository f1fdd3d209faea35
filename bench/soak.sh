#!/usr/bin/env bash
# usage: bench/soak.sh [-n USAGES] [--cache SIZE] [--reads N] [--sample SECS] [--server-cpu N] [--load-cpu N]
#
# The long run: does usaged stay within its memory budget, keep its speed and start fast with a
# large journal? One worker (--threads 1 --cache SIZE, journal on, --sync interval) pinned to the
# server CPU, wrk -t1 -c64 pinned to the load CPU:
#  1. Refuses (exit 2) when the data directory's filesystem has under 45 B per usage free.
#  2. Posts README-shaped usages (bench/pipeline.lua, 16 deep) in runs of SECS (default 10) s
#     until usaged_usages_stored_total >= USAGES (default 300,000,000); after each run a row
#     of soak.csv: t_s, usages, rss_bytes (VmRSS), cache_bytes (usaged_cache_bytes, else
#     usaged_arena_bytes, else n/a), disk_bytes (du -sb), segments (*.seg), req_per_s (wrk's).
#  3. Reads (examples/loadgen --get-random, closed loop, one connection): N (default 10,000)
#     GETs of random "cold" ids (the first 40 % of those stored) and N of "hot" ids (the last
#     1,000,000), p50/p99 and non-200 answers; once on the running server, once after 4.
#  4. SIGTERM, then a restart on the same journal: milliseconds from the exec to the
#     `listening on` line, and the recovery line usaged prints.
# Summary against: max RSS <= cache SIZE (default 256MiB) + 64 MiB; req/s of the last 10 % of
# the runs >= 0.9 x the first 10 %; restart < 1000 ms; no failed request. A plot (soak.svg) of
# RSS, cache and disk, and of req/s, against usages stored, when gnuplot is there.
# Results in bench/results/<UTC stamp>-<host>-soak/: summary.txt, soak.csv, soak.svg, meta.txt,
# raw/ (wrk and usaged output; the journal is deleted at exit). Exit 1 when a check fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

usages=300000000 cache=256MiB reads=10000 sample=10 server_cpu=0 load_cpu=1
option() {
  case $1 in
    -n) usages=${2-} TAKES=2 ;;
    --cache) cache=${2-} TAKES=2 ;;
    --reads) reads=${2-} TAKES=2 ;;
    --sample) sample=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
numbers usages reads sample

DISK_PER_USAGE=45      # journal bytes per usage, with room to spare (records + index)
OVERHEAD_MIB=64        # what the process may hold beyond the cache (code, buffers, index, ...)
HOT_IDS=1000000        # "hot": the last this many ids
COLD_PERCENT=40        # "cold": the first this many percent of the ids
READ_CONNS=1           # one read at a time: the latency of a read, not of a queue
CONNS=64 depth=16      # the writers: wrk -c64, 16 requests per write
MIB=1048576

# --- Helpers -----------------------------------------------------------------------------------

# size_bytes SIZE: usaged's SIZE (65536, 64KiB, 256MiB, 1GiB, ...) in bytes; fails otherwise.
size_bytes() {
  local n unit
  [[ $1 =~ ^([0-9]+)(B|KiB|MiB|GiB|TiB)?$ ]] || return 1
  n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
  case $unit in
    KiB) n=$((n << 10)) ;;
    MiB) n=$((n << 20)) ;;
    GiB) n=$((n << 30)) ;;
    TiB) n=$((n << 40)) ;;
  esac
  echo "$n"
}

# check_disk DIR: exit 2 (one line) unless DIR's filesystem has DISK_PER_USAGE bytes free per usage.
check_disk() {
  local need=$((DISK_PER_USAGE * usages)) free
  free=$(df -B1 --output=avail "$1" | tail -1 | tr -d ' ')
  if ((free < need)); then
    echo "soak: $usages usages need $(mib "$need") MiB free in $1 ($DISK_PER_USAGE B each); it has $(mib "$free") MiB" >&2
    exit 2
  fi
}

# mib BYTES: in MiB, one decimal (n/a stays n/a).
mib() {
  awk -v b="$1" 'BEGIN {if (b ~ /^[0-9]+$/) printf "%.1f", b / 1048576; else printf "n/a"}'
}

# now_us: the wall clock in µs ($EPOCHREALTIME without its decimal point, whatever the locale).
now_us() {
  echo "${EPOCHREALTIME/[.,]/}"
}

# ms_since T0: milliseconds since T0 (a now_us), one decimal.
ms_since() {
  local d=$(($(now_us) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# start_server NAME: usaged --threads 1 --cache SIZE on DATA (kept as it is: a restart recovers
# it), pinned to server_cpu, on a port the kernel picks, stderr in WORK/NAME.err. Waits for its
# `listening on` line however long recovery takes (unless it exits), polling every 2 ms; sets
# USAGED_PID, USAGED_PORT, USAGED_LOG and START_MS (from just before the exec to that line).
# lib.sh's start_usaged would delete the journal and give up after 5 s.
start_server() {
  local t0 line
  t0=$(now_us)
  USAGED_LOG="$WORK/$1.err"
  taskset -c "$server_cpu" "$RELEASE/usaged" --port 0 --bind 127.0.0.1 --threads 1 --cache "$cache" \
    --data-dir "$DATA" 2>"$USAGED_LOG" &
  USAGED_PID=$!
  while :; do
    # The whole line: stderr is unbuffered, so it may be read half written.
    line=$(grep -m1 '^listening on .* workers)$' "$USAGED_LOG" || true)
    if [[ -n $line ]]; then
      START_MS=$(ms_since "$t0")
      USAGED_PORT=$(sed 's/^listening on [0-9.]*:\([0-9]*\).*/\1/' <<<"$line")
      return 0
    fi
    kill -0 "$USAGED_PID" 2>/dev/null || { cat "$USAGED_LOG" >&2; return 1; }
    sleep 0.002
  done
}

# stop_server: SIGTERM, and wait for it to exit (its status, if not 0, is printed).
stop_server() {
  local rc=0
  kill -TERM "$USAGED_PID"
  wait "$USAGED_PID" || rc=$?
  ((rc == 0)) || echo "  usaged exited with status $rc (see $USAGED_LOG)"
}

# scrape: the server's /metrics into METRICS.
scrape() {
  METRICS=$(curl -sf --max-time 10 "http://127.0.0.1:$USAGED_PORT/metrics")
}

# metric NAME: NAME's value (a metric without labels) in the last scrape; empty if absent.
metric() {
  awk -v n="$1" '$1 == n {print $2; exit}' <<<"$METRICS"
}

# cache_bytes: usaged_cache_bytes, else usaged_arena_bytes, else n/a (last scrape).
cache_bytes() {
  local v
  v=$(metric usaged_cache_bytes)
  [[ -n $v ]] || v=$(metric usaged_arena_bytes)
  echo "${v:-n/a}"
}

# note_rss: the server's RSS in bytes into RSS, and the largest seen into MAX_RSS.
MAX_RSS=0
note_rss() {
  RSS=$(($(rss_kib "$USAGED_PID") * 1024))
  ((RSS <= MAX_RSS)) || MAX_RSS=$RSS
}

# --- The phases --------------------------------------------------------------------------------

# load: wrk runs of `sample` s until usaged_usages_stored_total >= usages, a CSV row before the
# first (req/s n/a) and after each.
# Stops early (LOAD_FAILED) when the server dies or a run stores nothing. Sets STORED, and
# LOAD_ERRORS (failed requests over all runs).
load() {
  local t0 run=0 before t_s
  t0=$(now_us)
  STORED=0 LOAD_ERRORS=0 LOAD_FAILED=''
  echo "t_s,usages,rss_bytes,cache_bytes,disk_bytes,segments,req_per_s" >"$CSV"
  scrape
  STORED=$(metric usaged_usages_stored_total)
  note_rss
  ERRORS=0
  sample_row 0.0 n/a
  while ((STORED < usages)); do
    run=$((run + 1)) before=$STORED
    secs=$sample wrk_run "$USAGED_PID" "$WORK/wrk-$run.txt" "$CONNS" pipeline.lua "$USAGED_PORT"
    kill -0 "$USAGED_PID" 2>/dev/null || { LOAD_FAILED="usaged exited"; cat "$USAGED_LOG" >&2; return 0; }
    LOAD_ERRORS=$((LOAD_ERRORS + ERRORS))
    t_s=$(($(now_us) - t0))
    t_s=$((t_s / 1000000)).$((t_s % 1000000 / 100000))
    scrape
    STORED=$(metric usaged_usages_stored_total)
    note_rss
    sample_row "$t_s" "$RPS"
    if ((STORED <= before)); then
      LOAD_FAILED="run $run stored nothing (see $WORK/wrk-$run.txt)"
      return 0
    fi
  done
}

# sample_row T_S RPS: one soak.csv row (the last scrape, RSS, the journal now), also printed.
sample_row() {
  local cache disk segs
  cache=$(cache_bytes)
  disk=$(du -sb "$DATA" | cut -f1)
  segs=$(find "$DATA" -name '*.seg' | wc -l)
  echo "$1,$STORED,$RSS,$cache,$disk,$segs,$2" >>"$CSV"
  printf '  %7s s: %11d usages  RSS %8s MiB  cache %8s MiB  disk %9s MiB  %4d segments  %8s req/s%s\n' \
    "$1" "$STORED" "$(mib "$RSS")" "$(mib "$cache")" "$(mib "$disk")" "$segs" "$(num %.0f "$2")" \
    "$( ((ERRORS == 0)) || echo "  $ERRORS failed requests")"
}

# read_ids KIND WHEN LO HI: `reads` GETs of ids drawn uniformly from LO..=HI; a row
# "KIND WHEN LO HI p50_ms p99_ms failed" in WORK/reads.txt (failed: non-200 answers and requests
# that failed or went unanswered; everything when loadgen itself failed).
read_ids() {
  local kind=$1 when=$2 lo=$3 hi=$4 raw="$WORK/reads-$1-$2.txt" p50 p99 failed
  taskset -c "$load_cpu" "$LOADGEN" --port "$USAGED_PORT" --get-random "$lo..$hi" --count "$reads" \
    --conns "$READ_CONNS" --duration 600 >"$raw" 2>&1 || true
  p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' "$raw")
  p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' "$raw")
  failed=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' "$raw")
  if [[ -z $failed ]]; then p50='' p99='' failed=$reads; fi
  p50=$(awk -v u="$p50" 'BEGIN {if (u != "") printf "%.3f", u / 1000; else printf "n/a"}')
  p99=$(awk -v u="$p99" 'BEGIN {if (u != "") printf "%.3f", u / 1000; else printf "n/a"}')
  echo "$kind $when $lo $hi $p50 $p99 $failed" >>"$WORK/reads.txt"
  printf '  %-4s reads %-9s (ids %d..%d): p50 %s ms  p99 %s ms  %d failed\n' "$kind" "$when" "$lo" "$hi" \
    "$p50" "$p99" "$failed"
  note_rss
}

# reads WHEN: cold and hot reads of the ids the first run stored (1..=STORED: one worker, one
# epoch; ids a restart hands out may start past a new base, so they are not used).
reads() {
  local cold_hi=$((STORED * COLD_PERCENT / 100)) hot_lo=$((STORED > HOT_IDS ? STORED - HOT_IDS + 1 : 1))
  ((cold_hi >= 1)) || cold_hi=1
  read_ids cold "$1" 1 "$cold_hi"
  read_ids hot "$1" "$hot_lo" "$STORED"
}

# check_ids: warn when id STORED (the last one stored) is not there: the reads assume 1..=STORED.
check_ids() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$USAGED_PORT/api/usages/$STORED")
  [[ $code == 200 ]] || echo "  warning: GET of id $STORED answered $code: the ids are not 1..$STORED" >&2
}

# plot: soak.svg from soak.csv (RSS, cache, budget and disk; req/s; against millions of usages).
plot() {
  if ! command -v gnuplot >/dev/null; then
    echo "  no gnuplot: no soak.svg" | tee -a "$SUMMARY"
    return 0
  fi
  # MiB axis: room above the highest of RSS and the budget line.
  local top
  top=$(awk -v r="$MAX_RSS" -v b=$((BUDGET + OVERHEAD_MIB * MIB)) 'BEGIN {printf "%.0f", (r > b ? r : b) * 1.15 / 1048576}')
  gnuplot <<GP
set terminal svg size 900,720 dynamic font "sans,12"
set output "$OUT/soak.svg"
set datafile separator ","; set datafile missing "n/a"
set multiplot layout 2,1 title "Soak: usaged --threads 1 --cache $cache (journal on), wrk -t1 -c$CONNS pipelined $depth deep"
set xrange [0:*]; set grid; set key below
set ylabel "MiB"; set yrange [0:$top]; set y2label "disk GiB"; set y2range [0:*]; set y2tics; set ytics nomirror
plot "$CSV" skip 1 using (\$2/1e6):(\$3/$MIB) with linespoints lw 2 pt 7 ps 0.3 title "RSS", \
     "" skip 1 using (\$2/1e6):(\$4/$MIB) with linespoints pt 7 ps 0.3 title "cache", \
     ($BUDGET.0 / $MIB) with lines dt 2 lc "black" title "cache budget", \
     ($BUDGET.0 / $MIB + $OVERHEAD_MIB) with lines dt 3 lc "red" title "budget + $OVERHEAD_MIB MiB", \
     "" skip 1 using (\$2/1e6):(\$5/1073741824) axes x1y2 with linespoints pt 7 ps 0.3 title "disk (right axis)"
unset y2label; unset y2tics; set ytics mirror
set xlabel "usages stored (millions)"; set ylabel "requests/s"; set yrange [0:*]; set key inside bottom left
plot "$CSV" skip 1 using (\$2/1e6):7 with linespoints pt 7 ps 0.4 title "req/s of each ${sample} s run"
unset multiplot
GP
}

# first_last: mean req/s of the first and of the last 10 % of the runs (at least one each).
first_last() {
  awk -F, 'NR > 1 && $7 ~ /^[0-9.]+$/ {r[++n] = $7} END {
    k = int(n / 10); if (k < 1) k = 1
    for (i = 1; i <= k; i++) {f += r[i]; l += r[n - k + i]}
    if (n == 0) print "n/a n/a"; else printf "%.0f %.0f\n", f / k, l / k }' "$CSV"
}

# check NAME OK DETAIL: a PASS line when OK is 1, else a FAIL line.
check() {
  if [[ $2 == 1 ]]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fi
}

# summary: the figures and the checks, into SUMMARY.
summary() {
  local first last ratio_fl failed
  read -r first last < <(first_last)
  ratio_fl=$(ratio "$last" "$first")
  failed=$(awk '{s += $7} END {print s + 0}' "$WORK/reads.txt")
  {
    echo "usages stored: $STORED (wrk runs of ${sample} s: $(($(wc -l <"$CSV") - 2)))"
    echo "max RSS: $(mib "$MAX_RSS") MiB; cache budget $(mib "$BUDGET") MiB; RSS - budget: $(mib_signed $((MAX_RSS - BUDGET))) MiB"
    echo "req/s: first 10 % of runs $first, last 10 % $last (last/first $ratio_fl)"
    echo "journal: $(mib "$DISK_END") MiB on disk ($(awk -v d="$DISK_END" -v n="$STORED" 'BEGIN {if (n > 0) printf "%.1f", d / n}') B per usage), $SEGS_END segments"
    echo "restart: $RESTART_MS ms from exec to 'listening on'; recovery: ${RECOVERY_LINE:-n/a}"
    echo "reads ($reads each, $READ_CONNS connection, closed loop; p50 / p99 ms; failed = non-200 or no answer):"
    awk '{printf "  %-4s %-9s ids %d..%d: p50 %s ms, p99 %s ms, %d failed\n", $1, $2, $3, $4, $5, $6, $7}' "$WORK/reads.txt"
    echo
    check "memory" "$((MAX_RSS <= BUDGET + OVERHEAD_MIB * MIB))" "max RSS $(mib "$MAX_RSS") MiB <= budget + $OVERHEAD_MIB MiB = $(mib $((BUDGET + OVERHEAD_MIB * MIB))) MiB"
    check "speed" "$(awk -v r="$ratio_fl" 'BEGIN {print (r ~ /^[0-9.]+$/ && r >= 0.9) ? 1 : 0}')" "last/first req/s $ratio_fl >= 0.9"
    check "restart" "$(awk -v m="$RESTART_MS" 'BEGIN {print (m < 1000) ? 1 : 0}')" "$RESTART_MS ms < 1000 ms"
    check "load" "$([[ -z $LOAD_FAILED && $LOAD_ERRORS == 0 && $STORED -ge $usages ]] && echo 1 || echo 0)" \
      "$LOAD_ERRORS failed POSTs, ${LOAD_FAILED:-$STORED >= $usages stored}"
    check "reads" "$((failed == 0))" "$failed non-200 or failed GETs"
  } | tee -a "$SUMMARY"
}

# mib_signed BYTES: in MiB, one decimal, with its sign.
mib_signed() {
  awk -v b="$1" 'BEGIN {printf "%+.1f", b / 1048576}'
}

# --- Main --------------------------------------------------------------------------------------

BUDGET=$(size_bytes "$cache") || usage
mkdir -p "$ROOT/bench/results"
check_disk "$ROOT/bench/results"

need wrk wrk
need curl curl
need gnuplot gnuplot-nox || true
build --release
build --release --example loadgen
LOADGEN="$RELEASE/examples/loadgen"
new_results -soak "mode=soak: POST until $usages usages are stored, reads, restart" "cache=$cache" \
  "load=wrk -t1 -c$CONNS, pipelined $depth deep, runs of $sample s" "reads=$reads cold and $reads hot, $READ_CONNS connection" \
  "pinning=usaged --threads 1 on CPU $server_cpu, wrk -t1 and loadgen on CPU $load_cpu"
DATA="$WORK/soak-data" CSV="$OUT/soak.csv" SUMMARY="$OUT/summary.txt"
AT_EXIT+=("rm -rf $(printf %q "$DATA")")
: >"$SUMMARY"

echo "loading $usages usages (journal in $DATA)"
start_server run1
echo "  first start: $START_MS ms"
load
if [[ -n $LOAD_FAILED ]]; then echo "  load stopped: $LOAD_FAILED"; fi
kill -0 "$USAGED_PID" 2>/dev/null || { echo "usaged is gone; see $USAGED_LOG" >&2; exit 1; }
check_ids
echo "reads while running"
reads running
DISK_END=$(du -sb "$DATA" | cut -f1)
SEGS_END=$(find "$DATA" -name '*.seg' | wc -l)
echo "stopping (SIGTERM) and restarting"
stop_server
start_server run2
RESTART_MS=$START_MS
RECOVERY_LINE=$(grep -i -m1 'recover' "$USAGED_LOG" || true)
echo "  restart: $RESTART_MS ms; ${RECOVERY_LINE:-no recovery line}"
echo "reads after the restart"
reads restarted
stop_server
plot
echo
summary
echo "results in $OUT"
! grep -q '^FAIL' "$SUMMARY"

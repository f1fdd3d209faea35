#!/usr/bin/env bash
# usage: bench/run.sh [--full | --quick | --smoke] [--server-cpus LIST] [--load-cpus LIST] [-d SECS] [-r RUNS]
#
# Every scenario against usaged and, in the same run, against nginx (bench/nginx.conf: one
# worker per server CPU, `return 201 '{"id":1}'`), servers pinned to --server-cpus (default 0),
# wrk and the fixed-rate loader to --load-cpus (default 1):
#   keep-alive POST (64 conns), pipelined POST (16 deep), one request per connection,
#   connections 1 … 10,000, workers 1 … server CPUs, bodies of 100 B / 4 KiB / 60 KiB,
#   a 90/10 GET/POST mix, and latency at 25/50/75 % of usaged's keep-alive capacity
#   (examples/loadgen: fixed rate, corrected for coordinated omission).
# Each row: requests/s, p50/p99 latency, errors, server CPU time per request (utime+stime of
# all its threads/processes over the run, from /proc), and usaged/nginx ratios. A row with a
# non-2xx answer or a socket error is marked FAILED, never averaged in.
#   --full   3 runs of 10 s per row, medians (about 20 minutes)   [default]
#   --quick  1 run of 2 s per row (under 2 minutes)
#   --smoke  1 run of 1 s per row: keeps the scripts working (CI)
# Results: bench/results/<UTC stamp>-<host>/: results.csv, results.md, meta.txt (mode, duration,
# runs, command, commit, machine), plots (SVG: req/s against connections, latency against the
# target rate, server CPU µs per request), raw/ (loaders' output; the journal is deleted).
# Latency that the loader cannot time is n/a: wrk times a pipelined batch once, not each request.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

mode=full secs='' runs='' server_cpus=0 load_cpus=1
option() {
  case $1 in
    --full|--quick|--smoke) mode=${1#--} TAKES=1 ;;
    --server-cpus) server_cpus=${2-} TAKES=2 ;;
    --load-cpus) load_cpus=${2-} TAKES=2 ;;
  esac
}
parse_options "$@"
case $mode in
  full) secs=${secs:-10} runs=${runs:-3} ;;
  quick) secs=${secs:-2} runs=${runs:-1} ;;
  smoke) secs=${secs:-1} runs=${runs:-1} ;;
esac
numbers secs runs
load_cpu=$load_cpus # where wrk_run pins wrk

ensure_tools
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
build --release
build --release --example loadgen
LOADGEN="$RELEASE/examples/loadgen"
new_results "" "mode=$mode" "duration=${secs} s per run" "runs=$runs per row (medians)" \
  "pinning=servers on CPUs $server_cpus, wrk -t1 and loadgen on CPUs $load_cpus"

# CPU lists → counts (e.g. "0-1,4" → 3).
count_cpus() { taskset -c "$1" nproc; }
n_server=$(count_cpus "$server_cpus")

# Bodies for the size rows: valid usages padded with an unknown key to the exact size.
for size in 100 4096 61440; do
  python3 -c '
import sys
size = int(sys.argv[1])
head = "{\"patientId\":\"100\",\"timestamp\":1478009511000,\"medication\":\"Albuterol\",\"note\":\""
tail = "\"}"
sys.stdout.write(head + "x" * (size - len(head) - len(tail)) + tail)' "$size" >"$WORK/body-$size.json"
done

# The rows, in order: "name|kind|conns|body" (kind: wrk SCRIPT, workers N, or rate PERCENT;
# body: the file body.lua posts).
rows=(
  "keepalive|wrk post.lua|64|"
  "pipelined-16|wrk pipeline.lua|64|"
  "close|wrk close.lua|64|"
)
for c in 1 8 64 256 1024 10000; do rows+=("conns-$c|wrk post.lua|$c|"); done
for size in 100 4096 61440; do rows+=("body-$size|wrk body.lua|64|$WORK/body-$size.json"); done
rows+=("mix-90get-10post|wrk mix.lua|64|")
for pct in 25 50 75; do rows+=("rate-$pct|rate $pct|64|"); done

if ((n_server > 1)); then
  for w in $(seq 1 "$n_server"); do rows+=("workers-$w|workers $w|64|"); done
else
  echo "worker sweep skipped: --server-cpus $server_cpus is a single CPU" | tee "$OUT/notes.txt"
fi

total_runs=$((${#rows[@]} * runs * 2))
done_runs=0
started=$(date +%s)
progress() {
  done_runs=$((done_runs + 1))
  local el=$(($(date +%s) - started))
  local left=$((el * (total_runs - done_runs) / done_runs))
  printf '[%d/%d] %-22s %-6s %s  (~%ds left)\n' "$done_runs" "$total_runs" "$1" "$2" "$3" "$left"
}

# loadgen_run PID RAW RATE CONNS PORT: as wrk_run, with examples/loadgen at a fixed RATE (each
# latency from the request's scheduled send, so a stall counts in full); sets P999 too.
loadgen_run() {
  local pid=$1 raw=$2 rate=$3 conns=$4 port=$5 t0 t1
  t0=$(cpu_ticks "$pid")
  taskset -c "$load_cpu" "$LOADGEN" --port "$port" --rate "$rate" --conns "$conns" --duration "$secs" >"$raw" 2>&1 || true
  t1=$(cpu_ticks "$pid")
  field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" "$raw"; }
  ms() { field "$1" | awk '{printf "%.3f", $1 / 1000}'; }
  RPS=$(field rate) REQS=$(field requests) ERRORS=$(field errors)
  P50=$(ms p50_us) P99=$(ms p99_us) P999=$(ms p999_us)
  if [[ -z $RPS || ${REQS:-0} == 0 ]]; then
    RPS=0 REQS=0 P50=n/a P99=n/a P999=n/a
    ((${ERRORS:-0} > 0)) || ERRORS=1
  fi
  CPU_US=$(per_request "$((t1 - t0))" "$REQS")
}

# measure NAME SERVER PID PORT KIND CONNS BODY RUN: one run; appends a CSV line to raw/runs.csv.
measure() {
  local name=$1 server=$2 pid=$3 port=$4 kind=$5 conns=$6 body=$7 run=$8
  local raw="$WORK/$name-$server-$run.txt" rate=''
  P999=n/a
  case $kind in
    rate\ *)
      rate=$(awk -v c="$CAPACITY" -v p="${kind#rate }" 'BEGIN {printf "%.0f", c * p / 100}')
      loadgen_run "$pid" "$raw" "$rate" "$conns" "$port"
      ;;
    workers\ *) wrk_run "$pid" "$raw" "$conns" post.lua "$port" --timeout 5s ;;
    *) BODY_FILE=$body wrk_run "$pid" "$raw" "$conns" "${kind#wrk }" "$port" --timeout 5s ;;
  esac
  echo "$name,$server,$conns,$rate,$RPS,$P50,$P99,$P999,$ERRORS,$CPU_US,$run" >>"$WORK/runs.csv"
  progress "$name" "$server" "$(printf '%.0f req/s%s' "$RPS" "$([[ $ERRORS == 0 ]] || echo "  FAILED ($ERRORS errors)")")"
}

start_servers() {  # CPUS WORKERS
  if [[ -n ${USAGED_PID:-} ]]; then
    stop_usaged
    kill "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
  fi
  start_usaged "$1" --threads "$2"
  start_nginx "$1" "$2"
  # Warm up both and store the ids the GET mix reads.
  for port in "$USAGED_PORT" "$NGINX_PORT"; do
    taskset -c "$load_cpus" wrk -t1 -c16 -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:$port/api/usages" >/dev/null
  done
}

CAPACITY=0
start_servers "$server_cpus" "$n_server"
[[ $n_server == 1 ]] || echo "note: rows other than workers-N run with $n_server workers each" >>"$OUT/notes.txt"
for row in "${rows[@]}"; do
  IFS='|' read -r name kind conns body <<<"$row"
  if [[ $kind == workers* ]]; then
    w=${kind#workers }
    cpus=$(taskset -c "$server_cpus" python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))[:'"$w"']))')
    start_servers "$cpus" "$w"
  fi
  for run in $(seq 1 "$runs"); do
    measure "$name" usaged "$USAGED_PID" "$USAGED_PORT" "$kind" "$conns" "$body" "$run"
    measure "$name" nginx "$NGINX_PID" "$NGINX_PORT" "$kind" "$conns" "$body" "$run"
  done
  if [[ $name == keepalive ]]; then
    CAPACITY=$(awk -F, '$1 == "keepalive" && $2 == "usaged" {print $5}' "$WORK/runs.csv" | median)
  fi
done

# Medians per (row, server); a row with errors in any run is FAILED; n/a where nothing was
# measured (the CSV says n/a too).
python3 - "$WORK/runs.csv" "$OUT" <<'PY'
import csv, statistics, sys
runs_csv, out = sys.argv[1], sys.argv[2]
cols = ["scenario", "server", "connections", "rate", "rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_us_per_req", "run"]
rows = [dict(zip(cols, r)) for r in csv.reader(open(runs_csv))]
order, groups = [], {}
for r in rows:
    key = (r["scenario"], r["server"])
    if key not in groups:
        groups[key] = []
        order.append(key)
    groups[key].append(r)
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] not in ("", "n/a", None)]
    return statistics.median(v) if v else None
def fmt(v, d=3):
    return "n/a" if v is None else f"{v:.{d}f}"
summary = {}
with open(f"{out}/results.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["scenario", "server", "connections", "rate", "rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_us_per_req", "status"])
    for key in order:
        rs = groups[key]
        errors = sum(int(r["errors"] or 0) for r in rs)
        status = "ok" if errors == 0 else "FAILED"
        s = {k: med(rs, k) for k in ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_req"]}
        s.update(errors=errors, status=status, connections=rs[0]["connections"], rate=rs[0]["rate"])
        summary[key] = s
        w.writerow([key[0], key[1], s["connections"], s["rate"], fmt(s["rps"], 0), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
                    fmt(s["p999_ms"]), errors, fmt(s["cpu_us_per_req"]), status])
def num(v, d=0):
    return "n/a" if v is None else f"{v:,.{d}f}"
def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"
def lat(s):
    text = f"{fmt(s['p50_ms'])} / {fmt(s['p99_ms'])}"
    return text + (f" (p99.9 {s['p999_ms']:.3f})" if s["p999_ms"] is not None else "")
lines = ["| scenario | conns | usaged req/s | nginx req/s | ratio | usaged p50 / p99 ms | nginx p50 / p99 ms | usaged CPU µs/req | nginx CPU µs/req | CPU ratio | status |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
names = list(dict.fromkeys(k[0] for k in order))
for name in names:
    u, n = summary.get((name, "usaged")), summary.get((name, "nginx"))
    label = name + (f" @ {u['rate']}/s" if u["rate"] else "")
    status = "ok" if u["status"] == n["status"] == "ok" else \
        "FAILED: " + ", ".join(f"{s} {x['errors']} errors" for s, x in (("usaged", u), ("nginx", n)) if x["status"] != "ok")
    lines.append(f"| {label} | {u['connections']} | {num(u['rps'])} | {num(n['rps'])} | {ratio(u['rps'], n['rps'])} | {lat(u)} | {lat(n)} | "
                 f"{num(u['cpu_us_per_req'], 2)} | {num(n['cpu_us_per_req'], 2)} | {ratio(u['cpu_us_per_req'], n['cpu_us_per_req'])} | {status} |")
lines += ["", "Latency: wrk's round trip per request (closed loop), or, in the rate rows, examples/loadgen's from each",
          "request's scheduled send (corrected for coordinated omission). n/a where the loader cannot time a request:",
          "wrk times a pipelined batch once, from its write to its last answer. CPU µs/req: the server's utime+stime",
          "(all threads and processes) over the run, per request answered."]
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
# Plot data (NaN: not measured, left out of the plot).
num_or_nan = lambda v: "NaN" if v is None else v
def rows_of(prefix):
    return [(summary[(n, "usaged")], summary[(n, "nginx")]) for n in names if n.startswith(prefix)]
with open(f"{out}/raw/conns.dat", "w") as f:
    for u, n in rows_of("conns-"):
        f.write(f"{u['connections']} {num_or_nan(u['rps'])} {num_or_nan(n['rps'])}\n")
with open(f"{out}/raw/latency.dat", "w") as f:
    for u, n in rows_of("rate-"):
        f.write(f"{u['rate']} " + " ".join(str(num_or_nan(s[k])) for s in (u, n) for k in ("p50_ms", "p99_ms", "p999_ms")) + "\n")
with open(f"{out}/raw/cpu.dat", "w") as f:
    for name in names:
        u, n = summary[(name, "usaged")], summary[(name, "nginx")]
        f.write(f"{name} {num_or_nan(u['cpu_us_per_req'])} {num_or_nan(n['cpu_us_per_req'])}\n")
PY

gnuplot <<GP
set terminal svg size 800,480 dynamic font "sans,12"
set output "$OUT/rps-vs-connections.svg"
set title "Requests/s against connections (keep-alive POST, wrk closed loop; servers on CPU $server_cpus)"
set logscale x; set xlabel "connections"; set ylabel "requests/s answered"; set yrange [0:*]; set grid; set key bottom right
plot "$WORK/conns.dat" using 1:2 with linespoints lw 2 title "usaged", "" using 1:3 with linespoints lw 2 title "nginx"
set output "$OUT/latency-vs-rate.svg"
set title "Latency at a fixed target rate (examples/loadgen, corrected for coordinated omission)"
unset logscale x; set logscale y; set xlabel "target rate (requests/s sent on schedule: 25/50/75 % of usaged's keep-alive req/s)"
set ylabel "latency from scheduled send (ms)"; set yrange [*:*]; set key top left
plot "$WORK/latency.dat" using 1:2 with linespoints title "usaged p50", "" using 1:3 with linespoints title "usaged p99", \
     "" using 1:4 with linespoints title "usaged p99.9", "" using 1:5 with linespoints dt 2 title "nginx p50", \
     "" using 1:6 with linespoints dt 2 title "nginx p99", "" using 1:7 with linespoints dt 2 title "nginx p99.9"
set output "$OUT/cpu-per-request.svg"
set title "Server CPU time per request (utime+stime of all threads and processes over the run)"
unset logscale y; set xlabel "scenario"; set ylabel "CPU µs per request"; set yrange [0:*]; set key top left
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1; set boxwidth 0.9
set xtics rotate by 40 right nomirror; set grid noxtics ytics
plot "$WORK/cpu.dat" using 2:xtic(1) title "usaged", "" using 3 title "nginx"
GP

cat "$OUT/results.md"
echo "mode $mode: $runs run(s) of ${secs}s per row; results in $OUT"
if grep -q FAILED "$OUT/results.md"; then
  echo "some rows FAILED (see the status column)"
  exit 1
fi

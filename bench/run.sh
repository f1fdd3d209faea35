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
# Results: bench/results/<UTC stamp>-<host>/: results.csv, results.md, machine.txt, plots (SVG).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"

args=("$@")
mode=full secs=10 runs=3 server_cpus=0 load_cpus=1 secs_set='' runs_set=''
usage() { sed -n '2p' "$0" | sed 's/^# //'; exit 2; }
while (($#)); do
  case $1 in
    --full) mode=full; shift ;;
    --quick) mode=quick; shift ;;
    --smoke) mode=smoke; shift ;;
    --server-cpus) server_cpus=$2; shift 2 ;;
    --load-cpus) load_cpus=$2; shift 2 ;;
    -d) secs_set=$2; shift 2 ;;
    -r) runs_set=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
case $mode in
  full) secs=10 runs=3 ;;
  quick) secs=2 runs=1 ;;
  smoke) secs=1 runs=1 ;;
esac
secs=${secs_set:-$secs} runs=${runs_set:-$runs}
[[ $secs =~ ^[0-9]+$ && $runs =~ ^[0-9]+$ ]] || usage

ensure_tools
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
setup_results "" bench/run.sh "${args[@]}"
(cd "$ROOT" && cargo build --release --quiet --example loadgen)
LOADGEN="$ROOT/target/release/examples/loadgen"
trap 'kill ${USAGED_PID:-} ${NGINX_PID:-} 2>/dev/null || true' EXIT

# CPU lists → counts (e.g. "0-1,4" → 3).
count_cpus() { taskset -c "$1" nproc; }
n_server=$(count_cpus "$server_cpus")
NGINX_PORT=3901
HZ=$(getconf CLK_TCK)

# Bodies for the size rows: valid usages padded with an unknown key to the exact size.
for size in 100 4096 61440; do
  python3 -c '
import sys
size = int(sys.argv[1])
head = "{\"patientId\":\"100\",\"timestamp\":1478009511000,\"medication\":\"Albuterol\",\"note\":\""
tail = "\"}"
sys.stdout.write(head + "x" * (size - len(head) - len(tail)) + tail)' "$size" >"$WORK/body-$size.json"
done

# The rows, in order: "name|kind|conns|extra" (kind: wrk SCRIPT, or rate PERCENT).
rows=(
  "keepalive|wrk post.lua|64|"
  "pipelined-16|wrk pipeline.lua|64|"
  "close|wrk close.lua|64|"
)
for c in 1 8 64 256 1024 10000; do rows+=("conns-$c|wrk post.lua|$c|"); done
for size in 100 4096 61440; do rows+=("body-$size|wrk body.lua|64|BODY_FILE=$WORK/body-$size.json"); done
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

# wrk_latency_ms FILE PCT: wrk --latency's percentile, in ms.
wrk_latency_ms() {
  awk -v p="$2%" '$1 == p {
    v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v);
    if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; else if (unit == "m") v *= 60000;
    printf "%.3f", v }' "$1"
}

# measure NAME SERVER PID PORT KIND CONNS EXTRA: one run; appends a CSV line to raw rows.
measure() {
  local name=$1 server=$2 pid=$3 port=$4 kind=$5 conns=$6 extra=$7 run=$8
  local raw="$WORK/$name-$server-$run.txt" t0 t1 rps reqs p50 p99 p999 errors rate=''
  t0=$(cpu_ticks "$pid")
  case $kind in
    wrk\ *|workers\ *)
      local script=${kind#wrk }
      [[ $kind == workers* ]] && script=post.lua
      env DEPTH=16 $extra taskset -c "$load_cpus" wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s --latency \
        -s "$ROOT/bench/$script" "http://127.0.0.1:$port/api/usages" >"$raw" 2>&1 || true
      rps=$(awk '/^Requests\/sec/ {print $2}' "$raw")
      reqs=$(awk '/requests in/ {print $1}' "$raw")
      p50=$(wrk_latency_ms "$raw" 50) p99=$(wrk_latency_ms "$raw" 99) p999=''
      errors=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$raw")
      ;;
    rate\ *)
      rate=$(awk -v c="$CAPACITY" -v p="${kind#rate }" 'BEGIN {printf "%.0f", c * p / 100}')
      taskset -c "$load_cpus" "$LOADGEN" --port "$port" --rate "$rate" --conns "$conns" --duration "$secs" >"$raw" 2>&1 || true
      rps=$(grep -o 'rate=[0-9]*' "$raw" | cut -d= -f2)
      reqs=$(grep -o 'requests=[0-9]*' "$raw" | cut -d= -f2)
      errors=$(grep -o 'errors=[0-9]*' "$raw" | cut -d= -f2)
      p50=$(grep -o 'p50_us=[0-9]*' "$raw" | awk -F= '{printf "%.3f", $2 / 1000}')
      p99=$(grep -o 'p99_us=[0-9]*' "$raw" | awk -F= '{printf "%.3f", $2 / 1000}')
      p999=$(grep -o 'p999_us=[0-9]*' "$raw" | awk -F= '{printf "%.3f", $2 / 1000}')
      ;;
  esac
  t1=$(cpu_ticks "$pid")
  [[ -n $rps && -n $reqs && $reqs != 0 ]] || { rps=0 reqs=0 errors=${errors:-1}; [[ $errors == 0 ]] && errors=1; }
  local cpu_us
  cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$reqs" 'BEGIN {if (n > 0) printf "%.3f", d / hz * 1e6 / n; else print ""}')
  echo "$name,$server,$conns,$rate,$rps,$p50,$p99,$p999,$errors,$cpu_us,$run" >>"$WORK/runs.csv"
  progress "$name" "$server" "$(printf '%.0f req/s%s' "$rps" "$([[ $errors == 0 ]] || echo "  FAILED ($errors errors)")")"
}

start_servers() {  # CPUS WORKERS
  kill ${USAGED_PID:-} ${NGINX_PID:-} 2>/dev/null || true
  wait 2>/dev/null || true
  start_usaged "$1" --threads "$2"
  start_nginx "$1" "$NGINX_PORT" "$2"
  # Warm up both and store the ids the GET mix reads.
  for port in "$USAGED_PORT" "$NGINX_PORT"; do
    taskset -c "$load_cpus" wrk -t1 -c16 -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:$port/api/usages" >/dev/null
  done
}

CAPACITY=0
start_servers "$server_cpus" "$n_server"
[[ $n_server == 1 ]] || echo "note: rows other than workers-N run with $n_server workers each" >>"$OUT/notes.txt"
for row in "${rows[@]}"; do
  IFS='|' read -r name kind conns extra <<<"$row"
  if [[ $kind == workers* ]]; then
    w=${kind#workers }
    cpus=$(taskset -c "$server_cpus" python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))[:'"$w"']))')
    start_servers "$cpus" "$w"
  fi
  for run in $(seq 1 "$runs"); do
    measure "$name" usaged "$USAGED_PID" "$USAGED_PORT" "$kind" "$conns" "$extra" "$run"
    measure "$name" nginx "$NGINX_PID" "$NGINX_PORT" "$kind" "$conns" "$extra" "$run"
  done
  if [[ $name == keepalive ]]; then
    CAPACITY=$(awk -F, '$1 == "keepalive" && $2 == "usaged" {print $5}' "$WORK/runs.csv" | median)
  fi
done

# Medians per (row, server); a row with errors in any run is FAILED.
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
    v = [float(r[k]) for r in rs if r[k] not in ("", None)]
    return statistics.median(v) if v else None
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
        fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"
        w.writerow([key[0], key[1], s["connections"], s["rate"], fmt(s["rps"], 0), fmt(s["p50_ms"]), fmt(s["p99_ms"]),
                    fmt(s["p999_ms"]), errors, fmt(s["cpu_us_per_req"]), status])
def num(v, d=0):
    return "–" if v is None else f"{v:,.{d}f}"
def ratio(a, b):
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}"
lines = ["| scenario | conns | usaged req/s | nginx req/s | ratio | usaged p50 / p99 ms | nginx p50 / p99 ms | usaged CPU µs/req | nginx CPU µs/req | CPU ratio | status |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for name in dict.fromkeys(k[0] for k in order):
    u, n = summary.get((name, "usaged")), summary.get((name, "nginx"))
    label = name + (f" @ {u['rate']}/s" if u["rate"] else "")
    status = "ok" if u["status"] == n["status"] == "ok" else \
        "FAILED: " + ", ".join(f"{s} {x['errors']} errors" for s, x in (("usaged", u), ("nginx", n)) if x["status"] != "ok")
    lat = lambda s: "–" if s["p50_ms"] is None else f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f}" + (f" (p99.9 {s['p999_ms']:.3f})" if s["p999_ms"] is not None else "")
    lines.append(f"| {label} | {u['connections']} | {num(u['rps'])} | {num(n['rps'])} | {ratio(u['rps'], n['rps'])} | {lat(u)} | {lat(n)} | "
                 f"{num(u['cpu_us_per_req'], 2)} | {num(n['cpu_us_per_req'], 2)} | {ratio(u['cpu_us_per_req'], n['cpu_us_per_req'])} | {status} |")
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
# Plot data.
with open(f"{out}/raw/conns.dat", "w") as f:
    for name in dict.fromkeys(k[0] for k in order):
        if name.startswith("conns-"):
            u, n = summary[(name, "usaged")], summary[(name, "nginx")]
            f.write(f"{u['connections']} {u['rps'] or 0} {n['rps'] or 0}\n")
with open(f"{out}/raw/latency.dat", "w") as f:
    for name in dict.fromkeys(k[0] for k in order):
        if name.startswith("rate-"):
            u, n = summary[(name, "usaged")], summary[(name, "nginx")]
            f.write(f"{u['rate']} {u['p50_ms']} {u['p99_ms']} {u['p999_ms']} {n['p50_ms']} {n['p99_ms']} {n['p999_ms']}\n")
PY

gnuplot <<GP
set terminal svg size 800,480 dynamic font "sans,12"
set output "$OUT/rps-vs-connections.svg"
set title "Requests/s against connections (keep-alive POST, server on CPU $server_cpus)"
set logscale x; set xlabel "connections"; set ylabel "requests/s"; set yrange [0:*]; set grid; set key bottom right
plot "$WORK/conns.dat" using 1:2 with linespoints lw 2 title "usaged", "" using 1:3 with linespoints lw 2 title "nginx"
set output "$OUT/latency-vs-rate.svg"
set title "Latency at a fixed rate (corrected for coordinated omission)"
unset logscale x; set logscale y; set xlabel "requests/s"; set ylabel "latency (ms)"; set yrange [*:*]; set key top left
plot "$WORK/latency.dat" using 1:2 with linespoints title "usaged p50", "" using 1:3 with linespoints title "usaged p99", \
     "" using 1:4 with linespoints title "usaged p99.9", "" using 1:5 with linespoints dt 2 title "nginx p50", \
     "" using 1:6 with linespoints dt 2 title "nginx p99", "" using 1:7 with linespoints dt 2 title "nginx p99.9"
GP

cat "$OUT/results.md"
echo "mode $mode: $runs run(s) of ${secs}s per row; results in $OUT"
if grep -q FAILED "$OUT/results.md"; then
  echo "some rows FAILED (see the status column)"
  exit 1
fi

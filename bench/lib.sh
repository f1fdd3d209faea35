# Shared pieces of the bench scripts (bench/*.sh, scripts/profile.sh, scripts/monitor.sh),
# sourced once they have set ROOT: options, tools, the results folder and its meta.txt, servers
# on ports the kernel picks, one measured wrk run, medians and tables, and the clean-up on exit
# (loaders and servers stopped, journals deleted).

# The command line as given (a sourced file sees its caller's arguments).
COMMAND_LINE=$(printf '%q ' "${0#"$ROOT"/}" "$@")
COMMAND_LINE=${COMMAND_LINE% }

# Where cargo puts its builds (CARGO_TARGET_DIR honoured, as cargo does from ROOT).
TARGET=${CARGO_TARGET_DIR:-target}
[[ $TARGET == /* ]] || TARGET="$ROOT/$TARGET"
RELEASE="$TARGET/release"

# --- Options -----------------------------------------------------------------------------------

# The script's usage line (line 2 of its header comment), then exit 2.
usage() {
  sed -n '2s/^# //p' "$0" >&2
  exit 2
}

# The script's header comment, then exit 0.
help() {
  awk 'NR == 1 {next} !/^#/ {exit} {sub(/^# ?/, ""); print}' "$0"
  exit 0
}

# parse_options "$@": -h/--help, and the options the scripts share, each only where the script
# has set its variable (its default) beforehand: -d SECS (secs), -r RUNS (runs), --server-cpu N
# (server_cpu), --load-cpu N (load_cpu). Any other option goes to the script's own
# `option NAME [VALUE]`, which sets TAKES to the words it took (1 or 2); none is a usage error.
parse_options() {
  local var
  while (($#)); do
    var=''
    case $1 in
      -h|--help) help ;;
      -d) var=secs ;;
      -r) var=runs ;;
      --server-cpu) var=server_cpu ;;
      --load-cpu) var=load_cpu ;;
    esac
    if [[ -n $var && -v $var ]]; then
      (($# >= 2)) || usage
      printf -v "$var" '%s' "$2"
      shift 2
      continue
    fi
    TAKES=0
    if declare -F option >/dev/null; then option "$@"; fi
    ((TAKES > 0 && TAKES <= $#)) || usage
    shift "$TAKES"
  done
}

# numbers VAR...: each a whole number above 0, else a usage error.
numbers() {
  local v
  for v; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || usage; done
}

# --- Tools and builds --------------------------------------------------------------------------

# need COMMAND PACKAGE: install the Debian PACKAGE when COMMAND is missing.
need() {
  command -v "$1" >/dev/null && return 0
  echo "installing $2" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# What every bench uses.
ensure_tools() {
  need wrk wrk
  need nginx nginx-light
  need python3 python3
  need gnuplot gnuplot-nox
}

# build CARGO_BUILD_ARGS...: a quiet cargo build of this checkout.
build() {
  (cd "$ROOT" && cargo build --quiet "$@")
}

# --- The results folder ------------------------------------------------------------------------

# new_results SUFFIX [KEY=VALUE...]: the folder bench/results/<UTC stamp>-<host>SUFFIX/ (OUT;
# raw output in WORK = OUT/raw, which git ignores) with meta.txt: the command line, the script's
# KEY: VALUE lines (mode, duration, runs, ...), the commit and the machine. Arms the clean-up.
new_results() {
  local suffix=$1 kv
  shift
  OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$(hostname)$suffix"
  WORK="$OUT/raw"
  mkdir -p "$WORK"
  {
    echo "command: $COMMAND_LINE"
    for kv; do echo "${kv%%=*}: ${kv#*=}"; done
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(hostname)"
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs)"
    echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "rustc: $(rustc --version)"
  } >"$OUT/meta.txt"
  trap cleanup EXIT
}

# meta KEY VALUE: one more line in meta.txt.
meta() {
  echo "$1: $2" >>"$OUT/meta.txt"
}

# Commands the clean-up runs too (a script appends to it).
AT_EXIT=()

# On exit: stop every process the script started in the background (servers, loaders), run
# AT_EXIT, delete the journal.
cleanup() {
  local pids c
  pids=$(jobs -p)
  if [[ -n $pids ]]; then
    kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  for c in "${AT_EXIT[@]}"; do eval "$c" || true; done
  if [[ -n ${WORK:-} ]]; then rm -rf "$WORK/data"; fi
}

# --- Servers -----------------------------------------------------------------------------------

# start_usaged [--bin BINARY] [--name NAME] CPU FLAGS...: usaged (default: this checkout's
# release build) pinned to CPU, on a port the kernel picks (--port 0; the port is read from its
# `listening on` line), with a fresh journal in WORK/data unless FLAGS name --data-dir or
# --in-memory. With a NAME (several servers at once), the journal is WORK/data/NAME and the log
# WORK/NAME.err instead of WORK/usaged.err. Sets USAGED_PID and USAGED_PORT.
start_usaged() {
  local bin="$RELEASE/usaged" log="$WORK/usaged.err" dir="$WORK/data"
  if [[ $1 == --bin ]]; then
    bin=$2
    shift 2
  fi
  if [[ $1 == --name ]]; then
    log="$WORK/$2.err" dir="$WORK/data/$2"
    shift 2
  fi
  local cpu=$1
  shift
  local data=(--data-dir "$dir")
  if [[ " $* " == *" --data-dir "* || " $* " == *" --in-memory "* ]]; then data=(); fi
  rm -rf "$dir"
  # Emptied here, not by the background job's redirection, which may come after the first grep
  # below: that grep would then read a previous server's line and port.
  : >"$log"
  taskset -c "$cpu" "$bin" --port 0 --bind 127.0.0.1 "${data[@]}" "$@" 2>"$log" &
  USAGED_PID=$!
  for _ in $(seq 1 500); do
    # The whole line: stderr is unbuffered, so it may be read half written.
    if grep -q '^listening on .* workers)$' "$log"; then
      USAGED_PORT=$(sed -n 's/^listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log")
      return 0
    fi
    kill -0 "$USAGED_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.01
  done
  echo "usaged did not start" >&2
  return 1
}

# stop_usaged: stop it and delete its journal.
stop_usaged() {
  kill "$USAGED_PID" 2>/dev/null || true
  wait "$USAGED_PID" 2>/dev/null || true
  rm -rf "$WORK/data"
}

# free_port: a loopback port nothing listens on now (the kernel's pick for a probe socket,
# released at once).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nginx CPUS [WORKERS]: the reference server (bench/nginx.conf, default one worker)
# pinned to CPUS. nginx cannot listen on port 0, so it gets a free_port; one that was taken
# meanwhile (nginx exits) is tried again with another. Sets NGINX_PID and NGINX_PORT.
start_nginx() {
  local cpu=$1 workers=${2:-1}
  mkdir -p "$WORK/nginx"
  for _ in 1 2 3 4 5; do
    NGINX_PORT=$(free_port)
    sed -e "s/127.0.0.1:3001/127.0.0.1:$NGINX_PORT/" -e "s/^worker_processes 1;/worker_processes $workers;/" \
      "$ROOT/bench/nginx.conf" >"$WORK/nginx/nginx.conf"
    taskset -c "$cpu" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
      -g "pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;" &
    NGINX_PID=$!
    if wait_port "$NGINX_PORT" "$NGINX_PID"; then return 0; fi
    wait "$NGINX_PID" 2>/dev/null || true
  done
  cat "$WORK/nginx/error.log" >&2
  return 1
}

# wait_port PORT [PID]: until something accepts on PORT (5 s at most); fails at once if PID exits.
wait_port() {
  for _ in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    [[ -z ${2:-} ]] || kill -0 "$2" 2>/dev/null || return 1
    sleep 0.01
  done
  echo "nothing listening on port $1" >&2
  return 1
}

# warm_up PORT: a second of keep-alive POSTs, discarded.
warm_up() {
  timeout 30 taskset -c "$load_cpu" wrk -t1 -c64 -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:$1/api/usages" >/dev/null
}

# --- Measuring ---------------------------------------------------------------------------------

# cpu_ticks PID: utime+stime of all the process's threads and of its child processes (nginx's
# workers), in clock ticks.
cpu_ticks() {
  local pids=("$1") total=0 p
  mapfile -t -O 1 pids < <(pgrep -P "$1" || true)
  pids[0]=$1
  for p in "${pids[@]}"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# rss_kib PID
rss_kib() {
  awk '/^VmRSS/ {print $2}' "/proc/$1/status"
}

# wrk_ms FILE PCT: wrk --latency's percentile, in ms.
wrk_ms() {
  awk -v p="$2%" '$1 == p {
    v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v);
    if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; else if (unit == "m") v *= 60000;
    printf "%.3f", v }' "$1"
}

# wrk_run PID RAW CONNS SCRIPT PORT [WRK_ARGS...]: one wrk run (one thread pinned to load_cpu,
# for secs seconds and killed if it runs 30 s longer, bench/SCRIPT, DEPTH=depth requests per
# write for pipeline.lua) against 127.0.0.1:PORT, output in RAW, and the CPU time the server
# PID spends over it. Sets RPS, REQS, ERRORS (non-2xx answers and socket errors; 1 when wrk
# reported nothing), CPU_US (server CPU µs per request) and P50, P99 in ms: n/a for
# pipeline.lua, where wrk times a whole batch (from its write to its last answer) once, not
# each request.
wrk_run() {
  local pid=$1 raw=$2 conns=$3 script=$4 port=$5 t0 t1
  shift 5
  t0=$(cpu_ticks "$pid")
  DEPTH=${depth:-16} timeout "$((secs + 30))" taskset -c "$load_cpu" \
    wrk -t1 -c"$conns" -d"${secs}s" --latency "$@" -s "$ROOT/bench/$script" \
    "http://127.0.0.1:$port/api/usages" >"$raw" 2>&1 || true
  t1=$(cpu_ticks "$pid")
  RPS=$(awk '/^Requests\/sec/ {print $2}' "$raw")
  REQS=$(awk '/requests in/ {print $1}' "$raw")
  ERRORS=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$raw")
  P50=n/a P99=n/a
  if [[ -z $RPS || ${REQS:-0} == 0 ]]; then
    RPS=0 REQS=0
    ((ERRORS > 0)) || ERRORS=1
  elif [[ $script != pipeline.lua ]]; then
    P50=$(wrk_ms "$raw" 50) P99=$(wrk_ms "$raw" 99)
  fi
  CPU_US=$(per_request "$((t1 - t0))" "$REQS")
}

# script_for SCENARIO: the wrk script of a scenario named keepalive* or pipelined*.
script_for() {
  if [[ $1 == pipelined* ]]; then echo pipeline.lua; else echo post.lua; fi
}

# per_request TICKS REQUESTS: CPU µs per request (n/a without requests).
per_request() {
  awk -v d="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN {if (n > 0) printf "%.3f", d / hz * 1e6 / n; else printf "n/a"}'
}

# row NAME SCENARIO: the last wrk_run as "NAME SCENARIO rps cpu_us errors p50_ms p99_ms" in
# WORK/rows.txt, and printed (with the caller's run number).
row() {
  echo "$1 $2 $RPS $CPU_US $ERRORS $P50 $P99" >>"$WORK/rows.txt"
  printf '  %-10s %-13s run %d: %10.0f req/s  p50 %-9s p99 %-9s %7s µs CPU/req%s\n' "$1" "$2" "$run" \
    "$RPS" "$(unit "$P50" ms)" "$(unit "$P99" ms)" "$CPU_US" \
    "$([[ $ERRORS == 0 ]] || echo "  FAILED ($ERRORS errors, see raw output)")"
}

# unit VALUE UNIT: "VALUE UNIT", or n/a.
unit() {
  if [[ $1 == n/a ]]; then echo n/a; else echo "$1 $2"; fi
}

# --- Summaries ---------------------------------------------------------------------------------

# The median of the numbers on stdin (one a line; anything else, like n/a, is passed over), or n/a.
median() {
  awk '$1 ~ /^[0-9.]+([eE][-+]?[0-9]+)?$/' | sort -g |
    awk '{a[NR]=$1} END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'
}

# med COLUMN NAME SCENARIO: the median of COLUMN of WORK/rows.txt over the lines of NAME and
# SCENARIO (columns: 3 req/s, 4 CPU µs/req, 6 p50 ms, 7 p99 ms).
med() {
  awk -v c="$1" -v n="$2" -v s="$3" '$1 == n && $2 == s {print $c}' "$WORK/rows.txt" | median
}

# failed NAME SCENARIO: how many of its runs had errors.
failed() {
  awk -v n="$1" -v s="$2" '$1 == n && $2 == s && $5 != 0' "$WORK/rows.txt" | wc -l
}

# status NAME SCENARIO: ok, or FAILED when a run had errors.
status() {
  if (($(failed "$1" "$2") == 0)); then echo ok; else echo FAILED; fi
}

# table_head COLUMN...: a Markdown table's head; a COLUMN ending in ">" is right-aligned.
table_head() {
  local c names='|' rule='|'
  for c; do
    names+=" ${c%>} |"
    if [[ $c == *'>' ]]; then rule+='---:|'; else rule+='---|'; fi
  done
  printf '%s\n%s\n' "$names" "$rule"
}

# num FORMAT VALUE: VALUE in printf FORMAT, or n/a when it is not a number.
num() {
  awk -v f="$1" -v v="$2" 'BEGIN {if (v ~ /^[0-9.]+([eE][-+]?[0-9]+)?$/) printf f, v; else printf "n/a"}'
}

# ratio A B: A / B to two places, or n/a.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a ~ /^[0-9.]+([eE][-+]?[0-9]+)?$/ && b ~ /^[0-9.]+([eE][-+]?[0-9]+)?$/ && b > 0) printf "%.2f", a / b
    else printf "n/a" }'
}

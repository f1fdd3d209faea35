# Shared helpers for bench/*.sh (sourced, not run).

# Where cargo puts the release build (CARGO_TARGET_DIR honoured, as cargo does).
RELEASE=${CARGO_TARGET_DIR:-target}
[[ $RELEASE == /* ]] || RELEASE="$ROOT/$RELEASE"
RELEASE="$RELEASE/release"

# Install what the benches use, from Debian, when missing.
ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v python3 >/dev/null || missing+=(python3)
  command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# start_usaged CPU ARGS...: start the release binary pinned to CPU; sets USAGED_PID, USAGED_PORT.
start_usaged() {
  local cpu=$1; shift
  local log="$WORK/usaged.err"
  # A fresh journal per run (the default, --sync interval); flags given later override it.
  rm -rf "$WORK/data"
  taskset -c "$cpu" "$RELEASE/usaged" --port 0 --bind 127.0.0.1 --data-dir "$WORK/data" "$@" 2>"$log" &
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

# start_nginx CPUS PORT [WORKERS]: the reference server (default one worker) pinned to CPUS;
# sets NGINX_PID.
start_nginx() {
  local cpu=$1 port=$2 workers=${3:-1}
  mkdir -p "$WORK/nginx"
  sed -e "s/127.0.0.1:3001/127.0.0.1:$port/" -e "s/^worker_processes 1;/worker_processes $workers;/" \
    "$ROOT/bench/nginx.conf" >"$WORK/nginx/nginx.conf"
  taskset -c "$cpu" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    -g "pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;" &
  NGINX_PID=$!
  wait_port "$port"
}

# wait_port PORT: until something accepts on it (bounded: 5 s).
wait_port() {
  for _ in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.01
  done
  echo "nothing listening on port $1" >&2
  return 1
}

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

median() {
  sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'
}

record_machine() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo +dirty)"
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs)"
    echo "kernel: $(uname -r)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "rustc: $(rustc --version)"
  } >"$1"
}

# setup_results SUFFIX COMMAND...: build the release binary, create the results folder
# bench/results/<UTC stamp>-<host>SUFFIX/ (sets OUT, and WORK for raw output), record the
# machine and the command.
setup_results() {
  local suffix=$1; shift
  (cd "$ROOT" && cargo build --release --quiet)
  OUT="$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-$(hostname)$suffix"
  WORK="$OUT/raw"
  mkdir -p "$WORK"
  record_machine "$OUT/machine.txt"
  echo "$*" >"$OUT/command.txt"
}

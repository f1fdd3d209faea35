#!/usr/bin/env bash
# A local usaged cluster behind HAProxy, for trying and testing (issue 12):
#
#   scripts/cluster.sh start DIR NODES PORT   NODES nodes on loopback ports, HAProxy on
#                                             127.0.0.1:PORT; prints
#                                             `cluster listening on 127.0.0.1:PORT (N nodes)`
#   scripts/cluster.sh restart DIR            rolls every node in turn (SIGTERM, wait for its
#                                             exit, start it again on its port, wait until
#                                             HAProxy has it UP again); no request fails
#   scripts/cluster.sh grow DIR M             adds nodes up to M: a new cluster epoch
#   scripts/cluster.sh stop DIR               HAProxy, then every node
#
# DIR holds everything: nodeK/{data,log,pid,port} per node, `epochs` (one `BASE NODES`
# line per cluster epoch, oldest first), haproxy.{cfg,pid,sock,log}, `port`, `bin`.
# The usaged binary: $USAGED, else target/release/usaged, else target/debug/usaged, else
# `usaged` on PATH. Nodes run with `--threads ${USAGED_THREADS:-1} --drain-grace
# ${USAGED_DRAIN_GRACE:-2}` and $USAGED_FLAGS. The grace must exceed HAProxy's time to see a
# node's /health turn 503 (fall 2 × inter 100 ms + timeout check 1 s at worst). HAProxy is
# installed with apt-get when missing.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Tools.

find_usaged() {
  local root; root=$(cd "$(dirname "$0")/.." && pwd)
  if [[ -n ${USAGED:-} ]]; then echo "$USAGED"
  elif [[ -x $root/target/release/usaged ]]; then echo "$root/target/release/usaged"
  elif [[ -x $root/target/debug/usaged ]]; then echo "$root/target/debug/usaged"
  elif command -v usaged >/dev/null; then command -v usaged
  else die "no usaged binary: cargo build --release, or set USAGED"; fi
}

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

find_haproxy() {
  local h
  for h in "$(command -v haproxy || true)" /usr/sbin/haproxy /usr/local/sbin/haproxy; do
    [[ -n $h && -x $h ]] && { echo "$h"; return; }
  done
  command -v apt-get >/dev/null || die "haproxy is missing and there is no apt-get: install it"
  echo "cluster.sh: installing haproxy (apt-get)" >&2
  as_root apt-get update -qq >&2 || die "apt-get update failed: install haproxy by hand"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null ||
    die "apt-get install haproxy failed: install it by hand"
  for h in /usr/sbin/haproxy "$(command -v haproxy || true)"; do
    [[ -n $h && -x $h ]] && { echo "$h"; return; }
  done
  die "haproxy is still missing after apt-get"
}

# Alive and not a zombie (a node outlives the cluster.sh that started it; its new parent may
# not reap it at once).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# HAProxy's CLI on the stats socket (perl is in every Debian: no socat needed).
ha_cmd() {
  perl -MIO::Socket::UNIX -e '
    my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
    print $s "$ARGV[1]\n"; print while <$s>;' "$DIR/haproxy.sock" "$1"
}

# The check status of server nodeK in backend `all` as HAProxy sees it (UP, DOWN, …).
ha_status() {
  ha_cmd "show stat" 2>/dev/null | awk -F, -v s="node$1" '$1 == "all" && $2 == s {print $18}'
}

# A GET to 127.0.0.1:PORT, the whole answer on stdout (bash's /dev/tcp: no curl needed).
http_get() {
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: usaged\r\nConnection: close\r\n\r\n' "$2" >&"$fd"
  timeout 10 cat <&"$fd" || true
  exec {fd}>&-
}

# Poll `cond ARGS…` every 50 ms for at most $1 seconds; else die with $2.
wait_until() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS < end)) || die "timed out after ${secs}s waiting until $what"
    sleep 0.05
  done
}

# ---------------------------------------------------------------------------------------------
# Nodes.

node_count() { ls -d "$DIR"/node* 2>/dev/null | wc -l; }
latest_epoch() { tail -n 1 "$DIR/epochs"; }

# Start node K on port $2 (0: the kernel picks); waits for its `listening on` line and records
# its pid and port. Returns 1 (log left in place) if it exits first.
start_node() {
  local k=$1 port=$2 d="$DIR/node$1"
  mkdir -p "$d/data"
  local flags=(--bind 127.0.0.1 --port "$port" --data-dir "$d/data" --no-pin
    --threads "${USAGED_THREADS:-1}" --drain-grace "${USAGED_DRAIN_GRACE:-2}")
  local base n; read -r base n < <(latest_epoch)
  # Always the latest cluster epoch's base: a new node or a node joining the epoch starts it;
  # a node already in it (its data dir's CLUSTER says so) goes on.
  flags+=(--node "$k" --nodes "$n" --cluster-base "$base")
  touch "$d/log"
  local from; from=$(($(wc -l < "$d/log") + 1))
  # shellcheck disable=SC2086
  "$BIN" "${flags[@]}" ${USAGED_FLAGS:-} >> "$d/log" 2>&1 < /dev/null &
  local pid=$!
  local end=$((SECONDS + 60)) addr=""
  while [[ -z $addr ]]; do
    addr=$(tail -n "+$from" "$d/log" | sed -n 's/^listening on \([^ ]*\).*/\1/p' | head -n 1)
    [[ -n $addr ]] && break
    if ! alive "$pid"; then
      echo "cluster.sh: node $k exited at start:" >&2; tail -n "+$from" "$d/log" >&2; return 1
    fi
    ((SECONDS < end)) || die "node $k did not listen within 60s (see $d/log)"
    sleep 0.05
  done
  echo "$pid" > "$d/pid"
  echo "${addr##*:}" > "$d/port"
  return 0
}

# SIGTERM node K and wait (bounded) until it has exited.
stop_node() {
  local d="$DIR/node$1" pid
  pid=$(cat "$d/pid" 2>/dev/null) || return 0
  if alive "$pid"; then
    kill -TERM "$pid"
    wait_until 60 "node $1 (pid $pid) exits" eval '! alive '"$pid"
  fi
  rm -f "$d/pid"
}

node_healthy() { http_get "$(cat "$DIR/node$1/port")" /health | head -n 1 | grep -q ' 200 '; }
ha_up() { [[ $(ha_status "$1") == UP ]]; }

# ---------------------------------------------------------------------------------------------
# HAProxy.

write_config() {
  local args=(haproxy-config --bind 127.0.0.1 --port "$(cat "$DIR/port")"
    --stats-socket "$DIR/haproxy.sock")
  [[ -n ${USAGED_TCP_PORT:-} ]] && args+=(--tcp-port "$USAGED_TCP_PORT")
  local k base n
  for ((k = 0; k < $(node_count); k++)); do
    args+=(--node "127.0.0.1:$(cat "$DIR/node$k/port")")
  done
  while read -r base n; do args+=(--epoch "$base:$n"); done < "$DIR/epochs"
  "$BIN" "${args[@]}" > "$DIR/haproxy.cfg.new"
  "$HAPROXY" -c -q -f "$DIR/haproxy.cfg.new" || die "HAProxy rejects $DIR/haproxy.cfg.new"
  mv "$DIR/haproxy.cfg.new" "$DIR/haproxy.cfg"
}

start_haproxy() {
  # Master-worker (-W): SIGUSR2 to the master reloads the config without closing the port.
  "$HAPROXY" -W -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid" >> "$DIR/haproxy.log" 2>&1 < /dev/null &
  echo $! > "$DIR/haproxy.master"
  ha_ready() {
    alive "$(cat "$DIR/haproxy.master")" || { cat "$DIR/haproxy.log" >&2; die "HAProxy exited"; }
    ha_cmd "show info" >/dev/null 2>&1
  }
  wait_until 30 "HAProxy answers on its stats socket" ha_ready
}

# Write the config again and reload HAProxy; wait until every node is UP in the new one.
reload_haproxy() {
  write_config
  local before; before=$(ha_cmd "show info" | sed -n 's/^Pid: //p')
  kill -USR2 "$(cat "$DIR/haproxy.master")"
  new_worker() {
    local p; p=$(ha_cmd "show info" 2>/dev/null | sed -n 's/^Pid: //p')
    [[ -n $p && $p != "$before" ]]
  }
  wait_until 30 "HAProxy reloads" new_worker
  wait_all_up
}

wait_all_up() {
  local k
  for ((k = 0; k < $(node_count); k++)); do
    wait_until 30 "HAProxy has node $k UP" ha_up "$k"
  done
}

# ---------------------------------------------------------------------------------------------
# Commands.

cmd_start() {
  local nodes=$1 port=$2
  [[ $nodes =~ ^[0-9]+$ && $nodes -ge 1 && $nodes -le 64 ]] || die "NODES: 1 to 64, got $nodes"
  [[ $port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535 ]] || die "PORT: 1 to 65535, got $port"
  [[ -e $DIR/epochs ]] && die "$DIR already holds a cluster (stop it, or pick another DIR)"
  echo "$BIN" > "$DIR/bin"
  echo "$port" > "$DIR/port"
  echo "0 $nodes" > "$DIR/epochs"
  local k
  for ((k = 0; k < nodes; k++)); do start_node "$k" 0 || die "node $k did not start"; done
  write_config
  start_haproxy
  wait_all_up
  echo "cluster listening on 127.0.0.1:$port ($nodes nodes)"
}

# Roll node K: SIGTERM (its /health says 503, HAProxy takes it out within its grace), wait
# for its exit, start it on the same port (another one, and reload HAProxy, if that port was
# taken meanwhile), wait until HAProxy has it UP before the next node goes.
restart_node() {
  local k=$1 port; port=$(cat "$DIR/node$k/port")
  stop_node "$k"
  if start_node "$k" "$port"; then
    wait_until 60 "HAProxy has node $k UP again" ha_up "$k"
  else
    echo "cluster.sh: node $k could not start on port $port again; trying a new port" >&2
    start_node "$k" 0 || die "node $k did not start (see $DIR/node$k/log)"
    reload_haproxy
  fi
}

cmd_restart() {
  local k n; n=$(node_count)
  for ((k = 0; k < n; k++)); do
    restart_node "$k"
    echo "cluster.sh: node $k restarted on port $(cat "$DIR/node$k/port")" >&2
  done
  # HAProxy's config must name every epoch and port (a grow that died half-way may have left
  # it behind): reload it when what it would be now differs.
  write_config_if_changed && reload_haproxy
  echo "cluster restarted ($n nodes)"
}

# Render the config; true (and the new one in place) when it differs from the running one.
write_config_if_changed() {
  cp "$DIR/haproxy.cfg" "$DIR/haproxy.cfg.old"
  write_config
  ! cmp -s "$DIR/haproxy.cfg" "$DIR/haproxy.cfg.old"
}

# The highest id node K may have handed out: `usaged_id_lease_end` at its /metrics (its
# stripes' durable id leases); for a node that does not answer, the last id `usaged export`
# reads from its journal (slow on a large one; the margin in cmd_grow covers its lease).
last_id_of() {
  local m; m=$(http_get "$(cat "$DIR/node$1/port")" /metrics 2>/dev/null) || m=""
  if echo "$m" | grep -q '^usaged_id_lease_end '; then
    echo "$m" | awk '/^usaged_id_lease_end / {printf "%.0f\n", $2}'
    return
  fi
  local last
  last=$("$BIN" export --data-dir "$DIR/node$1/data" --format csv | tail -n 1 | cut -d, -f1) ||
    die "node $1: no usaged_id_lease_end at /metrics, and usaged export failed"
  [[ $last =~ ^[0-9]+$ ]] || last=0  # only the CSV header: no usage yet
  echo "$last"
}

# Grow to M nodes: a new cluster epoch (B2, M) with B2 past every id issued so far plus a
# margin ($USAGED_GROW_MARGIN, 2^40 by default: 2^28 usages for each of up to 4096 stripes,
# the journal's most, and any node's lease of 2^20 slots) that the old nodes cannot use up
# while the grow runs. HAProxy gets the new epoch and nodes first (old nodes still issue ids
# below B2, routed by the old epochs), then each old node is rolled into the new epoch; a
# node whose ids passed B2 meanwhile refuses to start, naming its floor.
cmd_grow() {
  local m=$1 n; n=$(node_count)
  [[ $m =~ ^[0-9]+$ && $m -gt $n && $m -le 64 ]] || die "M: more than $n nodes, at most 64"
  local k max id
  read -r max _ < <(latest_epoch)  # past the latest epoch's base, whatever the nodes say
  for ((k = 0; k < n; k++)); do
    id=$(last_id_of "$k") || exit 1
    ((id > max)) && max=$id
  done
  local b2=$((max + ${USAGED_GROW_MARGIN:-1099511627776}))
  ((b2 < 1 << 52)) || die "the new epoch's base $b2 is not below 2^52"
  echo "$b2 $m" >> "$DIR/epochs"
  for ((k = n; k < m; k++)); do
    start_node "$k" 0 || die "new node $k did not start"
    wait_until 30 "new node $k is healthy" node_healthy "$k"
  done
  reload_haproxy
  for ((k = 0; k < n; k++)); do
    # Still in the old epoch, node K must not have reached B2: else its ids at or past B2
    # may repeat the new epoch's (the margin was too small for this grow's duration).
    id=$(last_id_of "$k")
    ((id < b2)) || die "node $k reached id $id, past the new epoch's base $b2: ids at or past" \
      "$b2 may repeat; stop the cluster and compare the nodes' exports"
    restart_node "$k"
  done
  echo "cluster grown to $m nodes (epoch base $b2)"
}

cmd_stop() {
  if [[ -f $DIR/haproxy.master ]]; then
    local pid; pid=$(cat "$DIR/haproxy.master")
    if alive "$pid"; then
      kill -TERM "$pid"
      wait_until 30 "HAProxy exits" eval '! alive '"$pid"
    fi
    rm -f "$DIR/haproxy.master" "$DIR/haproxy.pid"
  fi
  local k pid
  for ((k = 0; k < $(node_count); k++)); do
    pid=$(cat "$DIR/node$k/pid" 2>/dev/null) && alive "$pid" && kill -TERM "$pid"
  done
  for ((k = 0; k < $(node_count); k++)); do stop_node "$k"; done
  echo "cluster stopped"
}

(($# >= 2)) || usage
cmd=$1 DIR=$2
shift 2
case $cmd in
  start) (($# == 2)) || usage; mkdir -p "$DIR" ;;
  restart | stop) (($# == 0)) || usage ;;
  grow) (($# == 1)) || usage ;;
  *) usage ;;
esac
[[ -d $DIR ]] || die "no directory $DIR"
DIR=$(cd "$DIR" && pwd)
if [[ $cmd == start ]]; then BIN=$(find_usaged); else
  BIN=$(cat "$DIR/bin" 2>/dev/null) || die "$DIR holds no cluster (no $DIR/bin)"
fi
HAPROXY=$(find_haproxy)
case $cmd in
  start) cmd_start "$@" ;;
  restart) cmd_restart ;;
  grow) cmd_grow "$1" ;;
  stop) cmd_stop ;;
esac

#!/usr/bin/env bash
# usage: scripts/schemathesis.sh [--debug] [--max-examples N (200)] [-- SCHEMATHESIS-FLAG…]
#
# Checks openapi.yaml against a live server with schemathesis (property-based: it generates
# valid and invalid requests from the description, follows the 201's links to the GETs, tries
# the methods it does not list): no 5xx, and every status, Content-Type, header and body as the
# description says; a 405 for each unlisted method, with its Allow. Exits non-zero on any failure.
#
# schemathesis is installed with pip into a venv under the cargo target dir (python3-venv with
# apt-get when `python3 -m venv` cannot make one). The server is the release build (--debug:
# the debug one), on a free loopback port with a temporary data dir, killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

version=4.32.5
profile=release
examples=200
extra=()
while (($#)); do
  case $1 in
    --debug) profile=debug ;;
    --max-examples) examples=${2:?}; shift ;;
    --) shift; extra=("$@"); break ;;
    *) sed -n '2p' "$0" | sed 's/^# //' >&2; exit 2 ;;
  esac
  shift
done

die() { echo "schemathesis.sh: $*" >&2; exit 1; }
as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target" && target=$(cd "$target" && pwd)
venv=$target/schemathesis-$version

# A venv is not relocatable, so it is made in place; `.installed` marks a complete one.
if [[ ! -e $venv/.installed ]]; then
  rm -rf "$venv"
  if ! command -v python3 >/dev/null || ! python3 -m venv "$venv" >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "python3 -m venv fails and there is no apt-get: install python3-venv"
    echo "schemathesis.sh: installing python3-venv (apt-get)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "schemathesis==$version"
  touch "$venv/.installed"
fi

if [[ $profile == release ]]; then cargo build -q --release --bin usaged; else cargo build -q --bin usaged; fi
bin=$target/$profile/usaged

tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$bin" --bind 127.0.0.1 --port 0 --threads 2 --no-pin --data-dir "$tmp/data" 2>"$tmp/server.log" &
pid=$!
# Wait for the one `listening on 127.0.0.1:PORT (N workers)` line (or the server's exit).
port=
for _ in $(seq 300); do
  port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$tmp/server.log")
  [[ -n $port ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; die "the server exited"; }
  sleep 0.1
done
[[ -n $port ]] || { cat "$tmp/server.log" >&2; die "no 'listening on' line within 30 s"; }

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance,negative_data_rejection
checks+=,unsupported_method,allow_header_conformance
# From $tmp, so that hypothesis leaves nothing in the work tree.
(
  cd "$tmp"
  timeout 600 "$venv/bin/schemathesis" run "$root/openapi.yaml" \
    --url "http://127.0.0.1:$port" --checks "$checks" --max-examples "$examples" \
    --generation-database none --request-timeout 10 --no-color "${extra[@]}"
) || { echo "schemathesis.sh: failed; the server's log:" >&2; cat "$tmp/server.log" >&2; exit 1; }
kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; die "the server died during the run"; }

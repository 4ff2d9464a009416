#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: exact and repeatable
# whatever else the machine does, unlike wall-clock numbers on a shared 2-core box.
#
#   bench/callgrind.sh [REQUESTS] [OUT_DIR] [CONNECTIONS]
#                                 (defaults: 20000, target/callgrind, 16)
#
# Servers measured, all with the same handler (bench/src/handler.rs) and runtime:
#   bare           hyper-util's auto builder, nothing else           (the baseline)
#   graceful       bare --graceful: + hyper's header read timeout and hyper-util's
#                  GracefulShutdown, what an axum::serve user runs
#   served         ceaseless::Server with its defaults
#   served-ext     the same with .request_extensions(true)
# Each runs under callgrind; once it has answered one request its counters are zeroed
# (start-up left out), h2load (bench/install-tools.sh) sends REQUESTS keep-alive
# requests over CONNECTIONS connections (1: strict ping-pong, the most repeatable
# count; more: batching varies a little from run to run), and the counts are dumped.
# PROTO=h2c sends h2c instead (8 streams per connection); URL_PATH=/async asks for the
# route whose handler is pending on its first poll. ONLY="bare served" limits the set.
# Reads the binaries from target/release (cargo build --release -p ceaseless-bench
# --bins); prints instructions per request and bare/server, and leaves the callgrind
# files, to compare with callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
out=${2:-target/callgrind}
conns=${3:-16}
path=${URL_PATH:-/}
proto_args=(--h1)
[ "${PROTO:-h1}" = h2c ] && proto_args=(-m 8)
mkdir -p "$out"
bin=${BIN_DIR:-target/release}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
command -v h2load >/dev/null || { echo "callgrind.sh: h2load is missing: bench/install-tools.sh" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

total_ir() { # the "summary:" line of a callgrind file
  awk '/^summary:/ {print $2}' "$1"
}

declare -A cmd=(
  [bare]="$bin/bare"
  [graceful]="$bin/bare --graceful"
  [served]="$bin/served"
  [served-ext]="$bin/served --extensions"
)
bare_per=""
for name in ${ONLY:-bare graceful served served-ext}; do
  p=$(port)
  rm -f "$out/$name".cg*
  # shellcheck disable=SC2086 # the command's words
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/$name.cg" \
    ${cmd[$name]} --addr "127.0.0.1:$p" 2>"$out/$name.valgrind.log" &
  vg=$!
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$p/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  callgrind_control -z "$vg" >/dev/null 2>&1        # zero the counters: start-up left out
  h2load "${proto_args[@]}" -n "$n" -c "$conns" -t 1 "http://127.0.0.1:$p$path" | grep -E '^requests:' >&2
  callgrind_control -d "$vg" >/dev/null 2>&1        # dump the load's counts
  sleep 0.5
  kill -INT "$vg" 2>/dev/null || true
  kill -TERM "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  f=$(ls -t "$out/$name".cg.* 2>/dev/null | head -1)
  ir=$(total_ir "$f")
  per=$((ir / n))
  [ "$name" = bare ] && bare_per=$per
  ratio=""
  [ -n "$bare_per" ] && ratio=$(python3 -c "print(f'  bare/{\"$name\"} = {$bare_per/$per:.3f}')")
  echo "$name: $ir instructions for $n requests ($path, ${PROTO:-h1}): $per per request$ratio ($f)"
done

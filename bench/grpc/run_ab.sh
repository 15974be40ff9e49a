#!/bin/bash
# Runs quotad and the no-op server of the same proto under the same asynchronous load
# (1, 16, 64 calls in flight, interleaved A/B rounds) and prints req/s, p50, p99 and the ratio
# quotad / no-op.
#
#   bench/grpc/run_ab.sh [BUILD_DIR] [-- extra grpc_loadgen flags, e.g. --rounds=5 --duration=5s]
#
# BUILD_DIR defaults to ./build; it must contain quotad, grpc_noop_server and grpc_loadgen
# (ninja -C BUILD_DIR quotad grpc_noop_server grpc_loadgen).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == -- ]] && shift
quotad=$build/service/server/quotad
noop=$build/bench/grpc/grpc_noop_server
loadgen=$build/bench/grpc/grpc_loadgen
for b in "$quotad" "$noop" "$loadgen"; do
  [[ -x $b ]] || { echo "run_ab.sh: $b not built" >&2; exit 2; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_addr() {  # log file -> address
  for _ in $(seq 1 200); do
    a=$(grep -o 'listening address=[^ ]*' "$1" 2>/dev/null | head -1 | cut -d= -f2)
    [[ -n $a ]] && { echo "$a"; return 0; }
    sleep 0.05
  done
  echo "run_ab.sh: server did not start:" >&2; cat "$1" >&2; return 1
}

"$quotad" --config="$here/bench_config.yaml" --listen=127.0.0.1:0 --memory_only --metrics_listen= 2>"$tmp/quotad.log" &
pids+=($!)
"$noop" --listen=127.0.0.1:0 2>"$tmp/noop.log" &
pids+=($!)
qaddr=$(wait_addr "$tmp/quotad.log")
naddr=$(wait_addr "$tmp/noop.log")
echo "quotad=$qaddr noop=$naddr cores=$(nproc) $(date -u +%FT%TZ)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
q0=$(cpu_ticks "${pids[0]}"); n0=$(cpu_ticks "${pids[1]}")
"$loadgen" --target="quotad=$qaddr,noop=$naddr" "$@" | tee "$tmp/loadgen.out"
q1=$(cpu_ticks "${pids[0]}"); n1=$(cpu_ticks "${pids[1]}")
# Server CPU per call: less sensitive than req/s to other work on a shared machine.
hz=$(getconf CLK_TCK)
qcalls=$(awk -F'calls=' '/^total target=quotad/ {print $2}' "$tmp/loadgen.out")
ncalls=$(awk -F'calls=' '/^total target=noop/ {print $2}' "$tmp/loadgen.out")
awk -v q=$((q1 - q0)) -v n=$((n1 - n0)) -v qc="$qcalls" -v nc="$ncalls" -v hz="$hz" 'BEGIN {
  qu = q / hz * 1e6 / qc; nu = n / hz * 1e6 / nc;
  printf "server CPU per call: quotad %.1f us, noop %.1f us, ratio noop/quotad %.3f\n", qu, nu, nu / qu }'

#!/bin/bash
# Batched decisions: quotad with --memory_only, the same asked for decisions only
# (AcquireBatchRequest.decisions_only: no limits in the answers), quotad with --state (a fresh
# SQLite file) and the no-op server of the same proto, driven in ONE run by the same asynchronous load generator with
# AcquireBatch calls of 1 / 10 / 100 / 1000 items at 1 / 16 / 64 calls in flight, the targets
# interleaved. Prints one line per run, then the targets side by side: decisions (items) per
# second, calls per second, p99, and quotad's decisions/s divided by the no-op's; then each
# server's CPU time per decision.
#
#   bench/grpc/run_batch.sh [BUILD_DIR] [-- extra grpc_loadgen flags, e.g. --rounds=3 --duration=3s]
#
# Defaults: --rounds=1 --duration=2s --warmup=300ms (about 2 minutes in all); later flags win.
# BUILD_DIR defaults to ./build; it must contain quotad, grpc_noop_server and grpc_loadgen
# (ninja -C BUILD_DIR quotad grpc_noop_server grpc_loadgen).
#
# BEFORE=/path/to/an/older/quotad adds that binary as two more targets (before_memory,
# before_state) in the same interleaved run, to compare a change with its base side by side:
#   cp build/service/server/quotad /tmp/quotad_before   # on the base commit
#   BEFORE=/tmp/quotad_before bench/grpc/run_batch.sh build -- --batch=1000
#
# SHARED=1 measures shared mode instead: quotad --redis on a redis-server started here (in
# memory, loopback), with BEFORE that binary on a redis-server of its own, and the no-op server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == -- ]] && shift
quotad=$build/service/server/quotad
noop=$build/bench/grpc/grpc_noop_server
loadgen=$build/bench/grpc/grpc_loadgen
before_bin=${BEFORE:-}
for b in "$quotad" "$noop" "$loadgen" ${before_bin:+"$before_bin"}; do
  [[ -x $b ]] || { echo "run_batch.sh: $b not built" >&2; exit 2; }
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
  echo "run_batch.sh: server did not start:" >&2; cat "$1" >&2; return 1
}

common=(--config="$here/bench_config.yaml" --listen=127.0.0.1:0 --metrics_listen=)
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
redis_on() {  # name -> a redis-server in memory on loopback, its port in $redis_port
  # Not in a $(...) subshell: its pid must reach `pids` for the cleanup.
  local port; port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$tmp" \
    --dbfilename "$1.rdb" >"$tmp/$1.redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && { redis_port=$port; return 0; }
    sleep 0.05
  done
  echo "run_batch.sh: redis-server did not start" >&2; return 1
}
if [[ -n ${SHARED:-} ]]; then
  redis_on shared
  "$quotad" "${common[@]}" --redis="redis://127.0.0.1:$redis_port" 2>"$tmp/shared.log" &
  pids+=($!)
  "$noop" --listen=127.0.0.1:0 2>"$tmp/noop.log" &
  pids+=($!)
  targets="quotad_shared=$(wait_addr "$tmp/shared.log")"
  if [[ -n $before_bin ]]; then
    redis_on before
    "$before_bin" "${common[@]}" --redis="redis://127.0.0.1:$redis_port" \
      2>"$tmp/before_shared.log" &
    pids+=($!)
    targets+=",before_shared=$(wait_addr "$tmp/before_shared.log")"
  fi
  targets+=",noop=$(wait_addr "$tmp/noop.log")"
  echo "${targets//,/ } cores=$(nproc) $(date -u +%FT%TZ)"
  "$loadgen" --target="$targets" \
    --batch=1,10,100,1000 --inflight=1,16,64 --rounds=1 --duration=2s --warmup=300ms "$@"
  exit 0
fi
"$quotad" "${common[@]}" --memory_only 2>"$tmp/memory.log" &
pids+=($!)
"$quotad" "${common[@]}" --state="$tmp/state.db" 2>"$tmp/state.log" &
pids+=($!)
"$quotad" "${common[@]}" --memory_only 2>"$tmp/decisions.log" &
pids+=($!)
"$noop" --listen=127.0.0.1:0 2>"$tmp/noop.log" &
pids+=($!)
names=(quotad_memory quotad_state quotad_decisions noop)
if [[ -n $before_bin ]]; then
  "$before_bin" "${common[@]}" --memory_only 2>"$tmp/before_memory.log" &
  pids+=($!)
  "$before_bin" "${common[@]}" --state="$tmp/before_state.db" 2>"$tmp/before_state.log" &
  pids+=($!)
  names+=(before_memory before_state)
fi
maddr=$(wait_addr "$tmp/memory.log")
saddr=$(wait_addr "$tmp/state.log")
daddr=$(wait_addr "$tmp/decisions.log")
naddr=$(wait_addr "$tmp/noop.log")
targets="quotad_memory=$maddr,quotad_state=$saddr,quotad_decisions=$daddr"
if [[ -n $before_bin ]]; then
  targets+=",before_memory=$(wait_addr "$tmp/before_memory.log")"
  targets+=",before_state=$(wait_addr "$tmp/before_state.log")"
fi
targets+=",noop=$naddr"  # last: the loadgen's baseline
echo "${targets//,/ } cores=$(nproc) $(date -u +%FT%TZ)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=(); for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
"$loadgen" --target="$targets" \
  --batch=1,10,100,1000 --inflight=1,16,64 --rounds=1 --duration=2s --warmup=300ms \
  --decisions_only=quotad_decisions "$@" |
  tee "$tmp/loadgen.out"
# Server CPU per decision: less sensitive than decisions/s to other work on a shared machine.
hz=$(getconf CLK_TCK)
line="server CPU per decision (all cells):"
for i in "${!names[@]}"; do
  ticks=$(( $(cpu_ticks "${pids[$i]}") - ${before[$i]} ))
  decisions=$(awk -v t="${names[$i]}" -F'decisions=' '$0 ~ "^total target=" t " " {split($2, a, " "); print a[1]}' "$tmp/loadgen.out")
  line+=$(awk -v t="$ticks" -v d="$decisions" -v hz="$hz" -v n="${names[$i]}" \
    'BEGIN { printf " %s %.2f us", n, (d > 0 ? t / hz * 1e6 / d : 0) }')
done
echo "$line"

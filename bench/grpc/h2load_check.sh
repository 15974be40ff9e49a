#!/bin/bash
# Cross-check of run_ab.sh with an independent load generator: h2load (nghttp2-client) sends raw
# gRPC frames (5-byte length prefix + a serialized AcquireRequest) to quotad and to the no-op
# server, one after the other, at 16 and 64 streams in flight over one connection.
#
#   bench/grpc/h2load_check.sh [BUILD_DIR] [REQUESTS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
requests=${2:-200000}
quotad=$build/service/server/quotad
noop=$build/bench/grpc/grpc_noop_server
command -v h2load >/dev/null || { echo "h2load_check.sh: h2load not installed (nghttp2-client)" >&2; exit 2; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# AcquireRequest{credential: "bench/key", feature: "requests", holder: "h2load"} as a gRPC frame.
python3 - "$tmp/body.bin" <<'PY'
import struct, sys
def field(num, s):
    b = s.encode()
    return bytes([(num << 3) | 2, len(b)]) + b
msg = field(1, "bench/key") + field(2, "requests") + field(8, "h2load")
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY

wait_addr() {
  for _ in $(seq 1 200); do
    a=$(grep -o 'listening address=[^ ]*' "$1" 2>/dev/null | head -1 | cut -d= -f2)
    [[ -n $a ]] && { echo "$a"; return 0; }
    sleep 0.05
  done
  cat "$1" >&2; return 1
}
"$quotad" --config="$here/bench_config.yaml" --listen=127.0.0.1:0 --memory_only --metrics_listen= 2>"$tmp/quotad.log" &
pids+=($!)
"$noop" --listen=127.0.0.1:0 2>"$tmp/noop.log" &
pids+=($!)
qaddr=$(wait_addr "$tmp/quotad.log")
naddr=$(wait_addr "$tmp/noop.log")

echo "| in flight | target | req/s (h2load) |"
echo "| --- | --- | --- |"
for m in 16 64; do
  for t in "quotad $qaddr" "noop $naddr"; do
    set -- $t
    rps=$(h2load -n "$requests" -c 1 -m "$m" -t 1 -d "$tmp/body.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://$2/quotad.v1.Quota/Acquire" 2>&1 | awk '/^finished in/ {print $4}')
    echo "| $m | $1 | ${rps%,} |"
  done
done

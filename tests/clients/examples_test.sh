#!/bin/sh
# examples_test.sh QUOTAD CONFIG VT_WORKER RETROHUNT_JOB
# Runs both examples against a real quotad on a free port: the worker scans 12 files (4 known,
# 8 uploaded); the long job holds a 1 s lease for 4 s.
set -eu
quotad=$1 config=$2 vt=$3 retrohunt=$4
log=$(mktemp)
"$quotad" --config="$config" --listen=127.0.0.1:0 --memory_only >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
port=
for _ in $(seq 1 200); do
  port=$(sed -n 's/.*listening address=[^ ]*:\([0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { cat "$log"; exit 1; }
out=$("$vt" --server=127.0.0.1:$port --credential=test/vt --files=12)
echo "$out"
echo "$out" | grep -q "lookups=12 uploads=8"
out=$("$retrohunt" --server=127.0.0.1:$port --credential=test/retrohunt --feature=jobs --ttl=1s --run=4s)
echo "$out"
echo "$out" | grep -q "renewed_past_first_expiry=yes"

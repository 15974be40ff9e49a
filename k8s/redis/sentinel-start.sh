#!/bin/sh
# Starts redis-sentinel monitoring MASTER_NAME at the primary the other sentinels name, or at
# REDIS_INITIAL_PRIMARY while none does (first start). Sentinel keeps what it learns (the
# replicas, the other sentinels, a failover's new primary) by rewriting its configuration
# file, so that file is written here into a writable emptyDir, never the ConfigMap.
#
# Environment (set by the StatefulSet redis-sentinel):
#   ANNOUNCE_HOST, SENTINEL_PORT, SENTINEL_BIND, REDIS_INITIAL_PRIMARY, SENTINELS, MASTER_NAME
#   as in redis-start.sh; QUORUM (2 of 3), DOWN_AFTER_MS (how long a primary must fail
#   before a failover starts).
set -eu

primary=""
for s in $SENTINELS; do
  [ "$s" = "$ANNOUNCE_HOST:$SENTINEL_PORT" ] && continue
  answer="$(redis-cli -h "${s%:*}" -p "${s##*:}" --raw \
    SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null)" || continue
  set -- $answer
  if [ $# -eq 2 ]; then
    primary="$1 $2"
    echo "sentinel-start: sentinel $s names the primary $primary"
    break
  fi
done
[ -n "$primary" ] || primary="$REDIS_INITIAL_PRIMARY"

# Sentinel resolves the primary's name once at start and exits if it cannot: wait (at most
# 60 s, then start anyway and let the kubelet restart it) until the primary answers.
set -- $primary
tries=0
until [ "$(redis-cli -h "$1" -p "$2" PING 2>/dev/null)" = PONG ] || [ "$tries" -ge 60 ]; do
  tries=$((tries + 1))
  sleep 1
done
echo "sentinel-start: monitoring $MASTER_NAME at $1:$2 (quorum $QUORUM)"

conf=/sentinel/sentinel.conf
{
  echo "port $SENTINEL_PORT"
  echo "bind $SENTINEL_BIND"
  echo "protected-mode no"
  echo "dir /sentinel"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $ANNOUNCE_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "sentinel monitor $MASTER_NAME $1 $2 $QUORUM"
  echo "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS"
  echo "sentinel failover-timeout $MASTER_NAME 60000"
  echo "sentinel parallel-syncs $MASTER_NAME 1"
} >"$conf"
exec redis-sentinel "$conf"

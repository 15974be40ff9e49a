#!/bin/sh
# Starts redis-server as the primary, or as a replica of the primary the sentinels name.
#
# Environment (set by the StatefulSet redis; tests/k8s/smoke_shared.py sets loopback values):
#   ANNOUNCE_HOST          the name the others reach this pod by (<pod>.redis)
#   REDIS_PORT             6379
#   REDIS_BIND             the addresses to listen on ("* -::*": every IPv4 and IPv6 one)
#   REDIS_INITIAL_PRIMARY  "HOST PORT" of the primary while no sentinel knows one (redis-0)
#   SENTINELS              "HOST:PORT ..." of the sentinels
#   MASTER_NAME            the name the sentinels monitor (quotad)
#
# A pod that restarts asks the sentinels first: after a failover the primary is whichever pod
# they promoted, and a restarted old primary must come back as its replica, not as a second
# primary. Only when no sentinel answers (first start of the whole set) does redis-0 start as
# the primary and the others as its replicas. Sentinel corrects a replica that points at the
# wrong primary anyway; this only spares it that detour.
set -eu

primary=""
for s in $SENTINELS; do
  answer="$(redis-cli -h "${s%:*}" -p "${s##*:}" --raw \
    SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null)" || continue
  set -- $answer
  if [ $# -eq 2 ]; then
    primary="$1 $2"
    echo "redis-start: sentinel $s names the primary $primary"
    break
  fi
done
if [ -z "$primary" ]; then
  primary="$REDIS_INITIAL_PRIMARY"
  echo "redis-start: no sentinel knows a primary yet; the initial primary is $primary"
fi

conf=/tmp/redis.conf
{
  echo "include /etc/quotad-redis/redis.conf"
  echo "port $REDIS_PORT"
  echo "bind $REDIS_BIND"
  echo "replica-announce-ip $ANNOUNCE_HOST"
  echo "replica-announce-port $REDIS_PORT"
  if [ "$primary" != "$ANNOUNCE_HOST $REDIS_PORT" ]; then
    echo "replicaof $primary"
    # Not promotable before its first sync: Sentinel would otherwise promote a replica that
    # has no data yet if the primary flaps meanwhile, and every grant would be lost.
    echo "replica-priority 0"
  fi
} >"$conf"
if [ "$primary" = "$ANNOUNCE_HOST $REDIS_PORT" ]; then
  echo "redis-start: $ANNOUNCE_HOST:$REDIS_PORT starts as the primary"
else
  echo "redis-start: $ANNOUNCE_HOST:$REDIS_PORT starts as a replica of $primary (not promotable until synced)"
  (
    until redis-cli -p "$REDIS_PORT" INFO replication 2>/dev/null | grep -q '^master_link_status:up'; do
      sleep 1
    done
    redis-cli -p "$REDIS_PORT" CONFIG SET replica-priority 100 >/dev/null &&
      echo "redis-start: synced with $primary; promotable again"
  ) &
fi
exec redis-server "$conf"

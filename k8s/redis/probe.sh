#!/bin/sh
# Readiness and liveness of the Redis pods: `probe.sh redis` or `probe.sh sentinel` passes
# when that server answers PING with PONG on its port (a redis-server still loading its AOF
# answers -LOADING and fails).
case "$1" in
  redis) port="$REDIS_PORT" ;;
  sentinel) port="$SENTINEL_PORT" ;;
  *) echo "probe.sh: redis or sentinel, not '$1'" >&2; exit 2 ;;
esac
[ "$(redis-cli -h 127.0.0.1 -p "$port" PING 2>&1)" = PONG ]

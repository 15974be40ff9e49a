#!/usr/bin/env bash
# Smoke test of the rendered shared overlay under podman (not registered in CTest): builds
# quotad's image (k8s/image/build.sh) and the Redis image (k8s/image/build-redis.sh), renders
# k8s/overlays/shared, turns it into pods on the host network on 127.0.0.1
# (tests/k8s/smoke.py shared): redis-0 (primary) and redis-1 (replica) run the overlay's
# redis-start.sh, redis-sentinel-0 its sentinel-start.sh (one sentinel, quorum 1), quotad-0
# and quotad-1 the Deployment's arguments (sentinel URL, WAIT 1) pointed at that sentinel.
# `podman kube play`s them, then checks: the sentinel names redis-0 the primary and redis-1 is
# its replica; through each quotad pod, health SERVING and an Acquire granted whose lease
# locator is on the primary and on the replica (one shared Redis, WAIT honoured).
#
#   tests/k8s/smoke_shared.sh [path/to/quotad]      (default build/service/server/quotad)
#
# Exit 0 pass, 1 fail, 77 skipped (podman missing or unable to run containers here).
# Sandbox workarounds as in smoke.sh (runc, rlimits), plus: podman 4.3's kube play implements
# neither fsGroup nor a writable emptyDir for a non-root user, so every emptyDir and claim is a
# podman volume made here and given to uid 65532 first, as the kubelet's fsGroup would.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/build/service/server/quotad}"
work="$(mktemp -d)"
skip() { echo "SKIP k8s shared smoke: $*"; exit 77; }

command -v podman >/dev/null || skip "podman is not installed (Debian package podman)"
command -v kubectl >/dev/null || skip "kubectl is not installed"
command -v redis-cli >/dev/null || skip "redis-cli is not installed (Debian package redis-tools)"
[ -x "$binary" ] || skip "no quotad binary at $binary"
/usr/bin/python3 -c 'import grpc, yaml' 2>/dev/null || skip "/usr/bin/python3 lacks grpcio or yaml"

nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"; [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ] && nproc=4096
{
  echo '[containers]'
  echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  if command -v runc >/dev/null; then echo '[engine]'; echo 'runtime = "runc"'; fi
} >"$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
redis0="$(free_port)"; redis1="$(free_port)"; sentinel="$(free_port)"
grpc0="$(free_port)"; metrics0="$(free_port)"; grpc1="$(free_port)"; metrics1="$(free_port)"
prefix="quotad-smoke-$$"
tag="localhost/quotad:smoke-$$"
redis_tag="localhost/quotad-redis:smoke-$$"
volumes=""
cleanup() {
  podman kube down "$work/play.yaml" >/dev/null 2>&1 || true
  # The volumes of the ConfigMaps (made by kube play, one per pod: smoke.py own_configmaps).
  configmaps="$(/usr/bin/python3 -c 'import sys, yaml
print(" ".join(d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ConfigMap"))' \
    "$work/play.yaml" 2>/dev/null || true)"
  for v in $volumes $configmaps; do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
  podman rmi -f "$tag" "$redis_tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$root/k8s/image/build.sh" --binary "$binary" --out "$work/image" --tag "$tag" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; skip "podman build of quotad failed (see above)"; }
"$root/k8s/image/build-redis.sh" --out "$work/redis-image" --tag "$redis_tag" >"$work/build-redis.log" 2>&1 ||
  { cat "$work/build-redis.log"; skip "podman build of the Redis image failed (see above)"; }
if ! podman run --rm --network host "$tag" --help >"$work/run.log" 2>&1; then
  grep -q 'quotad --config' "$work/run.log" ||
    { cat "$work/run.log"; skip "podman cannot run a container here: $(head -1 "$work/run.log")"; }
fi

kubectl kustomize "$root/k8s/overlays/shared" >"$work/rendered.yaml"
volumes="$(/usr/bin/python3 "$here/smoke.py" shared "$work/rendered.yaml" "$work/play.yaml" \
  --redis-ports "$redis0,$redis1" --sentinel-port "$sentinel" \
  --quotad-ports "$grpc0:$metrics0,$grpc1:$metrics1" --volume-prefix "$prefix")"
for v in $volumes; do
  podman volume create "$v" >/dev/null
  chown 65532:65532 "$(podman volume inspect -f '{{.Mountpoint}}' "$v")"
done
sed -i -e "s|image: quotad:dev|image: $tag|" -e "s|image: quotad-redis:dev|image: $redis_tag|" "$work/play.yaml"
podman kube play "$work/play.yaml"

status=0
# Both quotad pods SERVING means each found the primary through the sentinel and (WAIT 1)
# that the primary has its replica.
/usr/bin/python3 "$here/smoke.py" check --port "$grpc0" --timeout 90 --lease-on-redis "$redis0,$redis1" || status=1
/usr/bin/python3 "$here/smoke.py" check --port "$grpc1" --timeout 30 --lease-on-redis "$redis0,$redis1" || status=1
master="$(redis-cli -h 127.0.0.1 -p "$sentinel" --raw SENTINEL get-master-addr-by-name quotad | tr '\n' ' ')"
echo "smoke: sentinel 127.0.0.1:$sentinel names the primary: $master"
[ "$master" = "127.0.0.1 $redis0 " ] || { echo "smoke: expected 127.0.0.1 $redis0"; status=1; }
role1="$(redis-cli -h 127.0.0.1 -p "$redis1" --raw ROLE | head -1)"
aof="$(redis-cli -h 127.0.0.1 -p "$redis0" --raw CONFIG GET appendfsync | tail -1)"
echo "smoke: redis-1 ROLE -> $role1; redis-0 appendfsync -> $aof"
[ "$role1" = slave ] || status=1
[ "$aof" = always ] || status=1
for pod in redis-0 redis-1 redis-sentinel-0 quotad-0 quotad-1; do
  container="$pod-$(podman pod inspect "$pod" -f '{{range .Containers}}{{.Name}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | sed -n "s/^$pod-//p" | head -1)"
  echo "--- $container logs"
  podman logs "$container" 2>&1 | tail -8 || true
done
if [ "$status" -eq 0 ]; then echo "k8s shared smoke: 1 passed, 0 failed"; else echo "k8s shared smoke: 0 passed, 1 failed"; fi
exit "$status"

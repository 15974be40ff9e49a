#!/usr/bin/env bash
# Smoke test of the rendered embedded overlay under podman (not registered in CTest):
# builds the FROM scratch image (k8s/image/build.sh), renders k8s/overlays/embedded, turns the
# StatefulSet into a Pod on the host network listening on 127.0.0.1 (tests/k8s/smoke.py),
# `podman kube play`s it, then checks grpc.health.v1 and calls Quota/Acquire through it.
#
#   tests/k8s/smoke.sh [path/to/quotad]      (default build/service/server/quotad)
#
# Exit 0 pass, 1 fail, 77 skipped (podman missing or unable to run containers here).
# Sandbox workarounds, all local to this script through CONTAINERS_CONF:
#  - crun refuses a hybrid cgroup v1/v2 host whose cgroup2 mount has controllers ("cgroups in
#    hybrid mode not supported"): use runc when it is installed.
#  - without CAP_SYS_RESOURCE podman's default rlimits (nofile 1048576, nproc 4194304) cannot
#    be set ("setrlimit RLIMIT_NOFILE: Operation not permitted"): set them to this shell's.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/build/service/server/quotad}"
work="$(mktemp -d)"
skip() { echo "SKIP k8s smoke: $*"; exit 77; }

command -v podman >/dev/null || skip "podman is not installed (Debian package podman)"
command -v kubectl >/dev/null || skip "kubectl is not installed"
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

port="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
volume="quotad-smoke-state-$$"
tag="localhost/quotad:smoke-$$"
cleanup() {
  podman kube down "$work/play.yaml" >/dev/null 2>&1 || true
  podman volume rm -f "$volume" quotad-config >/dev/null 2>&1 || true   # quotad-config: the ConfigMap's
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Can podman run a container here at all? If not, say exactly why and skip.
"$root/k8s/image/build.sh" --binary "$binary" --out "$work/image" --tag "$tag" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; skip "podman build failed (see above)"; }
if ! podman run --rm --network host "$tag" --help >"$work/run.log" 2>&1; then
  grep -q 'quotad --config' "$work/run.log" ||
    { cat "$work/run.log"; skip "podman cannot run a container here: $(head -1 "$work/run.log")"; }
fi

kubectl kustomize "$root/k8s/overlays/embedded" >"$work/rendered.yaml"
/usr/bin/python3 "$here/smoke.py" pod "$work/rendered.yaml" "$work/play.yaml" --port "$port" --volume "$volume"
sed -i "s|image: quotad:dev|image: $tag|" "$work/play.yaml"
podman kube play "$work/play.yaml"
# Kubernetes makes the claim writable for the pod's fsGroup (65532); podman 4.3's kube play does
# not implement fsGroup, so give the volume (made by kube play from the claim) to that group the
# way the kubelet would. The container restarts (restartPolicy Always) and then opens its state.
chown 65532:65532 "$(podman volume inspect -f '{{.Mountpoint}}' "$volume")"

status=0
/usr/bin/python3 "$here/smoke.py" check --port "$port" --timeout 30 || status=1
echo "--- quotad-0 logs"
podman logs quotad-0-quotad 2>&1 | tail -20 || true
if [ "$status" -eq 0 ]; then echo "k8s smoke: 1 passed, 0 failed"; else echo "k8s smoke: 0 passed, 1 failed"; fi
exit "$status"

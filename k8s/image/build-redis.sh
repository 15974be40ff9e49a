#!/usr/bin/env bash
# Stages the rootfs of the Redis image of the shared overlay (k8s/redis) and builds it with
# podman, the way build.sh builds quotad's: FROM scratch, nothing pulled, the binaries of this
# machine's Debian 12 packages redis-server, redis-sentinel and redis-tools (Redis 7.0).
#
#   k8s/image/build-redis.sh [--out DIR] [--tag NAME:TAG] [--stage-only]
#
# Defaults: --out build/k8s-image-redis, --tag quotad-redis:dev.
# The rootfs holds: /usr/bin/redis-server (Debian's binary; redis-sentinel is a symlink to it,
# Redis picks sentinel mode from that name), /usr/bin/redis-cli, /bin/sh (dash) and
# /usr/bin/sleep for the start scripts and probes that k8s/redis mounts from a ConfigMap, every
# library they link, /etc/passwd and /etc/group with user redis (65532), /tmp, and /data
# owned by that user.
# No package manager. Install the packages first: apt-get install redis-server redis-sentinel.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/build/k8s-image-redis"
tag="quotad-redis:dev"
stage_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --stage-only) stage_only=1; shift ;;
    *) echo "build-redis.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

versions=""
for pkg in redis-server redis-sentinel redis-tools dash coreutils; do
  v="$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)"
  case "$v" in
    "install ok installed "*) versions="$versions $pkg=${v##* }" ;;
    *) echo "build-redis.sh: Debian package $pkg is not installed (apt-get install redis-server redis-sentinel)" >&2
       exit 1 ;;
  esac
done
# /usr/bin/redis-server is a symlink to the one binary of redis-tools (redis-check-rdb).
server="$(readlink -f /usr/bin/redis-server)"

rootfs="$out/rootfs"
owned="$out/owned"   # copied with --chown=65532:65532 (Containerfile.redis)
rm -rf "$rootfs" "$owned"
mkdir -p "$rootfs"/{bin,usr/bin,tmp} "$owned/data"

. "$root/k8s/image/rootfs.sh"
stage_elf "$rootfs" "$server" /usr/bin/redis-server
ln -s redis-server "$rootfs/usr/bin/redis-sentinel"
stage_elf "$rootfs" /usr/bin/redis-cli /usr/bin/redis-cli
stage_elf "$rootfs" "$(readlink -f /bin/sh)" /bin/sh
stage_elf "$rootfs" /usr/bin/sleep /usr/bin/sleep
stage_etc "$rootfs" redis /data
chmod 1777 "$rootfs/tmp"
chmod 0755 "$owned/data"

echo "build-redis.sh: staged $rootfs ($(du -sh "$rootfs" | cut -f1),$versions)"
[ "$stage_only" = 1 ] && exit 0

command -v podman >/dev/null || { echo "build-redis.sh: podman not found (Debian package podman)" >&2; exit 1; }
cp "$root/k8s/Containerfile.redis" "$out/Containerfile"
podman build --pull=never -f "$out/Containerfile" -t "$tag" \
  --label "io.quotad.debian-packages=${versions# }" "$out"
echo "build-redis.sh: built $tag"

#!/usr/bin/env bash
# Stages the rootfs of quotad's FROM scratch image and builds it with podman.
#
#   k8s/image/build.sh [--binary PATH] [--out DIR] [--tag NAME:TAG] [--stage-only]
#
# Defaults: --binary build/service/server/quotad, --out build/k8s-image, --tag quotad:dev.
# The rootfs holds: /usr/local/bin/quotad; every library `ldd` lists, copied to the path ldd
# resolved it to, plus the ELF interpreter; /usr/share/zoneinfo (without the right/ tree);
# /etc/passwd, /etc/group and /etc/nsswitch.conf with user quotad (65532); an example
# /etc/quotad/quotad.yaml (Kubernetes mounts the ConfigMap over it); /tmp and /var/lib/quotad.
# Nothing is pulled: FROM scratch needs no registry.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
binary="$root/build/service/server/quotad"
out="$root/build/k8s-image"
tag="quotad:dev"
stage_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --stage-only) stage_only=1; shift ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "build.sh: no quotad binary at $binary (build it first, or pass --binary)" >&2; exit 1; }
[ -d /usr/share/zoneinfo ] || { echo "build.sh: /usr/share/zoneinfo missing (Debian package tzdata)" >&2; exit 1; }

rootfs="$out/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/local/bin,etc/quotad,tmp,var/lib/quotad,usr/share}

. "$root/k8s/image/rootfs.sh"
stage_elf "$rootfs" "$binary" /usr/local/bin/quotad
libs="$STAGED_LIBS"

# Zoneinfo for calendar windows in named zones (absl reads $TZDIR, default this path).
cp -a /usr/share/zoneinfo "$rootfs/usr/share/zoneinfo"
rm -rf "$rootfs/usr/share/zoneinfo/right"

stage_etc "$rootfs" quotad /var/lib/quotad
cp "$root/k8s/base/quotad.yaml" "$rootfs/etc/quotad/quotad.yaml"
chmod 1777 "$rootfs/tmp"
chmod 0755 "$rootfs/var/lib/quotad"
# Owned by the runtime user when the image is built rootful; rootless podman maps it anyway.
chown 65532:65532 "$rootfs/var/lib/quotad" 2>/dev/null || true

echo "build.sh: staged $rootfs ($(du -sh "$rootfs" | cut -f1), $(echo "$libs" | wc -w) libraries)"
[ "$stage_only" = 1 ] && exit 0

command -v podman >/dev/null || { echo "build.sh: podman not found (Debian package podman)" >&2; exit 1; }
cp "$root/k8s/Containerfile" "$out/Containerfile"
podman build --pull=never -f "$out/Containerfile" -t "$tag" "$out"
echo "build.sh: built $tag"

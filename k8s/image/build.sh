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

install -m 0755 "$binary" "$rootfs/usr/local/bin/quotad"

# Shared libraries: "name => /path (addr)" lines, and the interpreter "/lib64/ld-linux... (addr)".
libs="$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)"
if ldd "$binary" | grep -q 'not found'; then
  ldd "$binary" | grep 'not found' >&2
  echo "build.sh: unresolved libraries" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"     # the file itself, under the name the loader looks for
done
# Without /etc/ld.so.cache the loader searches its built-in directories; on a merged-/usr host
# ldd may report /lib/... for libraries that live in /usr/lib/...: keep both names resolvable.
if [ -d "$rootfs/lib/x86_64-linux-gnu" ] && [ ! -e "$rootfs/usr/lib/x86_64-linux-gnu" ]; then
  mkdir -p "$rootfs/usr/lib"
  ln -s ../../lib/x86_64-linux-gnu "$rootfs/usr/lib/x86_64-linux-gnu"
fi

# Zoneinfo for calendar windows in named zones (absl reads $TZDIR, default this path).
cp -a /usr/share/zoneinfo "$rootfs/usr/share/zoneinfo"
rm -rf "$rootfs/usr/share/zoneinfo/right"

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
quotad:x:65532:65532:quotad:/var/lib/quotad:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
quotad:x:65532:
nogroup:x:65534:
GROUP
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
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

# Helpers shared by build.sh (quotad) and build-redis.sh (Redis): stage an ELF binary and every
# library it links into a FROM scratch rootfs, and the minimal /etc files of a non-root image.
# Sourced, not run.

# stage_elf ROOTFS SOURCE DEST: installs SOURCE (a dynamically linked ELF file) at ROOTFS/DEST
# and every library `ldd` lists, copied to the path ldd resolved it to, plus the ELF interpreter.
stage_elf() {
  local rootfs="$1" source="$2" dest="$3" libs lib
  mkdir -p "$rootfs$(dirname "$dest")"
  install -m 0755 "$source" "$rootfs$dest"
  if ldd "$source" | grep -q 'not found'; then
    ldd "$source" | grep 'not found' >&2
    echo "$(basename "$0"): unresolved libraries of $source" >&2
    return 1
  fi
  # "name => /path (addr)" lines, and the interpreter "/lib64/ld-linux... (addr)".
  libs="$(ldd "$source" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)"
  for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"     # the file itself, under the name the loader looks for
  done
  # Without /etc/ld.so.cache the loader searches its built-in directories; on a merged-/usr
  # host ldd may report /lib/... for libraries that live in /usr/lib/...: keep both names.
  if [ -d "$rootfs/lib/x86_64-linux-gnu" ] && [ ! -e "$rootfs/usr/lib/x86_64-linux-gnu" ]; then
    mkdir -p "$rootfs/usr/lib"
    ln -s ../../lib/x86_64-linux-gnu "$rootfs/usr/lib/x86_64-linux-gnu"
  fi
  STAGED_LIBS="$(printf '%s\n%s\n' "${STAGED_LIBS:-}" "$libs" | sed '/^$/d' | sort -u)"
}

# stage_etc ROOTFS USER HOME: /etc/passwd, /etc/group (USER is uid/gid 65532) and
# /etc/nsswitch.conf (files, then DNS: Kubernetes service names resolve through resolv.conf).
stage_etc() {
  local rootfs="$1" user="$2" home="$3"
  mkdir -p "$rootfs/etc"
  cat >"$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
$user:x:65532:65532:$user:$home:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
  cat >"$rootfs/etc/group" <<GROUP
root:x:0:
$user:x:65532:
nogroup:x:65534:
GROUP
  echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
}

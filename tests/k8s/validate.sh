#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in k8s/ (registered in CTest as k8s_validate).
#
#   1. renders k8s/overlays/* with `kubectl kustomize` (kubectl >= 1.21, kustomize >= v4);
#   2. validates every object with tests/k8s/validate.mjs: the Kubernetes OpenAPI schema
#      (npm package kubernetes-models, installed here under a cache dir) plus unknown fields,
#      selectors, DNS-1123 names, PDB fields, dangling references and quotad's pod policy;
#   3. asserts that the deliberately broken fixture tests/k8s/broken FAILS, with every rule of
#      tests/k8s/broken/expected-rules.txt reported.
#
# Environment: K8S_NPM_CACHE (default: ./k8s-npm under the current directory, which under
# CTest is build/tests/k8s). Needs kubectl, node and npm; the npm registry on the first run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${K8S_NPM_CACHE:-$PWD/k8s-npm}"
models_version=4.5.1   # engines: node >= 14 (5.x wants node >= 22)
yaml_version=4.1.0

fail() { echo "k8s_validate: $*" >&2; exit 1; }

if ! command -v kubectl >/dev/null; then
  # CTest reports exit 77 as skipped (SKIP_RETURN_CODE), with this message in the log.
  echo "k8s_validate: SKIPPED: kubectl not found (the machine image ships it; Debian 12's kubernetes-client 1.20 is too old, see k8s/README.md)" >&2
  exit 77
fi
command -v node >/dev/null || fail "node not found (Debian package nodejs)"
command -v npm >/dev/null || fail "npm not found (Debian package npm)"

# `kubectl kustomize` must understand `labels:` and `patches:` (kustomize v4+, kubectl 1.21+).
kver="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
if [ -z "$kver" ] || [ "$kver" -lt 4 ]; then
  fail "kubectl's kustomize is older than v4 ($(kubectl version --client 2>&1 | head -2 | tr '\n' ' '))"
fi

stamp="$cache/installed-$models_version-$yaml_version"
if [ ! -f "$stamp" ]; then
  echo "k8s_validate: installing kubernetes-models@$models_version js-yaml@$yaml_version into $cache"
  mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --no-save --loglevel=error \
    "kubernetes-models@$models_version" "js-yaml@$yaml_version" >"$cache/npm.log" 2>&1 ||
    { cat "$cache/npm.log" >&2; fail "npm install failed"; }
  touch "$stamp"
fi
modules="$cache/node_modules"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0

for overlay in "$root"/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  if ! kubectl kustomize "$overlay" >"$out/$name.yaml" 2>"$out/$name.err"; then
    cat "$out/$name.err" >&2
    echo "FAIL render k8s/overlays/$name"
    status=1
    continue
  fi
  echo "rendered k8s/overlays/$name: $(grep -c '^kind:' "$out/$name.yaml") objects"
  node "$here/validate.mjs" --modules "$modules" "$out/$name.yaml" || status=1
done

# The broken fixture must fail, and for the right reasons.
kubectl kustomize "$here/broken" >"$out/broken.yaml" || fail "the broken fixture does not render"
set +e
node "$here/validate.mjs" --modules "$modules" "$out/broken.yaml" >"$out/broken.out"
broken_rc=$?
set -e
sed 's/^/  broken: /' "$out/broken.out"
if [ "$broken_rc" -ne 1 ]; then
  echo "FAIL the broken fixture was not rejected (exit $broken_rc, expected 1)"
  status=1
fi
while read -r rule; do
  [ -z "$rule" ] && continue
  if ! grep -q "\[$rule\]" "$out/broken.out"; then
    echo "FAIL the broken fixture should be reported under rule [$rule]"
    status=1
  fi
done <"$here/broken/expected-rules.txt"

if [ "$status" -eq 0 ]; then
  echo "k8s_validate: overlays valid; broken fixture rejected as expected"
fi
exit "$status"

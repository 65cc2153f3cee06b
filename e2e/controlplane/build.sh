#!/usr/bin/env bash
# Builds the local control plane binary (etcd, kube-apiserver,
# kube-controller-manager and kubectl from the upstream Go modules) into
# .cache/controlplane/ at the top of the repository, and skips the build when
# the sources have not changed since the last one. Prints the binary's path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
out="${TORCUS_CONTROLPLANE_DIR:-$top/.cache/controlplane}"
bin="$out/torcus-controlplane"
k8s_version=v1.36.3

stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh" | sha256sum | cut -d' ' -f1)
if [[ -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$out"
# One build at a time: tests and the sandbox may ask at once.
exec 9>"$out/lock"
flock 9
if [[ -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "$bin"
  exit 0
fi
echo "building the local control plane (kubernetes $k8s_version) into $out; the first build takes several minutes" >&2
start=$(date +%s)
cd "$here"
# The version variables are what `kubectl version` and /version report; the
# upstream build stamps them the same way.
go build -trimpath -o "$bin.tmp.$$" \
  -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=$k8s_version \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=36 \
    -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
    -X k8s.io/client-go/pkg/version.gitMajor=1 \
    -X k8s.io/client-go/pkg/version.gitMinor=36" \
  .
mv "$bin.tmp.$$" "$bin"
echo "$stamp" > "$out/stamp"
echo "built the local control plane in $(( $(date +%s) - start ))s" >&2
echo "$bin"

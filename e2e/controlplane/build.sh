#!/usr/bin/env bash
# Builds the local control plane binary (etcd, kube-apiserver,
# kube-controller-manager and kubectl from the upstream Go modules) into
# .cache/controlplane/ at the top of the repository, and skips the build when
# the sources have not changed since the last one. Prints the binary's path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
source "$here/../go-tool.sh"
k8s_version=v1.36.3

go_tool_compile() {
  cd "$here"
  # The version variables are what `kubectl version` and /version report;
  # the upstream build stamps them the same way.
  go build -trimpath -o "$1" \
    -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$k8s_version \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=36 \
      -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
      -X k8s.io/client-go/pkg/version.gitMajor=1 \
      -X k8s.io/client-go/pkg/version.gitMinor=36" \
    .
}

go_tool "the local control plane (kubernetes $k8s_version)" \
  "${TORCUS_CONTROLPLANE_DIR:-$top/.cache/controlplane}/torcus-controlplane" \
  "a first build takes about 9 minutes on 2 cores" \
  "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh"

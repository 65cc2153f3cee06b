#!/usr/bin/env bash
# Builds Helm (the upstream helm.sh/helm/v3 cmd/helm, declared as the tool of
# the Go module beside this file) into .cache/helm/ at the top of the
# repository, and skips the build when the sources have not changed since the
# last one. Prints the binary's path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
source "$here/../go-tool.sh"

go_tool_compile() {
  cd "$here"
  local helm_version client_go k8s_minor
  helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
  # What helm's own Makefile stamps: its version, and the Kubernetes version
  # `helm template` and `helm lint` assume without a cluster (that of the
  # client-go it is built with; client-go v0.N is Kubernetes 1.N).
  client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  go build -trimpath -o "$1" \
    -ldflags "-s -w \
      -X helm.sh/helm/v3/internal/version.version=$helm_version \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    helm.sh/helm/v3/cmd/helm
}

go_tool "helm" "${TORCUS_HELM_DIR:-$top/.cache/helm}/helm" "a first build takes about 3 minutes on 2 cores" \
  "$here/go.mod" "$here/go.sum" "$here/build.sh"

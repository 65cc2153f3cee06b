#!/usr/bin/env bash
# Builds the Go tools of the sandbox's real node (e2e/src/realnode.rs) from
# their upstream modules, pinned in this folder's go.mod as `tool`s:
# containerd v2.3.7 with its runc shim and ctr, the CNI plugins v1.10.0
# (bridge, host-local, loopback, portmap) and CoreDNS v1.15.0; plus the pod
# sandbox's `pause` process, a static C program, and its image as an OCI
# archive (pause-image.py). Into .cache/realnode/bin/
# at the top of the repository, skipped when the sources have not changed.
# Prints the folder's path. (The kubelet, kube-proxy and kube-scheduler are
# in the control plane's binary, e2e/controlplane/.)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
source "$here/../go-tool.sh"

go_tool_compile() {
  mkdir -p "$1"
  cd "$here"
  go build -trimpath -ldflags "-s -w" -o "$1/" tool
  gcc -static -Os -o "$1/pause" "$here/pause.c"
  python3 "$here/pause-image.py" "$1/pause" "$1/pause.oci.tar"
}

go_tool "the real node's tools (containerd, CNI plugins, CoreDNS)" \
  "${TORCUS_REALNODE_BUILD_DIR:-$top/.cache/realnode}/bin" \
  "a first build takes about 5 minutes on 2 cores" \
  "$here/go.mod" "$here/go.sum" "$here/pause.c" "$here/pause-image.py" "$here/build.sh"

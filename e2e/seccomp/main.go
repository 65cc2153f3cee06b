// Writes containerd's default seccomp profile, the one a pod with
// `seccompProfile: {type: RuntimeDefault}` runs under on containerd, as the
// OCI runtime configuration's `linux.seccomp` for a container that holds no
// capabilities (a container whose securityContext drops ALL, as Torcus's
// pods do: the profile allows some system calls only to holders of a
// capability). The e2e image tests give it to runc:
//
//	cd e2e/seccomp && go run . > runtime-default.json
//
// It is the profile of the containerd version in go.mod, for the kernel it
// runs on (a few rules depend on the kernel version).
package main

import (
	"encoding/json"
	"os"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", " ")
	if err := out.Encode(seccomp.DefaultProfile(spec)); err != nil {
		panic(err)
	}
}

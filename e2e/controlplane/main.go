// Command torcus-controlplane is the local Kubernetes control plane Torcus tests
// and the sandbox run on: the upstream etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl,
// linked into one binary from their Go modules and chosen by the first
// argument. The scheduler, kubelet and proxy run only for the sandbox's real
// node (`torcus-sandbox up --real-node`); the other tests' pods run on the
// process kubelet.
//
//	torcus-controlplane etcd --data-dir ...
//	torcus-controlplane kube-apiserver --etcd-servers ...
//	torcus-controlplane kube-controller-manager --kubeconfig ...
//	torcus-controlplane kubelet --config ...
//	torcus-controlplane kubectl get pods
//
// Nothing here is re-implemented: each sub-command is the upstream main
// function, so the API server a test talks to is the one production runs.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: %s <etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl> [args...]
`

func main() {
	self := filepath.Base(os.Args[0])
	// When invoked through a symlink named after a component (kubectl ->
	// torcus-controlplane), behave as that component.
	name := self
	args := os.Args[1:]
	switch name {
	case "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl":
	default:
		if len(args) == 0 {
			fmt.Fprintf(os.Stderr, usage, self)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	if os.Getenv("TORCUS_DIE_WITH_PARENT") != "" {
		dieWithParent()
	}
	// Every upstream main reads os.Args itself (flag parsing, kubectl
	// plugins), so present it exactly as the standalone binary would see it.
	os.Args = append([]string{name}, args...)

	switch name {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "version":
		fmt.Println("torcus-controlplane: kubernetes v1.36.3, etcd v3.6.8")
	default:
		fmt.Fprintf(os.Stderr, usage, self)
		os.Exit(2)
	}
}

// dieWithParent exits when the process that started this one goes away, so
// a test harness or sandbox killed without a chance to clean up leaves no
// control plane behind. The parent is polled rather than asked for a death
// signal, because Linux ties that signal to the parent's thread, and test
// harnesses start processes from threads that end long before the process.
func dieWithParent() {
	parent := os.Getppid()
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != parent {
				fmt.Fprintln(os.Stderr, "torcus-controlplane: parent process is gone; exiting")
				os.Exit(1)
			}
		}
	}()
}

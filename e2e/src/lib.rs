//! End-to-end harness: a real Kubernetes control plane on loopback
//! (upstream etcd, kube-apiserver and kube-controller-manager linked from
//! their Go modules), the `torcus-sandbox` command built on it, a real node
//! for it (upstream kubelet, containerd, runc, CNI, kube-proxy, CoreDNS),
//! and the scaffolding the end-to-end tests share.

pub mod controlplane;
pub mod helm;
pub mod independent;
pub mod kubelet;
pub mod pki;
pub mod process;
pub mod realnode;
pub mod sandbox;
pub mod testing;

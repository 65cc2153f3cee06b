#!/usr/bin/env bash
# The main job on the embedded local control plane: bring up the sandbox
# (a real kube-apiserver, etcd and kube-controller-manager on loopback, with
# the Torcus operator), apply the example MpcCluster, and show what the
# operator made of it. The sandbox keeps running afterwards; stop it with
#   target/debug/torcus-sandbox down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dir=.torcus-sandbox
cargo build --quiet -p torcus-e2e --bin torcus-sandbox
target/debug/torcus-sandbox up --dir "$dir"

kubectl() { "$dir/bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step kubectl apply -f examples/mpccluster.yaml
kubectl apply -f examples/mpccluster.yaml
kubectl wait --for='jsonpath={.status.conditions[?(@.type=="CertificatesReady")].status}=True' mpc/demo --timeout=60s >/dev/null

step kubectl get mpcclusters
kubectl get mpcclusters
step kubectl get statefulsets,services,poddisruptionbudgets,secrets,configmaps -l mpc.torcus.io/cluster=demo
kubectl get statefulsets,services,poddisruptionbudgets,secrets,configmaps -l mpc.torcus.io/cluster=demo
step kubectl get mpc demo -o jsonpath='{.status.conditions}'
kubectl get mpc demo -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' |
  while IFS=$'\t' read -r type status reason message; do printf '%-18s %-6s %-16s %s\n' "$type" "$status" "$reason" "$message"; done

# An independent check of the certificates, with OpenSSL: each node's
# certificate chains to the cluster CA and names its own party.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
kubectl get secret demo-ca -o jsonpath='{.data.ca\.crt}' | base64 -d > "$tmp/ca.crt"
for i in 0 1 2; do
  kubectl get secret "demo-node-$i" -o jsonpath='{.data.tls\.crt}' | base64 -d > "$tmp/node-$i.crt"
  step openssl verify -CAfile ca.crt node-$i.crt
  openssl verify -CAfile "$tmp/ca.crt" "$tmp/node-$i.crt" | sed "s|$tmp/||"
  openssl x509 -in "$tmp/node-$i.crt" -noout -ext subjectAltName | grep -o 'URI:[^,]*'
done
echo
echo "grant public key: $(kubectl get mpc demo -o jsonpath='{.status.grantPublicKey}')"
echo
echo "The sandbox is still running: export KUBECONFIG=$PWD/$dir/kubeconfig"
echo "Stop it with: target/debug/torcus-sandbox down"

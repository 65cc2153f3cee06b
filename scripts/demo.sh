#!/usr/bin/env bash
# The main job on the embedded local control plane: bring up the sandbox
# (a real kube-apiserver, etcd and kube-controller-manager on loopback, the
# Torcus operator, and a process kubelet that runs each node pod as a local
# torcus-node process), create a 2-of-3 MpcCluster, wait for its distributed
# key generation, sign a payload with a SigningRequest, and verify the
# signature with OpenSSL. The sandbox keeps running afterwards; stop it with
#   target/debug/torcus-sandbox down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Prerequisites, checked before anything compiles: the MPC engine links GMP,
# which is built from source and needs m4 and a C compiler; the control
# plane is built from Go modules; OpenSSL checks the signature at the end.
missing=()
for tool in cargo:"Rust (https://rustup.rs)" go:"Go 1.21 or later (https://go.dev/dl)" \
            m4:"m4 (apt-get install m4)" cc:"a C compiler (apt-get install gcc)" \
            openssl:"OpenSSL (apt-get install openssl)"; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  echo "demo.sh needs, before it builds anything:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

dir=${TORCUS_SANDBOX_DIR:-.torcus-sandbox}
up=(up --dir "$dir")
build() {
  cargo build --quiet -p torcus-e2e --bin torcus-sandbox
  cargo build --quiet -p torcus-node --bin torcus-node
}
# Tests only: start the nodes from pregenerated safe primes, which only a
# build with the test-fixtures feature accepts (never an image). The e2e
# tests run this script after cargo built the sandbox and the node with
# the test-only features, and use those binaries as the other e2e tests
# do; a build here with fewer features would recompile most dependencies
# and leave the tests after this one a node without their hooks.
if [[ -n "${TORCUS_TEST_PRIMES_FIXTURE:-}" ]]; then
  up+=(--test-primes-fixture "$TORCUS_TEST_PRIMES_FIXTURE")
  build() {
    [[ -x target/debug/torcus-sandbox && -x target/debug/torcus-node ]] || "${CARGO:-cargo}" test --quiet --workspace --no-run
  }
fi
echo "building the sandbox and torcus-node (the first build compiles GMP and a few hundred crates: several minutes)"
build
target/debug/torcus-sandbox "${up[@]}"

kubectl() { "$dir/bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step kubectl apply -f examples/mpccluster.yaml
kubectl apply -f examples/mpccluster.yaml
echo "waiting for the nodes and the distributed key generation (each node makes its own safe primes first: a few minutes)"
kubectl wait --for='jsonpath={.status.conditions[?(@.type=="Ready")].status}=True' mpc/demo --timeout=900s >/dev/null

step kubectl get mpcclusters,pods
kubectl get mpcclusters,pods -o wide
step kubectl get mpc demo -o jsonpath='{.status.keys}'
kubectl get mpc demo -o jsonpath='{range .status.keys[*]}{.name}{"\t"}{.publicKey}{"\t"}{.ethereumAddress}{"\n"}{end}'

step kubectl apply -f examples/signingrequest.yaml
kubectl delete signingrequest hello --ignore-not-found >/dev/null
kubectl apply -f examples/signingrequest.yaml
kubectl wait --for=jsonpath='{.status.phase}'=Completed sr/hello --timeout=120s >/dev/null
step kubectl get signingrequests
kubectl get signingrequests

# An independent check, with OpenSSL: the signature in the request's status
# verifies under the cluster's public key over SHA-256("hello torcus").
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
unhex() { printf '%b' "$(sed 's/../\\x&/g')"; }
public_key=$(kubectl get sr hello -o jsonpath='{.status.publicKey}')
signature=$(kubectl get sr hello -o jsonpath='{.status.signature.der}')
# SubjectPublicKeyInfo of a compressed secp256k1 point: a fixed DER header, then the point.
printf '3036301006072a8648ce3d020106052b8104000a032200%s' "$public_key" | unhex > "$tmp/key.der"
openssl pkey -pubin -inform DER -in "$tmp/key.der" -out "$tmp/key.pem"
printf '%s' "$signature" | unhex > "$tmp/signature.der"
echo
echo "public key: $public_key"
echo "signature:  $signature"
step "printf 'hello torcus' | openssl dgst -sha256 -verify key.pem -signature signature.der"
printf 'hello torcus' | openssl dgst -sha256 -verify "$tmp/key.pem" -signature "$tmp/signature.der"
echo
echo "The sandbox is still running: export KUBECONFIG=$PWD/$dir/kubeconfig"
echo "Stop it with: target/debug/torcus-sandbox down --dir $dir"

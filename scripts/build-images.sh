#!/usr/bin/env bash
# Builds the two published images, ghcr.io/torcus/torcus-node and
# ghcr.io/torcus/torcus-operator, from Dockerfile.node and Dockerfile.operator
# with buildah: no Docker daemon, no registry.
#
#   scripts/build-images.sh           # the binaries built here, then the images
#   scripts/build-images.sh --full    # every stage of the Dockerfiles, cargo included
#
# The Dockerfiles stay the published recipe. Their base images are ARGs whose
# defaults are the upstream ones (rust:1-bookworm, distroless cc-debian12);
# here, where no registry is reachable, the runtime base is made from this
# machine's Debian packages, which must be bookworm's, as distroless's are
# (glibc and libgcc, what the binaries link, and the files distroless adds:
# the `nonroot` user 65532, /tmp, CA certificates, time zones), and given as
# RUNTIME_IMAGE.
#
# By default the build stage is not run inside the build: the workspace builds
# the binaries with the Dockerfiles' own cargo command (checked below), and a
# build context named `build` stands in for the stage, so `COPY --from=build`
# takes the binary from it. `--full` runs the build stage too, in a local Rust
# image made from Debian packages and this machine's Rust toolchain (a release
# build of everything, inside a chroot: many minutes on 2 cores).
#
# Writes, under .cache/images/: the buildah store, and one OCI archive per
# image (torcus-node.oci.tar, torcus-operator.oci.tar) that `ctr images import`
# and `skopeo` read. Prints each image's name, ID and size.
#
# Needs root (buildah's store uses kernel overlay mounts) and buildah; .ci/run
# installs it (`apt-get install buildah`).
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
full=0
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    *) echo "usage: $0 [--full]" >&2; exit 2 ;;
  esac
done

# The binaries are built as the Dockerfiles build them: nothing from the
# caller's environment may change what is compiled (run from a test, this
# script inherits what cargo sets for test processes; a shell may carry
# RUSTFLAGS or a target directory of its own).
source "$top/scripts/shell-env.sh"
# A target directory of their own: test builds of the node (with the
# fixtures, e2e/src/kubelet/binary.rs) never share a path with them.
export CARGO_TARGET_DIR=$top/target/image

command -v buildah >/dev/null || { echo "buildah is required (apt-get install buildah)" >&2; exit 1; }
# The base's glibc is the one the binaries are linked against here; upstream
# it is cc-debian12's (bookworm's): the two must be the same.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ $codename == bookworm ]] || {
  echo "the runtime base is made from this machine's Debian packages, which must be bookworm's (as in distroless cc-debian12); this machine has '${codename:-unknown}'" >&2
  exit 1
}
out=${TORCUS_IMAGES_DIR:-$top/.cache/images}
mkdir -p "$out"
# One build at a time per store (tests and a user may both call this); a
# holder that hangs fails the next caller after half an hour.
exec 9>"$out/.lock"
flock -w 1800 9 || { echo "$out/.lock: another build has held it for 30 minutes" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || { echo "no workspace version in Cargo.toml" >&2; exit 1; }
runtime_base=localhost/torcus/cc-debian12:nonroot
rust_base=localhost/torcus/rust:bookworm
# A store's run state (locks, mounts) is its own: two checkouts never share it.
runroot=/run/torcus-buildah-$(printf %s "$out" | sha256sum | cut -c1-12)
bah=(buildah --root "$out/storage" --runroot "$runroot" --storage-driver overlay)
# On any exit: no working container, scratch folder or mount is left
# behind (the store is this script's alone, so every container in it is).
work=
cleanup() {
  "${bah[@]}" rm --all >/dev/null 2>&1 || true
  "${bah[@]}" unmount --all >/dev/null 2>&1 || true
  if [[ -n $work ]]; then
    umount -R "$work/rootfs/proc" "$work/rootfs/sys" "$work/rootfs/dev" 2>/dev/null || true
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# The runtime base: what gcr.io/distroless/cc-debian12:nonroot holds that the
# binaries use. Rebuilt only when this script changes.
stamp=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
if [[ $("${bah[@]}" inspect --type image --format '{{index .ImageAnnotations "org.torcus.recipe"}}' "$runtime_base" 2>/dev/null) != "$stamp" ]]; then
  echo "building $runtime_base from Debian packages" >&2
  work=$(mktemp -d)
  debs=(libc6 libgcc-s1 tzdata netbase ca-certificates)
  (cd "$work" && apt-get download "${debs[@]}" >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$work" && apt-get download "${debs[@]}" >/dev/null); }
  rootfs=$work/rootfs
  mkdir -p "$rootfs"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
  # ca-certificates ships the certificates; its postinst makes the bundle.
  mkdir -p "$rootfs/etc/ssl/certs"
  find "$rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/share/locale"
  rm -rf "$rootfs/usr/share/ca-certificates" "$rootfs/usr/sbin" "$rootfs/sbin" "$rootfs/usr/bin"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$rootfs/etc/group"
  mkdir -p "$rootfs/tmp" "$rootfs/root" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"
  chmod 0700 "$rootfs/root" "$rootfs/home/nonroot"
  chown 65532:65532 "$rootfs/home/nonroot"
  container=$("${bah[@]}" from scratch)
  # Copied into the mounted container as they are, owners included
  # (`buildah copy` would make everything root's, /home/nonroot too).
  mnt=$("${bah[@]}" mount "$container")
  cp -a "$rootfs/." "$mnt/"
  "${bah[@]}" unmount "$container" >/dev/null
  "${bah[@]}" config --user 65532:65532 --workingdir /home/nonroot --env PATH=/usr/local/bin:/usr/bin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --annotation "org.torcus.recipe=$stamp" "$container"
  "${bah[@]}" commit --quiet --rm "$container" "$runtime_base" >/dev/null
  rm -rf "$work"
  work=
fi

build_args=(--build-arg "RUNTIME_IMAGE=$runtime_base" --pull=never --layers=false --force-rm)
if ((full)); then
  if ! "${bah[@]}" inspect --type image "$rust_base" >/dev/null 2>&1; then
    # rust:1-bookworm, made here: Debian's compilers and this machine's stable
    # Rust toolchain where the official image keeps it.
    echo "building $rust_base from Debian packages and the local Rust toolchain" >&2
    toolchain=$(rustc +stable --print sysroot)
    command -v debootstrap >/dev/null || { echo "--full needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    work=$(mktemp -d)
    debootstrap --variant=minbase --include=gcc,libc6-dev,make,ca-certificates,curl bookworm "$work/rootfs" \
      "$(sed -n 's/^URIs: //p;s/^deb \([^ ]*\) bookworm main.*/\1/p' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)" >&2
    mkdir -p "$work/rootfs/usr/local/rustup/toolchains" "$work/rootfs/usr/local/cargo/bin"
    cp -a "$toolchain" "$work/rootfs/usr/local/rustup/toolchains/stable-x86_64-unknown-linux-gnu"
    for tool in cargo rustc rustdoc; do
      ln -s "/usr/local/rustup/toolchains/stable-x86_64-unknown-linux-gnu/bin/$tool" "$work/rootfs/usr/local/cargo/bin/$tool"
    done
    # The build stage downloads crates and Debian packages as this machine
    # does, so it trusts what this machine trusts (a local builder image,
    # never published; the runtime base keeps Debian's roots only).
    cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
    container=$("${bah[@]}" from scratch)
    "${bah[@]}" copy --quiet "$container" "$work/rootfs" / >/dev/null
    "${bah[@]}" config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
    "${bah[@]}" commit --quiet --rm "$container" "$rust_base" >/dev/null
    rm -rf --one-file-system "$work"
    work=
  fi
  build_args+=(--build-arg "RUST_IMAGE=$rust_base" --isolation chroot)
fi

for name in node operator; do
  dockerfile=Dockerfile.$name
  image=ghcr.io/torcus/torcus-$name:$version
  started=$(date +%s)
  args=("${build_args[@]}")
  if ((!full)); then
    # The Dockerfile's own cargo command, run in the workspace.
    command=$(grep -o "cargo build --release --locked -p torcus-$name --bin torcus-$name" "$dockerfile") \
      || { echo "$dockerfile has no 'cargo build --release --locked -p torcus-$name --bin torcus-$name'" >&2; exit 1; }
    $command >&2
    context=$out/context-$name
    rm -rf "$context"
    install -D -m 0755 "$CARGO_TARGET_DIR/release/torcus-$name" "$context/out/torcus-$name"
    args+=(--build-context "build=$context")
  fi
  "${bah[@]}" build --quiet "${args[@]}" -f "$dockerfile" -t "$image" . >/dev/null
  # Written aside and renamed: a reader never sees half an archive.
  rm -f "$out/.torcus-$name.oci.tar.new"
  "${bah[@]}" push --quiet "$image" "oci-archive:$out/.torcus-$name.oci.tar.new:$image" >/dev/null
  mv -f "$out/.torcus-$name.oci.tar.new" "$out/torcus-$name.oci.tar"
  id=$("${bah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")
  size=$(stat -c %s "$out/torcus-$name.oci.tar")
  echo "$image ${id:0:12} $size bytes $(($(date +%s) - started)) s"
done
# The images these tags held before: nothing refers to them now.
"${bah[@]}" rmi --prune >/dev/null 2>&1 || true

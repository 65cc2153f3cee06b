# Sourced by e2e/controlplane/build.sh, e2e/helm/build.sh and
# e2e/realnode/build.sh: builds a Go
# tool into a cache folder once per change of its sources, one build at a
# time (tests and the sandbox may ask at once), and prints its path.
#
#   go_tool NAME BIN ABOUT SOURCE...
#
# NAME is what the messages call it, BIN the binary's path (its folder holds
# the stamp and the lock), ABOUT how long a first build takes, and SOURCE the
# files whose change calls for a new build (this file counts too). The caller
# defines `go_tool_compile OUTPUT`, which runs `go build -o OUTPUT` in the
# module's folder.

go_tool() {
  local name=$1 bin about=$3
  bin=$(realpath -m "$2")
  shift 3
  local out stamp start
  out=$(dirname "$bin")
  stamp=$(cat "$@" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
  if [[ -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
    echo "$bin"
    return
  fi
  mkdir -p "$out"
  exec 9>"$out/lock"
  flock 9
  if [[ -x "$bin" && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" ]]; then
    echo "$bin"
    return
  fi
  echo "building $name into $out: go build prints nothing until it is done; $about (downloading the modules first when they are not cached), later ones are skipped" >&2
  start=$(date +%s)
  # A line every 30 s, so a long silent build is not mistaken for a hung
  # one. The ticker holds neither the lock (fd 9) nor stdout, which callers
  # read to its end for the path, and its sleep holds no descriptor at all.
  ( while sleep 30 </dev/null >/dev/null 2>&1; do
      echo "  still building $name ($(( $(date +%s) - start ))s)" >&2
    done ) 9>&- >/dev/null &
  go_tool_ticker=$!
  trap 'kill "${go_tool_ticker:-}" 2>/dev/null || true' EXIT
  ( go_tool_compile "$bin.tmp.$$" )
  kill "$go_tool_ticker" 2>/dev/null || true
  trap - EXIT
  # BIN may be a folder of tools (e2e/realnode/build.sh): the old one goes
  # first, or the new one would land inside it; only one this script made
  # (marked inside), never a folder of someone else's. A sandbox running
  # tools from the old folder loses them: rebuild with no real node up.
  if [[ -d "$bin.tmp.$$" ]]; then
    touch "$bin.tmp.$$/.go-tool"
  fi
  if [[ -d "$bin" ]]; then
    [[ -f "$bin/.go-tool" || -f "$out/stamp" ]] || { echo "$bin exists and was not built by go-tool.sh; not replacing it" >&2; exit 1; }
    rm -rf "$bin"
  fi
  mv -T "$bin.tmp.$$" "$bin"
  echo "$stamp" > "$out/stamp"
  echo "built $name in $(( $(date +%s) - start ))s" >&2
  echo "$bin"
}

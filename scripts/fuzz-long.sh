#!/usr/bin/env bash
# The long local fuzz run (issue 13): every cargo-fuzz target of fuzz/ for
# SECONDS each (default 600), one after another on one core, starting from
# the checked-in seed corpus (which it does not change). Prints, per target,
# the executions, the coverage reached and whether it crashed; a crashing
# input is left in fuzz/artifacts/<target>/ (see contract/tests/fuzzing.rs
# for what to do with it). CI runs the same targets for a short time.
#
#   scripts/fuzz-long.sh [SECONDS] [TARGET ...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install --locked cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '%-20s %10s %12s %8s %8s %s\n' target seconds executions exec/s cov result
status=0
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  cargo +nightly fuzz build --release "$target" >"$log.build" 2>&1 || { cat "$log.build"; exit 1; }
  started=$(date +%s)
  if cargo +nightly fuzz run --release "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (input in fuzz/artifacts/$target/)"
    status=1
  fi
  took=$(( $(date +%s) - started ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-20s %10s %12s %8s %8s %s\n' "$target" "$took" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result"
  [ "$result" = ok ] || tail -40 "$log"
done
exit "$status"

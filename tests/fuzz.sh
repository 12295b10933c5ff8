#!/usr/bin/env bash
# Fuzz every parser of outside bytes for a bounded time each (FUZZ_SECONDS, default 30;
# FUZZ_TARGETS to pick some):
# a manifest from the store and its binary cache, `ostree admin status` output, a socket
# request line, a config file. Starts from fuzz/seeds/<target> (tests/fuzz_seeds.rs checks
# that they parse); the corpus grows under target/fuzz/corpus/<target>. A crash leaves its
# input in fuzz/artifacts/<target>/ (cargo-fuzz's place) and fails this script.
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# No sanitizer: the crate has no unsafe code of its own, and AddressSanitizer would double the
# build time; a panic (bounds, overflow in debug assertions, unwrap) is what is looked for.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
read -r -a targets <<<"${FUZZ_TARGETS:-manifest manifest_cache ostree_status socket_request config}"
target_dir="$PWD/target/fuzz"
cd fuzz
cargo fuzz build --sanitizer none --debug-assertions --target-dir "$target_dir"
for t in "${targets[@]}"; do
  corpus="$target_dir/corpus/$t"
  artifacts="artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzz: $t for ${seconds}s"
  log="$target_dir/fuzz-$t.log"
  rc=0
  cargo fuzz run --sanitizer none --debug-assertions --target-dir "$target_dir" "$t" \
    "$corpus" "seeds/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(Done|stat::new_units_added)' "$log" || true
  if [ "$rc" != 0 ] || [ -n "$(ls -A "$artifacts")" ]; then
    tail -40 "$log" >&2
    echo "fuzz: $t failed (exit $rc); inputs that crash it are in fuzz/$artifacts" >&2
    exit 1
  fi
done

# Shared by the fake cluster programs: they live in <dir>/bin, keep their state in
# <dir>/state and append every call to <dir>/calls.log (one line: program and arguments).
# Faults are files in <dir>/state: see README in this directory.
FAKE_DIR=$(cd "$(dirname "$0")/.." && pwd)
STATE=$FAKE_DIR/state
mkdir -p "$STATE"
record() { printf '%s\n' "$(basename "$0") $*" >> "$FAKE_DIR/calls.log"; }
fail_if() { if [ -e "$STATE/fail-$1" ]; then echo "fake $(basename "$0"): injected failure ($1)" >&2; exit 1; fi; }
# The "generation" of the running containers: bumped when they are recreated.
gen() { cat "$STATE/container-gen" 2>/dev/null || echo 1; }
# Wait while state/hold-<what> exists: a gate the test opens by removing the file, to catch a
# run in the act (at most 120 s, so that a test that forgets cannot hang the suite).
hold_if() {
  local n=0
  while [ -e "$STATE/hold-$1" ] && [ "$n" -lt 2400 ]; do sleep 0.05; n=$((n + 1)); done
}

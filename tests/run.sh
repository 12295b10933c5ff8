#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, integration, private D-Bus, real
# ostree, packaging, and real systemd in systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  tests/setup-host.sh
fi
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# The packaging, image and end-to-end tests use the static release binaries, as the RPM, the
# images and the RHCOS MachineConfig ship them.
RECOVERYD_BIN_DIR=$(deploy/build-static.sh --example fake-rpm-ostreed)
export RECOVERYD_BIN_DIR
# Tests that need root (nspawn, mounts, ownership, the daemon's root-only API) are marked
# `#[ignore = "needs root..."]` so that a plain `cargo test` passes as any user; here, as root,
# every one of them runs.
if [ "$(id -u)" = 0 ]; then
  cargo test -- --include-ignored
else
  echo "tests/run.sh: not root, so the tests marked 'needs root' are left out (cargo lists them as ignored)" >&2
  cargo test
fi
# Every shipped Kubernetes object against the Kubernetes schemas (kubernetes-validate, PyPI).
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install -q --break-system-packages kubernetes-validate==1.37.0 2>/dev/null ||
    python3 -m pip install -q kubernetes-validate==1.37.0
fi
tests/validate-manifests.py
# The parsers of outside bytes, fuzzed for a bounded time each (tests/fuzz.sh).
tests/fuzz.sh

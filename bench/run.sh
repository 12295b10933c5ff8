#!/usr/bin/env bash
# Build the release binaries and run the data-path benchmark (as root). See bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin recoveryctl
exec python3 bench/bench.py "$@"

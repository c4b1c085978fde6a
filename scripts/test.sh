#!/usr/bin/env bash
# Everything CI checks, from a fresh Debian machine: dependencies, formatting,
# lints, then every test (unit, in-process, and the integration suite against
# real BIND, redis and carbon-cache).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/check-msrv.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets

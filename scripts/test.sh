#!/usr/bin/env bash
# Everything CI checks, from a fresh Debian machine: dependencies, formatting,
# lints, every test (unit, in-process, and the integration suite against
# real BIND, redis and carbon-cache), then the deployment files (systemd,
# Kubernetes, Nomad, Grafana) through their validators and `sluice --check`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/check-msrv.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
SLUICE_BIN=target/debug/sluice SLUICE_CHECK_REQUIRED=1 bash deploy/check.sh

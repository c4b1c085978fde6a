#!/usr/bin/env bash
# Installs what sluice's tests, demo and benchmarks need on a fresh Debian
# machine: BIND (the Consul DNS stand-in), redis, carbon-cache, Prometheus
# (promtool and a real scraper), Chromium (status page check), nginx and
# HAProxy (PROXY protocol peers), curl (the runtime API), make (jemalloc's build), and the Rust
# components for fmt/clippy.
# Idempotent: installs only what is missing.
set -euo pipefail

packages=(bind9 bind9-dnsutils redis-server redis-tools graphite-carbon python3-whisper prometheus chromium procps
  nginx libnginx-mod-stream haproxy curl make)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

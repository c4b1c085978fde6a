#!/usr/bin/env bash
# Validates everything under deploy/ offline, with tools from Debian 12 and
# PyPI only:
#
#   bash deploy/check.sh                  # exit 0, or 1 with the list of what failed
#   SLUICE_BIN=target/release/sluice bash deploy/check.sh
#
# - systemd/sluice.service: `systemd-analyze verify` in a scratch root (unknown
#   keys, bad values, missing executables; any message fails), `systemd-analyze
#   security --offline` (exposure must stay <= 2.0), and a static check of the
#   settings sluice relies on (runs even where systemd is not installed).
# - kubernetes/*.yaml: yamllint, then kubernetes-validate --strict against the
#   schemas it bundles (1.25 and 1.37; no network), then cross-checks (probe
#   ports and paths, listener ports, config mount, security context).
# - nomad/sluice.nomad.hcl: parsed with python-hcl2 (HCL2 syntax only; Nomad's
#   own schema needs the nomad binary), then cross-checks (host network,
#   --dns 127.0.0.1:8600, /ready and /healthz checks, ports, kill_timeout).
# - grafana/sluice.json: JSON, panel ids and gridPos, datasource variable, every
#   expression uses only the metric names and labels sluice exports; then
#   `promtool check rules` parses every expression and `promtool test rules`
#   evaluates each against series shaped like sluice's /metrics and fails on
#   any that returns nothing. Writes grafana/queries.txt (one expression a
#   line, Grafana variables left in).
# - Every sluice config (systemd example, ConfigMap, Nomad template) through
#   `sluice --check` when a sluice binary is found ($SLUICE_BIN, target/release,
#   target/debug, PATH), else through a TOML parse only (SLUICE_CHECK_REQUIRED=1
#   makes a missing binary a failure).
#
# Installs what is missing: Debian packages systemd and prometheus (promtool)
# with apt-get (as root or through sudo), and pinned PyPI packages into a
# venv at ${TMPDIR:-/tmp}/sluice-deploy-venv, reused on the next run.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
tmp=${TMPDIR:-/tmp}
venv=$tmp/sluice-deploy-venv
pip_packages=(kubernetes-validate==1.37.0 python-hcl2==8.1.4 yamllint==1.38.0 PyYAML==6.0.4)
k8s_versions=(1.25 1.37)   # oldest and newest schema sets kubernetes-validate 1.37.0 bundles

work=$(mktemp -d "$tmp/sluice-deploy-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()

# step NAME COMMAND...: runs COMMAND, its output indented; records NAME on failure.
step() {
  local name=$1
  shift
  echo "== $name"
  if "$@" > "$work/out" 2>&1; then
    sed 's/^/   /' "$work/out"
    echo "   ok"
  else
    sed 's/^/   /' "$work/out"
    echo "   FAILED: $name"
    failed+=("$name")
  fi
}

die() {
  echo "deploy/check.sh: $*" >&2
  exit 1
}

# --- tools ------------------------------------------------------------------------
apt_install() {
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get > /dev/null || return 1
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq > /dev/null &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" > /dev/null
}

command -v systemd-analyze > /dev/null && command -v promtool > /dev/null ||
  apt_install systemd prometheus ||
  echo "warning: could not install systemd/prometheus with apt-get"
command -v promtool > /dev/null || die "promtool not found (Debian package prometheus)"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "python3 >= 3.11 needed (tomllib)"
stamp="$venv/.sluice-deploy-$(printf '%s\n' "${pip_packages[@]}" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "setting up $venv"
  if ! python3 -m venv --clear "$venv" > "$work/venv.log" 2>&1; then
    if ! { apt_install python3-venv && python3 -m venv --clear "$venv" > "$work/venv.log" 2>&1; }; then
      cat "$work/venv.log"
      die "cannot create a venv at $venv"
    fi
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${pip_packages[@]}" ||
    die "pip install ${pip_packages[*]} failed"
  touch "$stamp"
fi
py=$venv/bin/python

sluice=${SLUICE_BIN:-}
if [ -z "$sluice" ]; then
  for c in "$repo/target/release/sluice" "$repo/target/debug/sluice" "$(command -v sluice || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { sluice=$c; break; }
  done
fi

echo "tools:"
echo "   $(systemd-analyze --version 2>/dev/null | head -1 || echo 'systemd-analyze: not installed')"
echo "   $(promtool --version 2>&1 | head -1)"
echo "   $("$py" --version), $("$venv/bin/pip" list --format=freeze 2>/dev/null |
  grep -iE '^(kubernetes-validate|python-hcl2|yamllint|pyyaml)==' | tr '\n' ' ')"
echo "   sluice: ${sluice:-not found, configs get a TOML parse only}${sluice:+ ($("$sluice" --version 2>&1))}"

# sluice_check NAME TOML: `sluice --check` on a config, or a TOML parse.
sluice_check() {
  if [ -n "$sluice" ]; then
    step "$1: sluice --check" "$sluice" --check --config "$2"
  elif [ "${SLUICE_CHECK_REQUIRED:-0}" = 1 ]; then
    step "$1: sluice --check (no sluice binary)" false
  else
    step "$1: TOML parse (no sluice binary for --check)" \
      "$py" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$2"
  fi
}

# --- systemd ----------------------------------------------------------------------
unit=$here/systemd/sluice.service
step "systemd: required settings (static)" \
  "$py" "$here/check_deploy.py" systemd "$unit" "$here/systemd/sluice.toml"

if command -v systemd-analyze > /dev/null; then
  # verify checks that every Exec*= program exists, so it runs in a scratch
  # root with stubs where the unit expects sluice and kill; inside that root
  # it loads no other unit. It exits 0 on mere warnings (an unknown key,
  # say), so any output at all fails too.
  root=$work/root
  mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/bin"
  cp "$unit" "$root/etc/systemd/system/"
  for stub in usr/local/bin/sluice bin/kill; do
    printf '#!/bin/sh\nexit 0\n' > "$root/$stub"
    chmod 755 "$root/$stub"
  done
  verify() {
    local out rc
    out=$(systemd-analyze verify --root="$root" --man=no --recursive-errors=no \
      "$root/etc/systemd/system/sluice.service" 2>&1)
    rc=$?
    [ -n "$out" ] && echo "$out"
    [ $rc -eq 0 ] && [ -z "$out" ]
  }
  step "systemd: systemd-analyze verify" verify
  security() {
    systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" 2>&1 |
      grep -E '^(✗|→)'
    return "${PIPESTATUS[0]}"
  }
  step "systemd: systemd-analyze security --offline (exposure <= 2.0)" security
else
  echo "== systemd: systemd-analyze not available; only the static check above ran"
fi
sluice_check "systemd: sluice.toml" "$here/systemd/sluice.toml"

# --- Kubernetes -------------------------------------------------------------------
k8s=("$here"/kubernetes/*.yaml)
step "kubernetes: yamllint" "$venv/bin/yamllint" -s \
  -d '{extends: default, rules: {line-length: {max: 100}}}' "${k8s[@]}"
for v in "${k8s_versions[@]}"; do
  step "kubernetes: kubernetes-validate --strict -k $v" \
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${k8s[@]}"
done
step "kubernetes: cross-checks" "$py" "$here/check_deploy.py" kubernetes "$here/kubernetes" "$work/k8s.toml"
[ -s "$work/k8s.toml" ] && sluice_check "kubernetes: ConfigMap sluice.toml" "$work/k8s.toml"

# --- Nomad ------------------------------------------------------------------------
step "nomad: python-hcl2 parse + cross-checks" \
  "$py" "$here/check_deploy.py" nomad "$here/nomad/sluice.nomad.hcl" "$work/nomad.toml"
[ -s "$work/nomad.toml" ] && sluice_check "nomad: template sluice.toml" "$work/nomad.toml"

# --- Grafana ----------------------------------------------------------------------
dash=$here/grafana/sluice.json
step "grafana: json.tool" "$py" -m json.tool "$dash" /dev/null
mkdir -p "$work/prom"
step "grafana: structure, metric names and labels (writes queries.txt)" \
  "$py" "$here/check_deploy.py" grafana "$dash" "$here/grafana/queries.txt" "$work/prom"
if [ -s "$work/prom/rules.yml" ]; then
  step "grafana: promtool check rules (every expression parses)" \
    promtool check rules "$work/prom/rules.yml" "$work/prom/alerts.yml"
  # The alerts are absent(<expression>): one that fires names a panel whose
  # query returns nothing from sluice-shaped series (see its `panel` label).
  prom_test() { (cd "$work/prom" && promtool test rules tests.yml); }
  step "grafana: promtool test rules (every expression returns data)" prom_test
fi

# --- summary ----------------------------------------------------------------------
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy/check.sh: ${#failed[@]} check(s) FAILED:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy/check.sh: all checks passed"

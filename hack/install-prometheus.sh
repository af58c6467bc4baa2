#!/usr/bin/env bash
# Makes sure there is a `prometheus` binary for the analysis tests and the demo (devcluster/prometheus.py runs it on
# a loopback port with its own config; nothing here configures or runs it). When it is not on PATH, installs
# Debian's `prometheus` package with apt-get (as root, or through sudo) without leaving the package's system service
# running. Idempotent: once installed it only prints which binary the tests will use.
#
# SLUICE_PROMETHEUS_BIN=/path/to/prometheus skips the install and uses that binary (the tests honour it too).
set -euo pipefail

log() { echo "[prometheus] $*" >&2; }

if [[ -n "${SLUICE_PROMETHEUS_BIN:-}" ]]; then
  [[ -x "$SLUICE_PROMETHEUS_BIN" ]] || { log "SLUICE_PROMETHEUS_BIN=$SLUICE_PROMETHEUS_BIN is not executable"; exit 1; }
  log "using $SLUICE_PROMETHEUS_BIN (SLUICE_PROMETHEUS_BIN)"
  exit 0
fi
if bin="$(command -v prometheus)"; then
  log "using $bin ($("$bin" --version 2>&1 | head -1))"
  exit 0
fi

if [[ $EUID -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  log "prometheus is not installed, and installing it needs root or sudo; install it (Debian/Ubuntu package" \
    "'prometheus') or set SLUICE_PROMETHEUS_BIN=/path/to/prometheus"
  exit 1
fi
command -v apt-get >/dev/null || {
  log "prometheus is not installed and there is no apt-get; install Prometheus or set SLUICE_PROMETHEUS_BIN"; exit 1; }

# The package's postinst starts its service through invoke-rc.d (or deb-systemd-invoke): a policy-rc.d answering
# 101 forbids that. An existing policy-rc.d (containers often have one) is left as it is.
policy=/usr/sbin/policy-rc.d
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\n# hack/install-prometheus.sh: no service starts while it installs prometheus\nexit 101\n' |
    "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 755 "$policy"
  trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi
# In case a service starts anyway: processes of the package's user that were not there before are stopped below.
service_pids() { pgrep -u prometheus 2>/dev/null | sort || true; }
before="$(service_pids)"

apt_log="${TMPDIR:-/tmp}/sluice-install-prometheus.log"
log "installing the Debian package prometheus with apt-get (output in $apt_log)"
if ! { "${as_root[@]}" apt-get update &&
       "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y --no-install-recommends prometheus; } >"$apt_log" 2>&1; then
  tail -20 "$apt_log" >&2
  log "apt-get failed; full log in $apt_log"
  exit 1
fi

mapfile -t started < <(comm -13 <(echo "$before") <(service_pids))
if (( ${#started[@]} )); then
  log "stopping what the package started despite the policy (pids ${started[*]})"
  "${as_root[@]}" kill "${started[@]}" 2>/dev/null || true
  for _ in {1..50}; do
    "${as_root[@]}" kill -0 "${started[@]}" 2>/dev/null || break
    sleep 0.1
  done
  "${as_root[@]}" kill -KILL "${started[@]}" 2>/dev/null || true
fi

bin="$(command -v prometheus)" || { log "the package is installed but prometheus is not on PATH"; exit 1; }
log "using $bin ($("$bin" --version 2>&1 | head -1))"

#!/usr/bin/env bash
# Builds helm, pinned, from the Go module proxy into the same cache as the control-plane binaries (see
# hack/build-control-plane.sh), for the chart tests (lint, template). Also downloads the prometheus-operator module
# into the Go module cache: its CRDs (example/prometheus-operator-crd/) let the chart tests dry-run the
# ServiceMonitor and PrometheusRule; the tests install them themselves, never the shared control-plane start-up.
#
# Idempotent and fast once cached (one flock, one stat). Prints the helm binary's path on its last line of stdout;
# progress goes to stderr.
# SLUICE_HELM_BIN=/path/to/helm skips the build and uses that helm (it should be v$HELM_VERSION).
set -euo pipefail

HELM_VERSION=3.22.0
PROMETHEUS_OPERATOR_VERSION=0.85.0  # keep in step with PROMETHEUS_OPERATOR_MODULE in devcluster/helm.py

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { echo "[helm] $*" >&2; }

if [[ -n "${SLUICE_HELM_BIN:-}" ]]; then
  [[ -x "$SLUICE_HELM_BIN" ]] || { log "SLUICE_HELM_BIN=$SLUICE_HELM_BIN is not an executable"; exit 1; }
  echo "$SLUICE_HELM_BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed; it is needed to build helm"; exit 1; }

CACHE="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
BIN="$CACHE/bin/helm-$HELM_VERSION"
mkdir -p "$BIN"
exec 9>"$CACHE/helm.lock"
flock 9  # two test runs starting at once build only once (its own lock: no waiting for a Kubernetes build)

if [[ ! -x "$BIN/helm" ]]; then
  log "building helm v$HELM_VERSION (a few minutes on 2 cores)"
  # The ldflags of helm's own release build (its Makefile): the version, and the Kubernetes version that `helm
  # template` and `helm lint` assume, taken from the client-go helm is built with (v0.37 -> 1.37).
  gomod="$(go mod download -json "helm.sh/helm/v3@v$HELM_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
  k8s_minor="$(sed -n 's/^\tk8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")"
  [[ -n "$k8s_minor" ]] || { log "cannot find helm's client-go version in $gomod"; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  GOBIN="$BIN/.build" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  mv "$BIN/.build/helm" "$BIN/helm"
  rmdir "$BIN/.build" 2>/dev/null || true
fi

GOFLAGS=-mod=mod go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION" >/dev/null
echo "$BIN/helm"

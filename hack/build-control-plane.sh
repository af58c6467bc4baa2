#!/usr/bin/env bash
# Builds the real control plane the tests and the demo run on, from the Go module proxy, pinned, into a cache
# outside the repo: kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes through a wrapper
# module that maps the staging modules to their v0.x versions), etcd (a wrapper calling etcdmain.Main) and kwok.
# Also downloads the upstream CRD modules (istio.io/api, sigs.k8s.io/gateway-api, smi-sdk-go) into the module cache.
#
# Prints the binary directory on its last line of stdout. Progress goes to stderr.
# SLUICE_K8S_BIN_DIR=/path skips the build and uses pre-built binaries from there.
set -euo pipefail

K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
KWOK_VERSION=0.8.0
ISTIO_API_VERSION=1.32.0
GATEWAY_API_VERSION=1.6.3
SMI_SDK_VERSION=0.5.0  # the only smi-sdk-go version the Go module proxy serves

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { echo "[control-plane] $*" >&2; }

if [[ -n "${SLUICE_K8S_BIN_DIR:-}" ]]; then
  for b in "${BINARIES[@]}"; do
    [[ -x "$SLUICE_K8S_BIN_DIR/$b" ]] || { log "SLUICE_K8S_BIN_DIR=$SLUICE_K8S_BIN_DIR has no executable $b"; exit 1; }
  done
  echo "$SLUICE_K8S_BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed; it is needed to build the control plane"; exit 1; }

CACHE="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
mkdir -p "$BIN"
exec 9>"$CACHE/build.lock"
flock 9  # two test runs starting at once build only once

missing=()
for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done

k8s_minor="${K8S_VERSION#*.}"; k8s_minor="${k8s_minor%%.*}"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
  code-generator component-base component-helpers controller-manager cri-api cri-client cri-streaming
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller streaming)

build_kubernetes() {
  local dir="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  {
    echo "module sluice.dev/controlplane/kubernetes"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    for m in "${staging[@]}"; do echo "replace k8s.io/$m => k8s.io/$m v0.$k8s_minor.${K8S_VERSION##*.}"; done
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  log "resolving k8s.io/kubernetes v$K8S_VERSION (first run downloads a few hundred MB)"
  (cd "$dir" && go mod tidy -e >&2 2>&1 | tail -5 >&2 || true)
  local pkg="k8s.io/component-base/version"
  local ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$BIN/$b" ]] && continue
    log "building $b v$K8S_VERSION (several minutes on 2 cores)"
    (cd "$dir" && go build -tags tools -trimpath -ldflags "$ldflags" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$BIN/$b.tmp" "$BIN/$b"
  done
}

build_etcd() {
  local dir="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GOMOD
module sluice.dev/controlplane/etcd

go 1.26

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
GOMOD
  cat >"$dir/main.go" <<'GO'
// Command etcd is etcd's own server entry point, built from the released module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd v$ETCD_VERSION"
  (cd "$dir" && go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kwok() {
  log "building kwok v$KWOK_VERSION"
  GOBIN="$BIN/.kwok" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  mv "$BIN/.kwok/kwok" "$BIN/kwok"
  rmdir "$BIN/.kwok" 2>/dev/null || true
}

k8s_done=""
for b in "${missing[@]}"; do
  case "$b" in
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    kube-*) [[ -n "$k8s_done" ]] || { build_kubernetes; k8s_done=1; } ;;  # builds all missing kube-* at once
  esac
done

# Upstream CRDs come from their Go modules in the module cache.
go mod download -json "istio.io/api@v$ISTIO_API_VERSION" >/dev/null
go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" >/dev/null
go mod download -json "github.com/servicemeshinterface/smi-sdk-go@v$SMI_SDK_VERSION" >/dev/null
log "control plane ready in $BIN"
echo "$BIN"

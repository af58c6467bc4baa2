#!/usr/bin/env bash
# The local demo, from a fresh machine: builds what it needs, starts a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, KWOK), runs the sluice controller, applies examples/rollout.yaml,
# changes its image and prints the rollout walking its steps to Healthy, then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/bootstrap.sh
hack/build-control-plane.sh >/dev/null
hack/install-prometheus.sh
exec .venv/bin/python examples/demo.py "$@"

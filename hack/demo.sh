#!/usr/bin/env bash
# The local demo, from a fresh machine: builds what it needs, starts a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, KWOK), a real Prometheus scraping a metrics app, and the sluice controller;
# applies examples/analysis-template.yaml and examples/rollout.yaml, then pushes a good image (its analysis passes and
# it is promoted) and a bad one (its analysis fails and sluice aborts it), printing every step; then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/bootstrap.sh
hack/build-control-plane.sh >/dev/null
hack/install-prometheus.sh
exec .venv/bin/python examples/demo.py "$@"

#!/usr/bin/env bash
# The whole test suite, from a fresh machine: virtualenv, control-plane binaries (built once into
# ~/.cache/sluice, or taken from $SLUICE_K8S_BIN_DIR), Prometheus (Debian package, or $SLUICE_PROMETHEUS_BIN), lint,
# types, layer contracts, then unit and integration tests.
# Extra arguments go to pytest (e.g. `hack/test.sh -k abort`).
set -euo pipefail
cd "$(dirname "$0")/.."

hack/bootstrap.sh
hack/build-control-plane.sh >/dev/null
hack/build-helm.sh >/dev/null
hack/install-prometheus.sh

echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
echo "== import-linter" && .venv/bin/lint-imports
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"

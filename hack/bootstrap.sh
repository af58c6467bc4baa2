#!/usr/bin/env bash
# Creates (or refreshes) the project virtualenv in .venv with sluice and its dev dependencies.
# Re-installs only when pyproject.toml changed since the last install. Progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "sluice needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "[bootstrap] creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.sluice-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[bootstrap] installing sluice and its dev dependencies into .venv" >&2
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[dev]'; } >"$log" 2>&1
  then
    tail -40 "$log" >&2
    echo "[bootstrap] pip install failed; full log in $log" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi

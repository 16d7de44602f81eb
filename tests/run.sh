#!/usr/bin/env bash
# The whole suite as CI runs it: bring up a real SLURM (root only), run pytest, tear SLURM down.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
slurm_up=0
if [ "$(id -u)" = 0 ] && [ -z "${BRIDGE_RAY_NO_SLURM:-}" ]; then
  bash tests/slurm/slurm-ci.sh up local 2 && slurm_up=1
  trap 'bash tests/slurm/slurm-ci.sh down >/dev/null 2>&1 || true' EXIT
fi
"$PY" -m pytest -q -m "not gpu" "$@"

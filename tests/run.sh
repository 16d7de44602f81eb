#!/usr/bin/env bash
# The whole suite as CI runs it: bring up a real SLURM (needs root), run pytest, tear SLURM down.
# Not root, or BRIDGE_RAY_NO_SLURM=1: the SLURM tier is left out, and this says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
marker="not gpu"
if [ "$(id -u)" = 0 ] && [ -z "${BRIDGE_RAY_NO_SLURM:-}" ]; then
  trap 'bash tests/slurm/slurm-ci.sh down >/dev/null 2>&1 || true' EXIT
  bash tests/slurm/slurm-ci.sh up local 2 || exit 1
else
  echo "tests/run.sh: not root (or BRIDGE_RAY_NO_SLURM set): skipping the SLURM tier (-m 'not slurm')" >&2
  marker="not gpu and not slurm"
fi
"$PY" -m pytest -q -m "$marker" "$@"

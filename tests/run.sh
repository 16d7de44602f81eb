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
# A hard limit on the whole suite: a fault inside vLLM during weight sync hangs verl's driver
# instead of failing it. Each PPO-on-CPU job is stopped when it goes silent (tests/test_ppo_cpu.py);
# this one is the backstop, sized for a loaded machine: ~18 min idle; with two busy loops beside it
# the suite took 1 h 51 min (the PPO file alone 83 min, one test cut short by its own limit), so 2 h
# left no margin. SIGINT first, so pytest still tears its clusters down.
limit=${BRIDGE_RAY_TEST_TIMEOUT_S:-10800}
# Two pytest workers, each taking whole files (module-scoped clusters and the SLURM tier stay in one
# process): many integration tests wait on Ray, SLURM or a network timeout more than they compute
# (~40 % of the 2 cores idle in test_cluster + test_hardening alone), so two files overlap well.
# The slowest files go first (tests/conftest.py SLOWEST_FIRST), so neither worker idles at the end.
# BRIDGE_RAY_TEST_WORKERS=0 runs everything in this process, one test after another.
workers=${BRIDGE_RAY_TEST_WORKERS:-2}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
timeout --signal=INT --kill-after=120 "$limit" "$PY" -m pytest -q --durations=25 -m "$marker" "${parallel[@]}" "$@"
rc=$?
[ "$rc" = 124 ] && echo "tests/run.sh: the suite ran past ${limit} s and was stopped (BRIDGE_RAY_TEST_TIMEOUT_S)" >&2
exit "$rc"

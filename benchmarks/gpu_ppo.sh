#!/usr/bin/env bash
# PPO/GRPO on the GPU host through bridge-ray, beside plain `python -m verl.trainer.main_ppo`.
#
#   bash benchmarks/gpu_ppo.sh OUT [STAGE...]        (from anywhere; default: assets grpo-plain grpo-bridge ppo-bridge summary)
#
# Each stage ends inside one 10-minute device command (every verl run is cut at RUN_TIMEOUT):
#   assets       versions, nvidia-smi, the small random-init Llama + synthetic GSM8K (cached in $WORK), dry run
#   grpo-plain   python -m verl.trainer.main_ppo with ppo.to_verl_overrides(cfg) (verl starts its own Ray)
#   grpo-bridge  bridge-ray up + submit recipes/grpo_gsm8k.py --follow -- <the same cfg as ppo.* args> + down
#   ppo-bridge   PPO (GAE + critic) through bridge-ray; the cluster starts WITHOUT VLLM_USE_FLASHINFER_SAMPLER,
#                so bridge-ray's own injection must carry it to vLLM (KEEP_VLLM_ENV=1 keeps it in the cluster env)
#   ppo-resume   (optional) the same PPO run submitted again with STEPS+2: verl resumes from its checkpoint
#   summary      summary.md: the table for benchmarks/RESULTS.md
# Results accumulate in $WORK/out across calls (a warm machine keeps /tmp) and are copied to OUT at the end of
# every call: at most 8 files, no folders (env.txt results.json summary.md, one <stage>.log per verl run).
# Needs the wheel install first (ray, verl, vllm importable: PYTHONPATH/PATH exported).
# Env: WORK (/tmp/bridge-ray-ppo-bench), STEPS (10), RUN_TIMEOUT (480 s per verl run), SHAPE (small).
set -uo pipefail
dest="$(mkdir -p "$1" && cd "$1" && pwd)"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work="${WORK:-/tmp/bridge-ray-ppo-bench}"; steps="${STEPS:-10}"; out="$work/out"; mkdir -p "$out"
trap 'cp "$out"/* "$dest"/ 2>/dev/null' EXIT
bench=(python3 benchmarks/ppo_throughput.py --out "$out" --work "$work" --timeout "${RUN_TIMEOUT:-480}"
       --shape "${SHAPE:-small}" ${GPUS:+--gpus "$GPUS"})
unset_vllm=$([ -n "${KEEP_VLLM_ENV:-}" ] || echo --unset-vllm-env)
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(assets grpo-plain grpo-bridge ppo-bridge summary)
rc=0
for stage in "${stages[@]}"; do
  echo "== $stage $(date +%T)"
  case "$stage" in
    assets)
      { python3 -c 'import vllm, verl, ray, torch, transformers; print("vllm", vllm.__version__, "verl", verl.__version__,
"ray", ray.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cpus $(nproc)"
        timeout 300 "${bench[@]}" --steps "$steps" --algo grpo --dry-run 2>&1 | grep -E "assets ready|overrides_identical|Error"
      } > "$out/env.txt" 2>&1 || rc=1
      cat "$out/env.txt" ;;
    grpo-plain)  timeout 590 "${bench[@]}" --steps "$steps" --algo grpo --mode plain > /dev/null || rc=1 ;;
    grpo-bridge) timeout 590 "${bench[@]}" --steps "$steps" --algo grpo --mode bridge > /dev/null || rc=1 ;;
    ppo-bridge)  timeout 590 "${bench[@]}" --steps "$steps" --algo ppo --mode bridge $unset_vllm > /dev/null || rc=1 ;;
    ppo-resume)  timeout 590 "${bench[@]}" --steps $((steps + 2)) --algo ppo --mode bridge $unset_vllm --keep-run \
                   --tag ppo_resume > /dev/null || rc=1 ;;
    summary)     python3 benchmarks/ppo_throughput.py --summarize "$out" | tee "$out/summary.md" ;;
    *) echo "unknown stage $stage: use assets grpo-plain grpo-bridge ppo-bridge ppo-resume summary"; exit 2 ;;
  esac
  tag="${stage/-/_}"
  [ -f "$out/results.json" ] && python3 - "$out/results.json" "$tag" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])).get(sys.argv[2])
keys = ("side", "rc", "num_steps", "first_step", "step_time_s", "train_throughput_tok_s_gpu",
        "rollout_throughput_tok_s", "first_step_at_s", "peak_gpu_mem_mib", "merged_hf_actor",
        "overrides_identical_to_plain")
if r:
    print({k: r.get(k) for k in keys if k in r})
PY
  [ -f "$out/$tag.log" ] && grep -E "Traceback|Error|error:" "$out/$tag.log" | grep -v "UserWarning\|truncation" | head -5
done
exit $rc

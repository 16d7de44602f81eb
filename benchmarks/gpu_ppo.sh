#!/usr/bin/env bash
# PPO/GRPO on the GPU host through bridge-ray, beside plain `python -m verl.trainer.main_ppo`.
#
#   bash benchmarks/gpu_ppo.sh OUT [STAGE...]        (from anywhere; default: assets ppo-plain ppo-bridge summary)
#
# Each verl run fits a 10-minute device command (each is cut at RUN_TIMEOUT); give one command the two
# sides of a pair when they fit, and alternate which side goes first between pairs:
#   assets       versions, nvidia-smi, the small random-init Llama + synthetic GSM8K (cached in $WORK), dry run
#   warmup       one unrecorded 2-step plain PPO run (tag warmup_ppo_plain, in no ratio): a fresh machine's first
#                verl/vLLM start is ~25 s slower (libraries, kernels and caches cold), which the first recorded
#                side would otherwise pay in its time to first step
#   ppo-plain    python -m verl.trainer.main_ppo, PPO (GAE + critic), ppo.to_verl_overrides(cfg) (verl's own Ray)
#   ppo-bridge   bridge-ray up + submit recipes/ppo_gsm8k.py --follow -- <the same cfg as ppo.* args> + down;
#                the cluster starts WITHOUT VLLM_USE_FLASHINFER_SAMPLER, so bridge-ray's own injection must carry
#                it to vLLM (KEEP_VLLM_ENV=1 keeps it in the cluster env)
#   grpo-plain, grpo-bridge   the same for GRPO
#   ppo-resume   the ppo-bridge run submitted again with STEPS+2 and the same output dir: verl resumes
#   ppo-stop     PPO saving every 2 steps, `bridge-ray stop` after step 4, submitted again: resumes from step 4
#   chain        recipes/sft_then_ppo.py (SFT 20 steps on the GPU, merge, 4 GRPO steps from it), then submitted
#                again: both stages are skipped
#   summary      summary.md: the table for benchmarks/RESULTS.md
# Both sides load bridge-ray's critic-loader plugin through verl's VERL_USE_EXTERNAL_MODULES (no flash-attn on
# the host; verl 0.9.1 hard-codes it for the critic). Results accumulate in $WORK/out across calls (a warm
# machine keeps /tmp); every call leaves one OUT/ppo-out.tgz with all of them (logs, results.json,
# <tag>_procs.json process/env snapshots taken at step 1, summary.md).
# Needs the wheel install first (ray, verl, vllm importable: PYTHONPATH/PATH exported).
# Env: WORK (/tmp/bridge-ray-ppo-bench), STEPS (10), RUN_TIMEOUT (480 s per verl run), SHAPE (small |
# llama-3.2-1b), SETNAME (1b-grpo | 1b-ppo: a named set of overrides, below), SET (space-separated ppo.* overrides
# for both sides, after SETNAME's), SUFFIX (appended to each run's tag, for
# repeated pairs: SUFFIX=_2 gives ppo_plain_2 / ppo_bridge_2), PLAIN_POLL (1: plain loads bridge-ray's replay-poll
# plugin too, the same settings on both sides; unset: plain polls every 2 s as verl does).
set -uo pipefail
dest="$(mkdir -p "$1" && cd "$1" && pwd)"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work="${WORK:-/tmp/bridge-ray-ppo-bench}"; steps="${STEPS:-10}"; out="$work/out"; mkdir -p "$out"
trap 'tar czf "$dest/ppo-out.tgz" -C "$out" .' EXIT
bench=(python3 benchmarks/ppo_throughput.py --out "$out" --work "$work" --timeout "${RUN_TIMEOUT:-480}"
       --shape "${SHAPE:-small}" ${GPUS:+--gpus "$GPUS"} ${PLAIN_POLL:+--plain-poll})
# Named override sets (SETNAME=...), before SET's: the 1B-shape runs of RESULTS.md (use with SHAPE=llama-3.2-1b).
# tests/test_benchmark_variants.py validates each against bridge-ray's PPO config, so a typo fails on CPU.
declare -A SETS=(
  [1b-grpo]="ppo.rollout.n=5 ppo.data.max_prompt_length=512 ppo.data.max_response_length=256 ppo.data.train_batch_size=128 ppo.actor.mini_batch_size=64 ppo.actor.micro_batch_size_per_gpu=16 ppo.rollout.gpu_memory_utilization=0.5 ppo.model.gradient_checkpointing=false ppo.model.use_remove_padding=true ppo.model.attn_implementation=torch_varlen ppo.actor.max_tokens_per_gpu=8192 ppo.ref.max_tokens_per_gpu=32768 ppo.rollout.log_prob_max_tokens_per_gpu=32768"
  [1b-ppo]="ppo.data.max_prompt_length=512 ppo.data.max_response_length=256 ppo.data.train_batch_size=256 ppo.actor.mini_batch_size=64 ppo.actor.micro_batch_size_per_gpu=16 ppo.rollout.gpu_memory_utilization=0.35 ppo.model.gradient_checkpointing=false ppo.model.use_remove_padding=true ppo.model.attn_implementation=torch_varlen ppo.actor.max_tokens_per_gpu=8192 ppo.ref.max_tokens_per_gpu=32768 ppo.rollout.log_prob_max_tokens_per_gpu=32768 ppo.critic.max_tokens_per_gpu=8192"
)
if [ -n "${SETNAME:-}" ] && [ -z "${SETS[${SETNAME}]:-}" ]; then
  echo "unknown SETNAME=$SETNAME: use one of ${!SETS[*]}"; exit 2
fi
for kv in ${SETS[${SETNAME:-none}]:-} ${SET:-}; do bench+=(--set "$kv"); done   # SET="ppo.rollout.n=5 ...": both sides
unset_vllm=$([ -n "${KEEP_VLLM_ENV:-}" ] || echo --unset-vllm-env)
stages=("$@"); [ ${#stages[@]} -gt 0 ] || stages=(assets ppo-plain ppo-bridge summary)
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
    warmup)      timeout 590 "${bench[@]}" --steps 2 --algo ppo --mode plain --tag warmup_ppo_plain > /dev/null || rc=1 ;;
    grpo-plain)  timeout 590 "${bench[@]}" --steps "$steps" --algo grpo --mode plain --tag grpo_plain${SUFFIX:-} > /dev/null || rc=1 ;;
    grpo-bridge) timeout 590 "${bench[@]}" --steps "$steps" --algo grpo --mode bridge --tag grpo_bridge${SUFFIX:-} > /dev/null || rc=1 ;;
    ppo-plain)   timeout 590 "${bench[@]}" --steps "$steps" --algo ppo --mode plain --tag ppo_plain${SUFFIX:-} > /dev/null || rc=1 ;;
    ppo-bridge)  timeout 590 "${bench[@]}" --steps "$steps" --algo ppo --mode bridge --tag ppo_bridge${SUFFIX:-} $unset_vllm > /dev/null || rc=1 ;;
    ppo-resume)  timeout 590 "${bench[@]}" --steps $((steps + 2)) --algo ppo --mode bridge $unset_vllm --keep-run \
                   --tag ppo_resume > /dev/null || rc=1 ;;
    ppo-stop)    timeout 590 "${bench[@]}" --steps 6 --save-freq 2 --stop-after 4 --algo ppo --mode bridge \
                   $unset_vllm --tag ppo_stop --work "$work/stop" > /dev/null || rc=1 ;;
    chain)       timeout 590 "${bench[@]}" --steps 4 --algo grpo --mode chain $unset_vllm --tag chain > /dev/null || rc=1 ;;
    summary)     python3 benchmarks/ppo_throughput.py --summarize "$out" | tee "$out/summary.md" ;;
    *) echo "unknown stage $stage: use assets warmup ppo-plain ppo-bridge grpo-plain grpo-bridge ppo-resume ppo-stop chain summary"
       exit 2 ;;
  esac
  tag="${stage/-/_}"; case "$stage" in *-plain|*-bridge) tag="$tag${SUFFIX:-}" ;; esac
  [ -f "$out/results.json" ] && python3 - "$out/results.json" "$tag" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])).get(sys.argv[2])
keys = ("side", "rc", "rerun_rc", "rerun_skipped", "num_steps", "first_step", "resumed", "step_time_s", "train_throughput_tok_s_gpu",
        "rollout_throughput_tok_s", "first_step_at_s", "phases_s", "peak_gpu_mem_mib", "merged_hf_actor",
        "overrides_identical_to_plain", "critic_vf_loss")
if r:
    print({k: r.get(k) for k in keys if k in r})
PY
  [ -f "$out/$tag.log" ] && grep -E "Traceback|Error|error:" "$out/$tag.log" | grep -v "UserWarning\|truncation" | head -5
  tar czf "$dest/ppo-out.tgz" -C "$out" .   # after every stage: a call cut at its limit keeps what finished
done
exit $rc

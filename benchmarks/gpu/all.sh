#!/usr/bin/env bash
# One device call on a 2-GPU host: the SFT benchmark on GPU 0 and the GRPO pair (plain main_ppo, then
# bridge-ray) on GPU 1, side by side. Each benchmark compares its two sides on its own GPU.
#   bash benchmarks/gpu/all.sh OUT WHEELHOUSE_PARTS_DIR
set -uo pipefail
out=${1:?usage: all.sh OUT PARTS}; parts=${2:?usage: all.sh OUT PARTS}
cd "$(dirname "$0")/../.."
t0=$(date +%s)
eval "$(bash benchmarks/gpu/install.sh "$parts")" || exit 1
echo "== install $(( $(date +%s) - t0 )) s"
export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
mkdir -p /tmp/o
(CUDA_VISIBLE_DEVICES=0 timeout "${SFT_BUDGET:-520}" bash benchmarks/gpu/sft.sh /tmp/o/sft assets "pairs=${SFT_VARIANTS:-seed,default}@0" summary) \
  > /tmp/o/sft.txt 2>&1 &
(CUDA_VISIBLE_DEVICES=1 GPUS=1 STEPS="${PPO_STEPS:-6}" RUN_TIMEOUT="${RUN_TIMEOUT:-220}" timeout "${PPO_BUDGET:-520}" \
  bash benchmarks/gpu_ppo.sh /tmp/o/ppo ${PPO_STAGES:-assets grpo-plain grpo-bridge summary}) > /tmp/o/ppo.txt 2>&1 &
wait
echo "== done $(( $(date +%s) - t0 )) s"
tail -n 12 /tmp/o/sft.txt; tail -n 25 /tmp/o/ppo.txt
tar -czf "$out/results.tar.gz" -C /tmp o

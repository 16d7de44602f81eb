#!/usr/bin/env bash
# Issue 16's runs on one host with several GPUs, in stages that each fit one device call (10 minutes).
# Run after `eval "$(bash benchmarks/gpu/install.sh SRC)"`; every stage compares bridge-ray with its plain
# baseline in the same call and leaves its figures under OUT.
#
#   bash benchmarks/gpu/multi.sh OUT STAGE...
#     sft=N[@PAIRS]     SFT at the fast default on N GPUs: bridge-ray vs `torchrun --nproc_per_node N`, alternating
#                       pairs (default 0); needs `bash benchmarks/gpu/sft.sh OUT assets` first. Scaling
#                       efficiency = tokens/s/GPU at N over that at 1 (run sft=1 in the same session).
#     ppo-layout=SIDE   the seed's PPO layout on every GPU of the host, 1B shape: batch 256 / mini 64 / micro 4,
#                       rollout TP 1; SIDE plain (main_ppo) or bridge, one per call (SUFFIX for repeats; alternate)
#     tp2               GRPO through bridge-ray with ppo.rollout.tensor_parallel_size=2 (the run must step)
#     nccl[=PAIRS]      `bridge-ray doctor` on every GPU beside a plain torch all-reduce (benchmarks/allreduce_busbw.py)
#     summary           OUT/sft/summary.json, the PPO summary.md
# NVLink multicast stays off everywhere (NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# NVSHMEM_DISABLE_NVLS=1): the lent hosts need it, and a process started with its own environment keeps it.
set -uo pipefail
out=${1:?usage: multi.sh OUT STAGE...}; shift
cd "$(dirname "$0")/../.."
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 \
       BRIDGE_RAY_HOME=/tmp/bridge-home
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$gpus" -gt 0 ] || { echo "multi.sh: nvidia-smi lists no GPU here; run it on the GPU host" >&2; exit 2; }
t0=$(date +%s)
for stage in "$@"; do
  case "$stage" in
    sft=*)
      spec=${stage#sft=}; n=${spec%@*}; pairs=0; [ "$spec" = "$n" ] || pairs=${spec#*@}
      [ "$n" -le "$gpus" ] || { echo "sft=$n: this host has $gpus GPUs" >&2; exit 2; }
      timeout 570 python3 benchmarks/sft_throughput.py --out "$out/sft-$n" --model /tmp/assets1b/model \
        --data /tmp/assets1b/data --gpus "$n" --steps "${STEPS:-16}" --skip "${SKIP:-4}" --variants default \
        --pairs "$pairs" --timeout "${RUN_TIMEOUT:-240}" > "$out/sft-$n.log" 2>&1
      echo "== $stage rc=$? $(( $(date +%s) - t0 )) s"; grep '^{"steps"\|"error"' "$out/sft-$n.log" | cut -c1-300 ;;
    ppo-layout=plain|ppo-layout=bridge)  # gpu_ppo.sh builds (or reuses) the assets itself; `assets` records versions
      GPUS=$gpus SHAPE=llama-3.2-1b STEPS=${STEPS:-6} RUN_TIMEOUT=${RUN_TIMEOUT:-540} \
        SET="ppo.data.train_batch_size=256 ppo.actor.mini_batch_size=64 ppo.actor.micro_batch_size_per_gpu=4 ppo.rollout.tensor_parallel_size=1" \
        SUFFIX=_layout${SUFFIX:-} bash benchmarks/gpu_ppo.sh "$out/ppo" assets "ppo-${stage#ppo-layout=}"
      echo "== $stage $(( $(date +%s) - t0 )) s" ;;
    tp2)
      GPUS=$gpus STEPS=${STEPS:-4} RUN_TIMEOUT=${RUN_TIMEOUT:-540} SET="ppo.rollout.tensor_parallel_size=2" SUFFIX=_tp2 \
        bash benchmarks/gpu_ppo.sh "$out/ppo" assets grpo-bridge
      echo "== $stage $(( $(date +%s) - t0 )) s" ;;
    nccl|nccl=*)
      pairs=3; [ "$stage" = nccl ] || pairs=${stage#nccl=}
      timeout 570 python3 benchmarks/allreduce_busbw.py --out "$out/nccl-$gpus" --gpus "$gpus" --pairs "$pairs" \
        > "$out/nccl-$gpus.log" 2>&1
      echo "== $stage rc=$? $(( $(date +%s) - t0 )) s"; tail -n 1 "$out/nccl-$gpus.log" ;;
    summary)
      for d in "$out"/sft-*/; do [ -d "$d" ] && python3 benchmarks/sft_throughput.py --out "$d" --summary | tail -n 4; done
      [ -d "$out/ppo" ] && bash benchmarks/gpu_ppo.sh "$out/ppo" summary ;;
    *) echo "unknown stage $stage: use sft=N[@PAIRS] ppo-layout=plain|bridge tp2 nccl[=PAIRS] summary" >&2; exit 2 ;;
  esac
done

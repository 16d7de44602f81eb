#!/usr/bin/env bash
# Issue 15 on a GPU host: the 1B text -> chat chain through bridge-ray, as a user runs it, then again
# (every stage skipped). One device call (under 10 minutes) after the wheel install:
#
#   bash benchmarks/gpu/chain.sh OUT
#
# Text: the lexicon documents of `benchmarks/pretrain_throughput.py prepare` (/tmp/pt/assets/text, made
# here when missing); conversations: 256 synthetic oasst-style trees. The chain trains its own 32k unigram
# tokenizer on that text (preset chain_1b), pretrains the 1B shape at sequence 2048 for PRETRAIN_STEPS
# steps (global batch 64 sequences, not the preset's 512: a few minutes on one GPU), exports it with the
# tokenizer and the test prompt, instruction-tunes it for INSTRUCT_STEPS steps with the fast SFT default,
# and exports that. OUT gets chain.log, rerun.log, stages.json, the records and the two exported configs.
# Env: PRETRAIN_STEPS (30), INSTRUCT_STEPS (20), CHAIN_TIMEOUT (470 s), BRIDGE_RAY_HOME (/tmp/chain-home).
# The rerun starts only after the first job has ended: a follow cut by CHAIN_TIMEOUT leaves the job running
# (on 2026-12-06 it was merging the instruct model when the rerun began, and the rerun trained that stage again).
set -uo pipefail
out="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 BRIDGE_RAY_HOME="${BRIDGE_RAY_HOME:-/tmp/chain-home}"
text=/tmp/pt/assets/text; run=/tmp/chain-run; trees=/tmp/chain-data/trees.jsonl
[ -f "$text/text-1.jsonl" ] || timeout 300 python3 benchmarks/pretrain_throughput.py --out /tmp/pt prepare
python3 -c "from bridge_ray.data.conversations import generate_synthetic_conversations as g; g('$trees')"
files="[$text/text-0.jsonl,$text/text-1.jsonl]"
args=(preset=chain_1b "run_dir=$run" "tokenizer.files=$files" "pretrain.data.train_files=$files" "conversations=[$trees]"
      "tokenizer.num_cpus=8"  # both training stages: one worker per GPU of the cluster (the preset's auto)
      pretrain.data.global_batch_size=64 "pretrain.trainer.total_steps=${PRETRAIN_STEPS:-30}"
      pretrain.optim.warmup_steps=5 pretrain.trainer.save_freq=-1 "instruct.trainer.total_steps=${INSTRUCT_STEPS:-20}"
      instruct.trainer.save_freq=-1 instruct.trainer.test_freq=-1)
python3 -m bridge_ray up --name chain 2>&1 | tail -1
t0=$(date +%s)
timeout "${CHAIN_TIMEOUT:-470}" python3 -m bridge_ray submit recipes/text_to_chat.py --name chain --follow -- "${args[@]}" \
  > "$out/chain.log" 2>&1; rc=$?; echo "chain rc=$rc in $(( $(date +%s) - t0 )) s"
if [ "$rc" = 0 ]; then
  t0=$(date +%s)
  timeout 90 python3 -m bridge_ray submit recipes/text_to_chat.py --name chain --follow -- "${args[@]}" \
    > "$out/rerun.log" 2>&1; echo "rerun rc=$? in $(( $(date +%s) - t0 )) s"
else
  echo "rerun skipped: the first job did not end within CHAIN_TIMEOUT"
fi
python3 -m bridge_ray runs list 2>&1 | tail -4
python3 -m bridge_ray down --name chain --force 2>&1 | tail -1
grep -hE "^\[bridge-ray\] (stage|merged|sample|export|test prompt)|error" "$out/chain.log" "$out/rerun.log" | cut -c1-300
cp "$run/stages.json" "$out/" 2>/dev/null
for stage in pretrain instruct; do cp "$run/$stage/hf/config.json" "$out/$stage-hf-config.json" 2>/dev/null; done
cp -r "$BRIDGE_RAY_HOME/runs" "$out/records" 2>/dev/null
exit 0

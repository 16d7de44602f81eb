#!/usr/bin/env bash
# 1B pretraining on the GPU host (issue 15), in stages that each fit one device call (10 minutes). Run after
# `eval "$(bash benchmarks/gpu/install.sh SRC)"`; every run goes under /tmp/pt* (kept while the host is warm),
# and `pack` puts what comes back under OUT.
#
#   bash benchmarks/gpu/pretrain.sh OUT STAGE...
#     prepare        text, 32k tokenizer, token shards, the random-init 1B model in /tmp/pt/assets (~60 s, once)
#     pair=N         bridge-ray and torchrun with the same overrides, bridge-ray first for even N (~4 min a pair)
#     NAME           one bridge-ray run of a variant (VARIANTS below) in /tmp/pt-NAME (~2.5 min)
#     profile=NAME   the same with steps 8-9 profiled (BRIDGE_RAY_PROFILE_STEPS): /tmp/pt-NAME-profile/…/profile
#                    (`default` = no override)
#     summary        bridge-ray / torchrun of the pairs so far, and every variant's steady state
#     pack           OUT/pretrain-runs.tgz: summaries, step rows, logs, profiles (no tokens, model, token file or
#                    Perfetto trace: fetch that from /tmp/pt-*/…/profile/ while the host is warm)
#
# Env: STEPS (14), SKIP (4), RUN_TIMEOUT per run (220 s); CPU=1: the tiny shape on 2 CPU ranks (checks the script).
set -uo pipefail
out=${1:?usage: pretrain.sh OUT STAGE...}; shift
cd "$(dirname "$0")/../.."
mkdir -p "$out"; export PYTHONUNBUFFERED=1
declare -A VARIANTS=(
  [default]=""
  [mb16]="pretrain.data.micro_batch_size_per_worker=16 pretrain.optim.fused=true"
  [noreshard]="pretrain.workers.reshard_after_forward=false"
  [mb16_noreshard]="pretrain.data.micro_batch_size_per_worker=16 pretrain.optim.fused=true pretrain.workers.reshard_after_forward=false"
  [compile]="pretrain.workers.use_torch_compile=true"
  [liger]="pretrain.model.liger=true"
  [mb16_liger]="pretrain.data.micro_batch_size_per_worker=16 pretrain.optim.fused=true pretrain.model.liger=true"
)
bench() { python3 benchmarks/pretrain_throughput.py ${CPU:+--cpu} --steps "${STEPS:-14}" --skip "${SKIP:-4}" --timeout "${RUN_TIMEOUT:-220}" "$@"; }
variant() {  # NAME DIR [extra args]: one bridge-ray run of VARIANTS[NAME] in DIR
  local name=$1 dir=$2; shift 2
  [ -n "${VARIANTS[$name]+set}" ] || { echo "unknown variant $name (${!VARIANTS[*]})" >&2; return 2; }
  mkdir -p "$dir" && [ -e "$dir/assets" ] || cp -al /tmp/pt/assets "$dir/"
  local sets=(); for s in ${VARIANTS[$name]}; do sets+=(--set "$s"); done
  bench --out "$dir" "${sets[@]}" "$@" run --side bridge --pair 0 2>&1 | tail -n 1 | cut -c1-400
}
t0=$(date +%s)
for stage in "$@"; do
  case "$stage" in
    prepare)
      [ -f /tmp/pt/assets/prepared.json ] || bench --out /tmp/pt prepare > "$out/prepare.log" 2>&1
      echo "== prepare rc=$? $(( $(date +%s) - t0 )) s" ;;
    pair=*)
      n=${stage#pair=}; sides=(bridge torchrun); (( n % 2 )) && sides=(torchrun bridge)
      for side in "${sides[@]}"; do bench --out /tmp/pt run --side "$side" --pair "$n" 2>&1 | tail -n 1 | cut -c1-400; done
      echo "== $stage $(( $(date +%s) - t0 )) s" ;;
    profile=*)
      variant "${stage#profile=}" "/tmp/pt-${stage#profile=}-profile" --profile 8-9
      cat "/tmp/pt-${stage#profile=}-profile/pair-0-bridge/profile/summary.json" 2>/dev/null
      echo "== $stage $(( $(date +%s) - t0 )) s" ;;
    summary)
      [ -d /tmp/pt/pair-0-bridge ] && bench --out /tmp/pt summary 2>&1 | tail -n 4
      for f in /tmp/pt-*/pair-0-bridge/summary.json; do [ -f "$f" ] && echo "$f $(tr -d '\n ' < "$f" | cut -c1-300)"; done ;;
    pack)
      tar -czf "$out/pretrain-runs.tgz" -C /tmp --exclude=assets --exclude=tokens --exclude=init --exclude=checkpoints \
        --exclude=auth_token --exclude=ray_train --exclude='trace-*.json.gz' $(cd /tmp && ls -d pt pt-* 2>/dev/null)
      ls -la "$out" ;;
    *)
      [ -n "${VARIANTS[$stage]+set}" ] || { echo "unknown stage $stage" >&2; exit 2; }
      variant "$stage" "/tmp/pt-$stage"
      echo "== $stage $(( $(date +%s) - t0 )) s" ;;
  esac
done

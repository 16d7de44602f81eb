#!/usr/bin/env bash
# SFT on the GPU host, in stages that each fit one device call (10 minutes). Run after
# `eval "$(bash benchmarks/gpu/install.sh SRC)"`; results and logs go under OUT.
#
#   bash benchmarks/gpu/sft.sh OUT STAGE...
#     assets                   Llama-3.2-1B-shaped random model + 2,000 synthetic GSM8K rows in /tmp/assets1b
#                              (~100 s, reused while the host stays warm)
#     parity                   pytest -m gpu tests/test_sft_fast_path.py on those assets: the real varlen
#                              kernel vs sdpa, the probe, the fast default vs the seed's losses
#                              (OUT/sft_loss_parity.json; ~4 min)
#     warmup                   one unrecorded torchrun run of the default (OUT/warmup): fills the host's Triton
#                              cache, so the first recorded run does not pay the kernel builds (~1 min)
#     pairs=VARIANTS@PAIRS     benchmarks/sft_throughput.py: bridge-ray vs torchrun, alternating, e.g.
#                              pairs=seed,default@0 (one pair of each: ~6 min), pairs=default@1-2
#     summary                  OUT/sft/summary.json + a table, from every run so far
#
# A 1-GPU plan within 10-minute calls: (1) install + assets + warmup + parity, (2) pairs=seed,default@0,
# (3) pairs=seed,default@1, (4) pairs=seed,default@2 summary. Other variants: see VARIANTS in
# benchmarks/sft_throughput.py (fused, liger, liger_fused, liger_fused_adamw, adamw_fused, compile, compile_layers, sdpa_packed, tokens32k, loader2, gbs256).
# Env: GPUS (1), STEPS (16), SKIP (3), RUN_TIMEOUT per run (240 s).
set -uo pipefail
out=${1:?usage: sft.sh OUT STAGE...}; shift
cd "$(dirname "$0")/../.."
mkdir -p "$out"; export BRIDGE_RAY_HOME=/tmp/bridge-home PYTHONUNBUFFERED=1
assets=/tmp/assets1b
t0=$(date +%s)
for stage in "$@"; do
  case "$stage" in
    assets)
      [ -f $assets/model/config.json ] || timeout 300 python3 -m bridge_ray assets demo $assets --shape llama-3.2-1b \
        --num-train 2000 > "$out/assets.log" 2>&1
      echo "== assets rc=$? $(( $(date +%s) - t0 )) s" ;;
    parity)
      BRIDGE_RAY_TEST_ASSETS=$assets BRIDGE_RAY_TEST_RESULTS="$out" timeout 420 python3 -m pytest -m gpu -q -s \
        tests/test_sft_fast_path.py > "$out/parity.log" 2>&1
      echo "== parity rc=$? $(( $(date +%s) - t0 )) s"; tail -n 3 "$out/parity.log" ;;
    warmup)
      timeout 300 python3 benchmarks/sft_throughput.py --out "$out/warmup" --model $assets/model --data $assets/data \
        --gpus "${GPUS:-1}" --steps "${STEPS:-16}" --skip "${SKIP:-3}" --variants default --pairs 0 --sides torchrun \
        --timeout 280 > "$out/warmup.log" 2>&1
      echo "== warmup rc=$? $(( $(date +%s) - t0 )) s" ;;
    pairs=*)
      spec=${stage#pairs=}
      timeout 570 python3 benchmarks/sft_throughput.py --out "$out/sft" --model $assets/model --data $assets/data \
        --gpus "${GPUS:-1}" --steps "${STEPS:-16}" --skip "${SKIP:-3}" --variants "${spec%@*}" --pairs "${spec#*@}" \
        --timeout "${RUN_TIMEOUT:-240}" > "$out/sft-${spec//[,@]/_}.log" 2>&1
      echo "== $stage rc=$? $(( $(date +%s) - t0 )) s"; grep '^{"steps"\|"error"' "$out/sft-${spec//[,@]/_}.log" | cut -c1-300 ;;
    summary)
      python3 benchmarks/sft_throughput.py --out "$out/sft" --summary > "$out/sft-summary.log" 2>&1
      python3 - "$out/sft/summary.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["machine"], d["date"], d["commit"], d.get("hardware"))
for name, v in d["variants"].items():
    for side in ("bridge", "torchrun"):
        r = v.get(side) or {}
        print(f"{name:12} {side:8} tok/s/GPU {r.get('tokens_per_s_per_gpu') or 0:9.0f}  MFU {r.get('mfu_torchtitan') or 0:.3f}  "
              f"peak {r.get('peak_memory_gb') or 0:5.1f} GB  s/step {r.get('s_per_step') or 0:.3f}  loss {r.get('final_loss')}")
    print(f"{name:12} ratio bridge/torchrun per pair {v['ratio_bridge_over_torchrun_per_pair']} median {v['ratio_median']}"
          f" overrides identical {v['overrides_identical']}")
PY
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# On the GPU host (after `eval "$(bash benchmarks/gpu/install.sh SRC)"`): Llama-3.2-1B-shaped
# random-init model + synthetic GSM8K, then benchmarks/sft_throughput.py. Results and logs in OUT.
#   bash benchmarks/gpu/sft.sh OUT [GPUS] [VARIANTS]
set -uo pipefail
out=${1:?usage: sft.sh OUT [GPUS] [VARIANTS]}; gpus=${2:-1}; variants=${3:-seed,mb32_nockpt}
mkdir -p "$out"; export BRIDGE_RAY_HOME=/tmp/bridge-home PYTHONUNBUFFERED=1
t0=$(date +%s)
[ -f /tmp/assets1b/model/config.json ] || python3 -m bridge_ray assets demo /tmp/assets1b --shape llama-3.2-1b \
  --num-train 2000 > "$out/assets.log" 2>&1
echo "== assets $(( $(date +%s) - t0 )) s"
timeout "${SFT_TIMEOUT:-480}" python3 benchmarks/sft_throughput.py --out "$out/run-$gpus" --model /tmp/assets1b/model \
  --data /tmp/assets1b/data --gpus "$gpus" --steps "${STEPS:-12}" --skip 3 --variants "$variants" \
  --timeout "${SIDE_TIMEOUT:-150}" > "$out/sft-$gpus.out" 2>&1
echo "== sft rc=$? $(( $(date +%s) - t0 )) s"
python3 - "$out/run-$gpus/sft_throughput.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for name, v in d["variants"].items():
    for side in ("torchrun", "bridge_ray"):
        r = v[side]
        print(name, side, {k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()})
    print(name, "ratio", v["ratio_bridge_over_torchrun"])
PY

"""SFT throughput: bridge-ray's TorchTrainer path vs ``torchrun -m verl.trainer.sft_trainer``.

Same model, data, verl settings and GPU(s), in one run, each variant measured on both
sides back to back:
  (a) bridge-ray: ``bridge-ray up`` + ``bridge-ray submit recipes/sft_gsm8k.py --follow``
  (b) baseline:   ``torchrun --standalone --nproc_per_node G -m verl.trainer.sft_trainer``
      with exactly the overrides bridge-ray hands verl (``sft.to_verl_overrides``).
Both sides are parsed from verl's own console lines (``step:N - train/loss:...``),
stamped on arrival, so one method measures both.

Steady state = steps after ``--skip``. MFU convention (torchtitan's): FLOPs/token =
6·N + 12·L·H·Q·T with N = parameters (1.236e9 for the Llama-3.2-1B shape), L layers, H heads,
Q head dim, T the mean sequence length; peak 989.4 TFLOP/s (H100 SXM bf16 dense).

    python benchmarks/sft_throughput.py --out /tmp/o --model DIR --data DIR --gpus 1 --steps 14
    python benchmarks/sft_throughput.py --cpu-check --out /tmp/o   # tiny model, CPU, logic check only
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def exe(name: str) -> str:
    """A console script: beside this interpreter (a venv), else on PATH (the GPU host's /tmp/site/bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)

STEP_RE = re.compile(r"step:(\d+) - (.*)")
KV_RE = re.compile(r"([\w/()]+):([-\d.e+]+)")
PEAK_FLOPS = 989.4e12

VARIANTS = {
    # The seed's settings: micro batch 8, gradient checkpointing on.
    "seed": [],
    # Bigger micro batch, no activation recomputation: fewer, larger kernels.
    "mb32_nockpt": ["sft.data.micro_batch_size_per_worker=32", "sft.model.gradient_checkpointing=false"],
    "mb64_nockpt": ["sft.data.micro_batch_size_per_worker=64", "sft.model.gradient_checkpointing=false"],
}


def stamped_run(cmd: list[str], log: Path, env: dict, timeout_s: float) -> tuple[int, list[tuple[float, str]]]:
    """Run ``cmd``, write ``[t=...] line`` to ``log`` as lines arrive; return (rc, stamped lines)."""
    t0 = time.time()
    lines = []
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        try:
            for line in proc.stdout:
                now = time.time() - t0
                lines.append((now, line.rstrip("\n")))
                f.write(f"[t={now:.3f}] {line}")
                f.flush()
                if now > timeout_s:
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            rc = proc.wait()
    return rc, lines


def parse_steps(lines: list[tuple[float, str]]) -> list[tuple[float, int, dict]]:
    """verl's per-step console lines (deduplicated: Ray may echo a worker line twice)."""
    steps, seen = [], set()
    for t, line in lines:
        m = STEP_RE.search(line)
        if not m or "train/global_tokens" not in line or int(m.group(1)) in seen:
            continue
        seen.add(int(m.group(1)))
        steps.append((t, int(m.group(1)), {k: float(v) for k, v in KV_RE.findall(m.group(2))}))
    return steps


def summarize(steps, skip: int, gpus: int, flops_per_token: float) -> dict:
    if len(steps) < skip + 2:
        return {"error": f"only {len(steps)} steps logged"}
    steady = steps[skip:]
    tokens = sum(kv["train/global_tokens"] for _, _, kv in steady[1:])
    seconds = steady[-1][0] - steady[0][0]
    tps_gpu = tokens / seconds / gpus
    peak = max(kv.get("perf/max_memory_allocated_gb", 0.0) for _, _, kv in steps)
    verl_mfu = [kv["train/mfu"] for _, _, kv in steady if "train/mfu" in kv]
    return {"steps_logged": len(steps), "steady_steps": len(steady) - 1, "s_per_step": seconds / (len(steady) - 1),
            "tokens_per_s_per_gpu": tps_gpu, "mfu_torchtitan": tps_gpu * flops_per_token / PEAK_FLOPS,
            "verl_mfu_mean": sum(verl_mfu) / len(verl_mfu) if verl_mfu else None,
            "peak_allocated_gb": peak, "time_to_first_step_s": steps[0][0],
            "final_loss": steps[-1][2].get("train/loss")}


def flops_per_token(model_dir: str, seq_len: float) -> float:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    layers, heads, hidden = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    inter, vocab, kv = cfg["intermediate_size"], cfg["vocab_size"], cfg["num_key_value_heads"]
    head_dim = hidden // heads
    per_layer = hidden * (heads * head_dim) * 2 + hidden * (kv * head_dim) * 2 + 3 * hidden * inter + 2 * hidden
    params = vocab * hidden + layers * per_layer + hidden  # tied embeddings, as Llama-3.2-1B
    return 6 * params + 12 * layers * heads * head_dim * seq_len


def base_overrides(args) -> list[str]:
    data = Path(args.data)
    return ["sft.model.path=" + args.model, f"sft.data.train_files=[{data / 'train.parquet'}]", "sft.data.val_files=[]",
            f"sft.trainer.total_steps={args.steps}", "sft.trainer.total_epochs=1", "sft.trainer.save_freq=-1",
            "sft.trainer.test_freq=-1", "sft.trainer.resume_mode=disable", "sft.trainer.save_checkpoint=false",
            f"sft.workers.num_workers={args.gpus}", f"sft.workers.gpus_per_worker={0 if args.cpu_check else 1}",
            f"sft.workers.cpus_per_worker={1 if args.cpu_check else 4}"] + (
            ["sft.data.global_batch_size=8", "sft.data.micro_batch_size_per_worker=2", "sft.data.max_length=512"]
            if args.cpu_check else [])


def run_variant(name: str, extra: list[str], args, env: dict, out: Path) -> dict:
    from bridge_ray import sft

    overrides = base_overrides(args) + extra
    result = {}
    # (b) torchrun with exactly bridge-ray's verl overrides.
    out_b = out / f"run-{name}-torchrun"
    cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(output_dir=str(out_b)), overrides)
    verl_args = sft.to_verl_overrides(cfg)
    env_b = dict(env, **sft.trainer.worker_env(cfg)) if args.cpu_check else env
    rc, lines = stamped_run([exe("torchrun"), "--standalone", f"--nproc_per_node={args.gpus}", "-m",
                             "verl.trainer.sft_trainer", *verl_args], out / f"{name}-torchrun.log", env_b, args.timeout)
    result["torchrun"] = dict(summarize(parse_steps(lines), args.skip, args.gpus, args.fpt), rc=rc)
    # (a) bridge-ray: the recipe through the Job client on a local cluster.
    out_a = out / f"run-{name}-bridge"
    rc, lines = stamped_run([exe("bridge-ray"), "submit", "recipes/sft_gsm8k.py", "--name", "bench", "--follow",
                             "--", "preset=sft_gsm8k_llama1b", *overrides, f"sft.trainer.output_dir={out_a}"],
                            out / f"{name}-bridge.log", env, args.timeout)
    result["bridge_ray"] = dict(summarize(parse_steps(lines), args.skip, args.gpus, args.fpt), rc=rc)
    a, b = result["bridge_ray"].get("tokens_per_s_per_gpu"), result["torchrun"].get("tokens_per_s_per_gpu")
    result["ratio_bridge_over_torchrun"] = a / b if a and b else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="HF model dir (default: build tiny assets with --cpu-check)")
    parser.add_argument("--data", help="dir with train.parquet")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the steady state")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per side per variant")
    parser.add_argument("--variants", default="seed", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--seq-len", type=float, default=174.0, help="mean tokens per sample, for the MFU formula")
    parser.add_argument("--cpu-check", action="store_true", help="tiny model on CPU: checks the script, not speed")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu_check and not args.model:
        from bridge_ray.assets import build_demo_assets

        assets = build_demo_assets(out / "assets", shape="tiny", num_train=256)
        args.model, args.data = str(assets["model"]), str(assets["train"].parent)
    args.fpt = flops_per_token(args.model, args.seq_len)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    up = [exe("bridge-ray"), "up", "--name", "bench"] + ([] if args.cpu_check else [f"--num-gpus={args.gpus}"])
    subprocess.run(up, env=env, check=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpus": args.gpus, "steps": args.steps, "skip": args.skip,
              "flops_per_token": args.fpt, "variants": {}}
    try:
        for name in args.variants.split(","):
            report["variants"][name] = run_variant(name, VARIANTS[name], args, env, out)
            (out / "sft_throughput.json").write_text(json.dumps(report, indent=2))
    finally:
        subprocess.run([exe("bridge-ray"), "down", "--name", "bench"], env=env)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

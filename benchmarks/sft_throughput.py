"""SFT throughput: bridge-ray's TorchTrainer path vs ``torchrun`` verl, by the processes' own clocks.

For each variant (a preset plus dotted ``sft.*`` overrides, see ``VARIANTS``; ``seed`` is the
seed's run, ``default`` the fast preset as it resolves on this host), each pair runs both sides
back to back, the order alternating from pair to pair:
  bridge:   ``bridge-ray submit recipes/sft_gsm8k.py --follow`` on a local ``bridge-ray up`` cluster
            (Ray Job -> TorchTrainer -> verl's SFTTrainer); per-step times are the worker's own
            (rank 0's ``steps.jsonl``: ``time.perf_counter`` and ``time.process_time`` between
            consecutive steps);
  torchrun: ``torchrun --standalone -m`` this file's ``--timed-worker`` mode, which is
            ``python -m verl.trainer.sft_trainer`` (same Hydra compose, same ``SFTTrainer.fit``)
            plus the same two stamps per step on rank 0, with exactly the verl overrides
            bridge-ray wrote to its run's ``config.json`` (checked equal, paths aside).
Steady state = the steps after ``--skip``: tokens / (t_last - t_skip). Peak memory is verl's
``perf/max_memory_allocated_gb``. MFU follows torchtitan: FLOPs/token = 6·N + 12·L·H·Q·T, N the
parameters (tied embeddings counted once), T the mean sample length measured in the run, over
the GPU's dense bf16 peak (``--peak-tflops``, default 989.4 for H100/H200 SXM; none on CPU).

Each run's log, steps and summary land under ``OUT/<variant>/pair-<k>-<side>/``; ``OUT/summary.json``
is rebuilt from every run folder found, so pairs can run in separate commands (each under the GPU
tool's 10 minutes) and be summarised together:

    python benchmarks/sft_throughput.py --out O --model M --data D --variants seed,default --pairs 0-2
    python benchmarks/sft_throughput.py --out O --variants seed --pairs 3 ...   # more pairs, later
    python benchmarks/sft_throughput.py --out O --summary                      # medians, ratios
    python benchmarks/sft_throughput.py --out O --cpu --pairs 0-2               # 2 CPU ranks, tiny model
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _tools
from _tools import exe

REPO = Path(__file__).resolve().parents[1]
SIDES = ("bridge", "torchrun")
ALL_SIDES = ("bridge", "torchrun", "base")
# variant -> (preset, dotted overrides). "seed" is the seed's run; "default" the preset as it
# resolves on the host; the others try one change each on top of the default.
VARIANTS = {
    "seed": ("sft_gsm8k_llama1b_seed", []),
    "default": ("sft_gsm8k_llama1b", []),
    "mb32_nockpt": ("sft_gsm8k_llama1b_seed", ["sft.data.micro_batch_size_per_worker=32",
                                               "sft.model.gradient_checkpointing=false"]),
    "sdpa_packed": ("sft_gsm8k_llama1b", ["sft.model.attn_implementation=sdpa"]),
    "fused": ("sft_gsm8k_llama1b", ["sft.model.kernels=fused"]),
    "liger": ("sft_gsm8k_llama1b", ["sft.model.kernels=liger"]),
    "liger_fused": ("sft_gsm8k_llama1b", ["sft.model.kernels=liger+fused"]),
    "tokens32k": ("sft_gsm8k_llama1b", ["sft.data.max_tokens_per_worker=32768"]),
    "loader2": ("sft_gsm8k_llama1b", ["sft.data.num_loader_workers=2"]),
    "gbs256": ("sft_gsm8k_llama1b", ["sft.data.global_batch_size=256", "sft.data.max_tokens_per_worker=32768"]),
    "adamw_fused": ("sft_gsm8k_llama1b", ["sft.optim.fused=true"]),
    # liger's RMSNorm/SwiGLU/RoPE beside verl's fused log-prob, with torch's fused AdamW: the two largest
    # non-matmul shares of the H100 profile (2026-12-06).
    "liger_fused_adamw": ("sft_gsm8k_llama1b", ["sft.model.kernels=liger+fused", "sft.optim.fused=true"]),
    # verl's engine.use_torch_compile: in verl 0.9.1's FSDP engine it compiles the entropy function only (SFT
    # computes none), not the model: expected to change nothing; kept to show it.
    "compile": ("sft_gsm8k_llama1b", ["sft.workers.use_torch_compile=true"]),
    # the model's decoder layers through torch.compile (bridge-ray's side only: torchrun's verl has no such key);
    # the host gap is 25 % of a default step (H100 profile, 2026-12-06)
    "compile_layers": ("sft_gsm8k_llama1b", ["sft.model.compile_layers=true"]),
    "fsdp1": ("sft_gsm8k_llama1b", ["sft.workers.strategy=fsdp"]),
}
# On CPU (--cpu): the tiny preset as it is (padded), and packed with sdpa.
CPU_VARIANTS = {
    "default": ("sft_tiny_cpu", []),
    "packed": ("sft_tiny_cpu", ["sft.model.use_remove_padding=true", "sft.data.max_tokens_per_worker=auto"]),
}


# ---- the torchrun side's worker: verl's own entry point plus a per-step clock ------------------

def timed_worker(steps_file: str, overrides: list[str]) -> None:
    """``verl.trainer.sft_trainer.main`` with one timed row per step (rank 0), nothing else."""
    import torch.distributed
    from hydra import compose, initialize_config_module
    from verl.trainer.sft_trainer import SFTTrainer
    from verl.utils import tensordict_utils as tu
    from verl.utils.device import auto_set_device
    from verl.utils.distributed import destroy_global_process_group, initialize_global_process_group

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(config_name="sft_trainer_engine", overrides=overrides)
    auto_set_device(config)
    initialize_global_process_group()
    trainer = SFTTrainer(config=config)
    if torch.distributed.get_rank() == 0:
        client, train_batch, out = trainer.training_client, trainer.training_client.train_batch, open(steps_file, "a")
        from bridge_ray.sft.worker import StepClock  # the same clocks bridge-ray's step rows use

        clock, last = StepClock(), [trainer.resume_global_step]
        # BENCH_PROFILE=A-B: torch.profiler over steps A..B on rank 0; tables beside the steps file.
        span = os.environ.get("BENCH_PROFILE")
        first, final = (int(x) for x in span.split("-")) if span else (0, -1)
        prof = [None]

        def timed_train_batch(data, *args, **kwargs):
            entered = time.perf_counter()
            if last[0] + 1 == first:
                prof[0] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                             torch.profiler.ProfilerActivity.CUDA])
                prof[0].start()
            output = train_batch(data, *args, **kwargs)
            lap, metrics = clock.lap(), tu.get(output, "metrics")
            in_train_batch_s = time.perf_counter() - entered
            last[0] += 1
            if prof[0] is not None and last[0] == final:
                prof[0].stop()
                folder = Path(steps_file).parent
                averages = prof[0].key_averages()
                for key in ("self_cuda_time_total", "self_cpu_time_total", "cpu_time_total"):
                    (folder / f"profile_{key}.txt").write_text(averages.table(sort_by=key, row_limit=60))
                prof[0] = None
            out.write(json.dumps({"step": last[0], "tokens": int(sum(tu.get(data, "global_token_num"))),
                                  "samples": len(tu.get(data, "global_token_num")), **lap,
                                  "in_train_batch_s": in_train_batch_s, "loss": float(metrics["loss"]),
                                  "peak_memory_gb": metrics.get("perf/max_memory_allocated_gb")}) + "\n")
            out.flush()
            return output

        client.train_batch = timed_train_batch
    trainer.fit()
    destroy_global_process_group()


# ---- one run of one side ----------------------------------------------------------------------

def run_logged(cmd: list[str], log: Path, env: dict, timeout_s: float, cwd: Path = REPO) -> int:
    """``_tools.run_logged`` from this checkout, a fresh log."""
    return _tools.run_logged(cmd, log, env, timeout_s, cwd)


def variant_preset(args, variant: str) -> tuple[str, list[str]]:
    return (CPU_VARIANTS if args.cpu else VARIANTS)[variant]


def sft_config(args, variant: str, run_dir: Path):
    """The run's resolved SFTConfig, as the bridge side builds it from the same preset and overrides."""
    from bridge_ray import sft

    preset, _ = variant_preset(args, variant)
    if preset == "sft_tiny_cpu":
        cfg = sft.sft_tiny_cpu(args.model, str(Path(args.data) / "train.parquet"), None, str(run_dir))
    else:
        cfg = sft.PRESETS[preset](output_dir=str(run_dir))
    return sft.validate(sft.resolve(sft.apply_overrides(cfg, overrides(args, variant, run_dir)), args.hardware))


def overrides(args, variant: str, run_dir: Path) -> list[str]:
    """The dotted ``sft.*`` overrides both sides start from (on top of the variant's preset)."""
    data = Path(args.data)
    base = [f"sft.model.path={args.model}", f"sft.data.train_files=[{data / 'train.parquet'}]", "sft.data.val_files=[]",
            f"sft.trainer.total_steps={args.steps}", "sft.trainer.save_freq=-1",
            "sft.trainer.test_freq=-1", "sft.trainer.resume_mode=disable", "sft.trainer.save_checkpoint=false",
            f"sft.trainer.output_dir={run_dir}"]
    return base + ([] if args.cpu else [f"sft.workers.num_workers={args.gpus}"]) + variant_preset(args, variant)[1]


def probe_host() -> dict | None:
    """bridge-ray's hardware probe, in a child process (no CUDA context stays in this one)."""
    code = ("import dataclasses, json; from bridge_ray.platforms.hardware import probe; "
            "print(json.dumps(dataclasses.asdict(probe())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_side(args, variant: str, pair: int, side: str, env: dict) -> dict:
    """One run; returns its summary (also written to ``summary.json`` in its folder)."""
    run_dir = args.out / variant / f"pair-{pair}-{side}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    steps_file = run_dir / ("torchrun_steps.jsonl" if side == "torchrun" else "steps.jsonl")
    t0 = time.time()
    if side in ("bridge", "base"):
        profile = ["--env", f"BRIDGE_RAY_PROFILE_STEPS={args.profile}"] if args.profile else []
        cmd = [exe("bridge-ray"), "submit", "recipes/sft_gsm8k.py", "--name", "bench", "--follow", *profile, "--",
               f"preset={variant_preset(args, variant)[0]}", *overrides(args, variant, run_dir)]
        rc = run_logged(cmd, run_dir / "run.log", env, args.timeout, cwd=REPO if side == "bridge" else args.base_repo)
    else:
        import pyarrow.parquet as pq

        from bridge_ray import sft
        from bridge_ray.sft.trainer import epochs_for_steps, worker_env

        # the epochs bridge-ray's driver gives verl for total_steps (from the train rows), so the overrides match
        cfg = sft_config(args, variant, run_dir)
        cfg = epochs_for_steps(cfg, sum(pq.ParquetFile(f).metadata.num_rows for f in cfg.data.train_files))
        cmd = [exe("torchrun"), "--standalone", f"--nproc_per_node={cfg.workers.num_workers}", __file__,
               "--timed-worker", str(steps_file), "--", *sft.to_verl_overrides(cfg)]
        (run_dir / "verl_overrides.json").write_text(json.dumps(cmd[cmd.index("--") + 1:], indent=1))
        rc = run_logged(cmd, run_dir / "run.log", dict(env, **worker_env(cfg)), args.timeout)
    return write_run_summary(run_dir, args, dict(variant=variant, pair=pair, side=side, rc=rc, wall_s=time.time() - t0))


def write_run_summary(run_dir: Path, args, run: dict) -> dict:
    """Summarise one run folder's step rows into its ``summary.json`` (``run``: variant, pair, side, rc, ...)."""
    steps_file = run_dir / ("torchrun_steps.jsonl" if run["side"] == "torchrun" else "steps.jsonl")
    rows = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    summary = dict(summarize(rows, args), **run)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(rows: list[dict], args) -> dict:
    """Steady-state figures from per-step rows (``step``, ``tokens``, ``step_time_s``, ...)."""
    rows = sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])
    steady = [row for row in rows[args.skip:] if not row.get("profiled")]
    if len(steady) < 2:
        return {"error": f"only {len(rows)} steps recorded", "steps": len(rows)}
    tokens = sum(row["tokens"] for row in steady[1:])
    seconds = sum(row["step_time_s"] for row in steady[1:])
    gpus = 2 if args.cpu else args.gpus
    samples = sum(row.get("samples") or 0 for row in steady[1:])
    seq_len = tokens / samples if samples else None
    tps = tokens / seconds / gpus
    peaks = [row["peak_memory_gb"] for row in rows if row.get("peak_memory_gb") is not None]
    mfu = (tps * flops_per_token(args.model, seq_len) / (args.peak_tflops * 1e12)
           if args.peak_tflops and seq_len else None)
    # Per-step rates' median: robust to a noisy neighbour stalling a few steps (shared CPU machines).
    step_rates = [row["tokens"] / row["step_time_s"] / gpus for row in steady[1:]]
    # Rank 0's process CPU seconds a step (all its threads): what the step costs the host, whatever
    # share of the CPUs the process got.
    cpu = [row["cpu_time_s"] for row in steady[1:] if row.get("cpu_time_s") is not None]
    # The training thread alone, and how often it was switched out (involuntary: a core was taken from it).
    thread = [row["thread_cpu_time_s"] for row in steady[1:] if row.get("thread_cpu_time_s") is not None]
    switches = [row["thread_switches"] for row in steady[1:] if row.get("thread_switches")]
    return {"steps": len(rows), "steady_steps": len(steady) - 1, "s_per_step": seconds / (len(steady) - 1),
            "tokens_per_s_per_gpu": tps, "tokens_per_s_per_gpu_median_step": statistics.median(step_rates),
            "cpu_s_per_step_median": statistics.median(cpu) if cpu else None,
            "thread_cpu_s_per_step_median": statistics.median(thread) if thread else None,
            "involuntary_switches_per_step_median":
                statistics.median([s["involuntary"] for s in switches]) if switches else None,
            "voluntary_switches_per_step_median":
                statistics.median([s["voluntary"] for s in switches]) if switches else None,
            "mean_sample_tokens": seq_len, "mfu_torchtitan": mfu,
            "peak_memory_gb": max(peaks) if peaks else None,
            "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"], "losses": [row["loss"] for row in rows]}


def flops_per_token(model_dir: str, seq_len: float) -> float:
    """torchtitan's FLOPs per token for a Llama config: 6·N + 12·L·H·Q·T."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    layers, heads, hidden = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    inter, vocab, kv = cfg["intermediate_size"], cfg["vocab_size"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    per_layer = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + 3 * hidden * inter + 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)
    params = embeddings + layers * per_layer + hidden
    return 6 * params + 12 * layers * heads * head_dim * seq_len


def overrides_match(bridge_dir: Path, torchrun_dir: Path) -> bool | None:
    """Whether both sides handed verl the same overrides (run-folder paths aside)."""
    config = bridge_dir / "config.json"
    theirs = torchrun_dir / "verl_overrides.json"
    if not config.exists() or not theirs.exists():
        return None
    strip = lambda items, d: [item.replace(str(d), "<run>") for item in items]  # noqa: E731
    return (strip(json.loads(config.read_text())["verl_overrides"], bridge_dir)
            == strip(json.loads(theirs.read_text()), torchrun_dir))


# ---- all runs -> one summary ------------------------------------------------------------------

def build_summary(out: Path) -> dict:
    """Medians per variant and side, per-pair ratios, loss agreement, from every run folder under ``out``."""
    hw = out / "hardware.json"
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(),
              "hardware": json.loads(hw.read_text()) if hw.exists() else None, "variants": {}}
    for variant_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name in {**VARIANTS, **CPU_VARIANTS}):
        runs = [json.loads(p.read_text()) for p in sorted(variant_dir.glob("pair-*/summary.json"))]
        pairs = {}
        for run in runs:
            pairs.setdefault(run["pair"], {})[run["side"]] = run
        ratios, median_ratios, same_overrides = [], [], []
        base_ratios = []
        for k, sides in sorted(pairs.items()):
            a, b, c = (sides.get(s, {}).get("tokens_per_s_per_gpu") for s in ALL_SIDES)
            if a and b:
                ratios.append(a / b)
                median_ratios.append(sides["bridge"]["tokens_per_s_per_gpu_median_step"]
                                     / sides["torchrun"]["tokens_per_s_per_gpu_median_step"])
            if c and b:
                base_ratios.append(c / b)
            same_overrides.append(overrides_match(variant_dir / f"pair-{k}-bridge", variant_dir / f"pair-{k}-torchrun"))
        entry = {"pairs": len(pairs), "ratio_bridge_over_torchrun_per_pair": ratios,
                 "ratio_median": statistics.median(ratios) if ratios else None,
                 "ratio_of_median_steps_per_pair": median_ratios,
                 "overrides_identical": same_overrides}
        if base_ratios:
            entry["ratio_base_over_torchrun_per_pair"] = base_ratios
            entry["ratio_base_median"] = statistics.median(base_ratios)
        for side in [s for s in ALL_SIDES if any(r["side"] == s for r in runs)]:
            ok = [r for r in runs if r["side"] == side and "tokens_per_s_per_gpu" in r]
            entry[side] = {key: statistics.median([r[key] for r in ok]) if ok and ok[0].get(key) is not None else None
                           for key in ("tokens_per_s_per_gpu", "tokens_per_s_per_gpu_median_step", "s_per_step",
                                       "cpu_s_per_step_median", "thread_cpu_s_per_step_median",
                                       "involuntary_switches_per_step_median", "voluntary_switches_per_step_median",
                                       "mfu_torchtitan", "peak_memory_gb",
                                       "mean_sample_tokens", "final_loss")}
            entry[side]["runs"] = len(ok)
        report["variants"][variant_dir.name] = entry
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"
    except ImportError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def pair_range(text: str) -> list[int]:
    """``"0-2"`` -> [0, 1, 2]; ``"3"`` -> [3]; ``"0,4"`` -> [0, 4]."""
    pairs = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        pairs += list(range(int(lo), int(hi or lo) + 1))
    return pairs


def main() -> None:
    if "--timed-worker" in sys.argv:
        steps_file, rest = sys.argv[sys.argv.index("--timed-worker") + 1], sys.argv[sys.argv.index("--") + 1:]
        return timed_worker(steps_file, rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=lambda p: Path(p).absolute())
    parser.add_argument("--model", help="HF model dir (with --cpu: default tiny demo assets under OUT)")
    parser.add_argument("--data", help="dir with train.parquet")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="2 CPU ranks over gloo, tiny model")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the steady state")
    parser.add_argument("--pairs", default="0-2", help="pair indices to run, e.g. 0-2 or 3 (order alternates by index)")
    parser.add_argument("--variants", default="seed,default")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="bridge,torchrun (the default); add 'base' for bridge-ray from --base-repo too")
    parser.add_argument("--base-repo", type=Path, help="another bridge-ray checkout (e.g. before a change) for 'base'")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per run before its process group is killed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per GPU (default 989.4 on GPUs)")
    parser.add_argument("--profile", metavar="STEPS", help="bridge-ray sides: profile these steps (e.g. 8-9) into "
                        "RUN/profile/ (bridge_ray.sft.profiling); they are left out of the steady state")
    parser.add_argument("--summary", action="store_true", help="only rebuild OUT/summary.json from the runs found")
    parser.add_argument("--recompute", action="store_true", help="with --summary: re-summarise each run's step rows")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.peak_tflops = args.peak_tflops or (None if args.cpu else 989.4)
    if args.summary:
        if args.recompute:  # with the same --skip/--cpu/--gpus/--model/--peak-tflops as the runs
            for path in args.out.glob("*/pair-*/summary.json"):
                old = json.loads(path.read_text())
                write_run_summary(path.parent, args, {k: old[k] for k in ("variant", "pair", "side", "rc", "wall_s")})
        return print(json.dumps(build_summary(args.out), indent=2))
    from bridge_ray import sft

    args.hardware = sft.Hardware(**probe_host())
    (args.out / "hardware.json").write_text(json.dumps(dataclasses.asdict(args.hardware), indent=2))
    if args.cpu and not args.model:
        from bridge_ray.models.assets import build_demo_assets

        assets = build_demo_assets(args.out / "assets", shape="tiny", num_train=1024, num_val=8)
        args.model, args.data = str(assets["model"]), str(assets["train"].parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run([exe("bridge-ray"), "down", "--name", "bench", "--force"], env=env)  # one a killed command left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: kill the run, stop the cluster
    up = [exe("bridge-ray"), "up", "--name", "bench"] + (["--num-cpus=2"] if args.cpu else [f"--num-gpus={args.gpus}"])
    for attempt in range(3):  # `ray start` can time out on an overloaded machine
        if subprocess.run(up, env=env).returncode == 0:
            break
        subprocess.run([exe("bridge-ray"), "down", "--name", "bench", "--force"], env=env)
    else:
        sys.exit("bridge-ray up failed 3 times")
    try:
        for pair in pair_range(args.pairs):
            for variant in args.variants.split(","):
                order = args.sides.split(",")
                for side in order if pair % 2 == 0 else order[::-1]:
                    result = run_side(args, variant, pair, side, env)
                    print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
    finally:
        subprocess.run([exe("bridge-ray"), "down", "--name", "bench", "--force"], env=env)
    print(json.dumps(build_summary(args.out), indent=2))


if __name__ == "__main__":
    main()

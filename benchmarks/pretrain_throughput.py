"""Pretraining throughput: bridge-ray's TorchTrainer path vs the same verl engine under ``torchrun``.

The 1B shape (Llama-3.2-1B's layers, the run's 32k vocabulary), sequence 2048, bf16, one preset
(``pretrain_1b``) plus the overrides below; each side is one command that fits a 10-minute GPU call:

  bridge:   ``bridge-ray up`` + ``bridge-ray submit recipes/pretrain.py --follow -- preset=pretrain_1b ...``
            + ``bridge-ray down`` (Ray Job -> TorchTrainer -> verl's SFTTrainer on the packed dataset);
            per-step times are rank 0's own (``steps.jsonl``, ``time.perf_counter`` between steps).
  torchrun: ``torchrun --standalone`` this file's ``--timed-worker`` mode: the same Hydra compose and
            ``SFTTrainer.fit`` as ``python -m verl.trainer.sft_trainer``, with exactly the verl overrides
            bridge-ray wrote to its run's ``config.json`` (run-folder paths swapped), plus one
            ``perf_counter`` row per step on rank 0.

Both sides read the same token shards and start from the same init model, made once by ``prepare``
(offline text from a generated 60k-word lexicon, so sentencepiece fills a 32k vocabulary; a 32k BPE
tokenizer; token shards; the random-init 1B model) and hard-linked into each run folder.
Steady state: the steps after ``--skip``, tokens / sum of step times. MFU: 6·N + 12·L·H·Q·T FLOPs
per token (tied embeddings counted once; ``bridge_ray.pretrain.model.flops_per_token``) over the
GPU's dense bf16 peak (989.4 TFLOP/s for H100/H200 SXM).

    python benchmarks/pretrain_throughput.py --out O prepare                  # ~3-5 min, once per host
    python benchmarks/pretrain_throughput.py --out O run --side bridge --pair 0
    python benchmarks/pretrain_throughput.py --out O run --side torchrun --pair 0
    python benchmarks/pretrain_throughput.py --out O run --side torchrun --pair 1   # alternate the order
    python benchmarks/pretrain_throughput.py --out O run --side bridge --pair 1
    python benchmarks/pretrain_throughput.py --out O summary                  # O/summary.json + a table
    python benchmarks/pretrain_throughput.py --out O2 --set pretrain.optim.fused=true run ...  # a variant (cp -al O/assets O2/)
    python benchmarks/pretrain_throughput.py --out O3 --profile 8-9 run --side bridge       # where a step's time goes
    python benchmarks/pretrain_throughput.py --out O --cpu prepare|run|summary  # tiny shape, 2 CPU ranks: logic only
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _tools
from _tools import exe

REPO = Path(__file__).resolve().parents[1]
SIDES = ("bridge", "torchrun")
GPU = {"shape": "1b", "seq_len": 2048, "vocab": 32000, "docs": 20000, "steps": 20, "skip": 5,
       "overrides": ["pretrain.data.global_batch_size=64", "pretrain.data.micro_batch_size_per_worker=8",
                     "pretrain.optim.warmup_steps=5"]}
CPU = {"shape": "tiny", "seq_len": 128, "vocab": 400, "docs": 1500, "steps": 8, "skip": 2,
       "overrides": ["pretrain.optim.warmup_steps=2"]}


# ---- prepare: text, tokenizer, token shards, init model (no Ray) --------------------------------

def lexicon_text(out: Path, num_docs: int, seed: int = 0) -> list[Path]:
    """Documents of random words from a 60k-word generated lexicon (Zipf-like), two jsonl shards."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "an", "er")]
    words = list({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(80000)})[:60000]
    cumulative = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(words))))
    out.mkdir(parents=True, exist_ok=True)
    shards = [out / f"text-{i}.jsonl" for i in range(2)]
    with open(shards[0], "w") as a, open(shards[1], "w") as b:
        for i in range(num_docs):
            sentences = [" ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(6, 20))).capitalize() + "."
                         for _ in range(rng.randint(10, 30))]
            (a if i % 2 else b).write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return shards


def prepare(args, spec: dict) -> None:
    from bridge_ray import tokenizer
    from bridge_ray.pretrain.model import build_init_model
    from bridge_ray.pretrain.tokens import tokenize_file

    assets = args.out / "assets"
    t0 = time.time()
    text = lexicon_text(assets / "text", spec["docs"])
    print(f"text: {sum(p.stat().st_size for p in text) / 1e6:.0f} MB ({time.time() - t0:.0f} s)", flush=True)
    tok = tokenizer.train_here(tokenizer.TokenizerConfig(
        files=tuple(map(str, text)), model_type="bpe", vocab_size=spec["vocab"], input_sentence_size=1_000_000,
        output_dir=str(assets / "tokenizer")), threads=os.cpu_count())
    print(f"tokenizer: {tok.vocab_size} pieces ({time.time() - t0:.0f} s)", flush=True)
    shards = [tokenize_file(p, tok.output_dir, assets / "tokens") for p in text]
    print(f"tokens: {sum(s.num_tokens for s in shards):,} ({time.time() - t0:.0f} s)", flush=True)
    build_init_model(assets / "init", spec["shape"], tok.output_dir, spec["seq_len"])
    (assets / "prepared.json").write_text(json.dumps({"text": list(map(str, text)), "tokenizer": str(tok.output_dir),
                                                      "spec": spec}, indent=2))
    print(f"init model: {assets / 'init'} ({time.time() - t0:.0f} s)", flush=True)


def link_assets(assets: Path, run_dir: Path) -> None:
    """Hard-link the prepared token shards and init model into a run folder (bridge-ray then reuses them)."""
    for name in ("tokens", "init"):
        shutil.copytree(assets / name, run_dir / name, copy_function=os.link, dirs_exist_ok=True)


# ---- one side ---------------------------------------------------------------------------------

def timed_worker(steps_file: str, overrides: list[str]) -> None:
    """``verl.trainer.sft_trainer`` (compose, SFTTrainer, fit) plus a ``perf_counter`` row per step on rank 0."""
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
        last = [time.perf_counter(), trainer.resume_global_step]

        def timed_train_batch(data, *a, **kw):
            output = train_batch(data, *a, **kw)
            now, metrics = time.perf_counter(), tu.get(output, "metrics")
            last[1] += 1
            out.write(json.dumps({"step": last[1], "tokens": int(sum(tu.get(data, "global_token_num"))),
                                  "step_time_s": now - last[0], "loss": float(metrics["loss"]),
                                  "peak_memory_gb": metrics.get("perf/max_memory_allocated_gb")}) + "\n")
            out.flush()
            last[0] = now
            return output

        client.train_batch = timed_train_batch
    trainer.fit()
    destroy_global_process_group()


def run_logged(cmd: list[str], log: Path, env: dict, timeout_s: float) -> int:
    """``_tools.run_logged`` from this checkout, appending to ``log`` (one log per side: up, submit, down)."""
    return _tools.run_logged(cmd, log, env, timeout_s, REPO, mode="a")


def recipe_args(args, spec: dict, prepared: dict, run_dir: Path) -> list[str]:
    return ["preset=pretrain_tiny_cpu" if args.cpu else "preset=pretrain_1b",
            f"pretrain.model.tokenizer_path={prepared['tokenizer']}",
            f"pretrain.data.train_files=[{','.join(prepared['text'])}]", "pretrain.data.val_files=[]",
            f"pretrain.data.seq_len={spec['seq_len']}", f"pretrain.model.shape={spec['shape']}",
            f"pretrain.trainer.total_steps={args.steps or spec['steps']}", "pretrain.trainer.save_freq=-1",
            "pretrain.trainer.test_freq=-1", "pretrain.trainer.save_checkpoint=false",
            "pretrain.trainer.resume_mode=disable", f"pretrain.trainer.output_dir={run_dir}",
            *([] if args.cpu else [f"pretrain.workers.num_workers={args.gpus}"]), *spec["overrides"], *args.set]


def run_side(args, spec: dict) -> dict:
    prepared = json.loads((args.out / "assets" / "prepared.json").read_text())
    run_dir = args.out / f"pair-{args.pair}-{args.side}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    link_assets(args.out / "assets", run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", BRIDGE_RAY_HOME=str(args.out / "home"))
    log, t0 = run_dir / "run.log", time.time()
    if args.side == "bridge":
        run_logged([exe("bridge-ray"), "up", "--name", "bench", *([] if args.cpu else [f"--num-gpus={args.gpus}"])],
                   log, env, 120)
        try:
            profile = ["--env", f"BRIDGE_RAY_PROFILE_STEPS={args.profile}"] if args.profile else []
            rc = run_logged([exe("bridge-ray"), "submit", "recipes/pretrain.py", "--name", "bench", "--follow", *profile, "--",
                             *recipe_args(args, spec, prepared, run_dir)], log, env, args.timeout)
        finally:
            run_logged([exe("bridge-ray"), "down", "--name", "bench", "--force"], log, env, 120)
        steps_file = run_dir / "steps.jsonl"
    else:
        overrides = torchrun_overrides(args, spec, prepared, run_dir, env)
        steps_file = run_dir / "torchrun_steps.jsonl"
        from bridge_ray.platforms import cpu_env

        rc = run_logged([exe("torchrun"), "--standalone", f"--nproc_per_node={2 if args.cpu else args.gpus}", __file__,
                         "--timed-worker", str(steps_file), "--", *overrides],
                        log, dict(env, **(cpu_env() if args.cpu else {})), args.timeout)
    rows = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    summary = dict(summarize(rows, args, spec, prepared), side=args.side, pair=args.pair, rc=rc, wall_s=time.time() - t0)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return summary


def torchrun_overrides(args, spec: dict, prepared: dict, run_dir: Path, env: dict) -> list[str]:
    """bridge-ray's verl overrides for this run (what its dry run composes), with this run's folder."""
    out = subprocess.run([sys.executable, "recipes/pretrain.py", "--dry-run", *recipe_args(args, spec, prepared, run_dir)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    overrides = json.loads(out.stdout[out.stdout.index("{"):])["verl_overrides"]
    (run_dir / "verl_overrides.json").write_text(json.dumps(overrides, indent=1))
    return overrides


def summarize(rows: list[dict], args, spec: dict, prepared: dict) -> dict:
    from bridge_ray.pretrain.model import flops_per_token

    rows = sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])
    steady = [row for row in rows[args.skip if args.skip is not None else spec["skip"]:] if not row.get("profiled")]
    if len(steady) < 2:
        return {"error": f"only {len(rows)} steps recorded", "steps": len(rows)}
    tokens, seconds = sum(r["tokens"] for r in steady), sum(r["step_time_s"] for r in steady)
    workers = 2 if args.cpu else args.gpus
    tps = tokens / seconds / workers
    model = json.loads((args.out / "assets" / "init" / "config.json").read_text())
    peaks = [r["peak_memory_gb"] for r in rows if r.get("peak_memory_gb") is not None]
    return {"steps": len(rows), "steady_steps": len(steady), "s_per_step": seconds / len(steady),
            "tokens_per_s_per_gpu": tps, "mfu": None if args.cpu else tps * flops_per_token(model, spec["seq_len"]) / 989.4e12,
            "peak_memory_gb": max(peaks) if peaks else None, "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"]}


def build_summary(args) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(args.out.glob("pair-*/summary.json"))]
    pairs: dict = {}
    for run in runs:
        pairs.setdefault(run["pair"], {})[run["side"]] = run
    ratios = [s["bridge"]["tokens_per_s_per_gpu"] / s["torchrun"]["tokens_per_s_per_gpu"] for s in pairs.values()
              if s.get("bridge", {}).get("tokens_per_s_per_gpu") and s.get("torchrun", {}).get("tokens_per_s_per_gpu")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
              "sides": {side: {key: statistics.median(r[side][key] for r in pairs.values() if r.get(side, {}).get(key))
                               for key in ("tokens_per_s_per_gpu", "mfu", "s_per_step", "peak_memory_gb")
                               if any(r.get(side, {}).get(key) for r in pairs.values())} for side in SIDES},
              "ratio_bridge_over_torchrun_per_pair": ratios,
              "ratio_median": statistics.median(ratios) if ratios else None, "runs": runs}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    for side, figures in report["sides"].items():
        print(f"{side:9} " + "  ".join(f"{k} {v:,.3f}" for k, v in figures.items()))
    print(f"bridge/torchrun per pair {[round(r, 3) for r in ratios]} median {report['ratio_median']}")
    return report


def main() -> None:
    if sys.argv[1:2] == ["--timed-worker"]:
        timed_worker(sys.argv[2], sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=lambda p: Path(p).absolute())
    parser.add_argument("--cpu", action="store_true", help="tiny shape on 2 CPU ranks: checks the script, not speed")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--steps", type=int, help="steps per run (default 20 on GPU, 8 on CPU)")
    parser.add_argument("--skip", type=int, help="warm-up steps left out of the steady state (default 5 / 2)")
    parser.add_argument("--timeout", type=float, default=540, help="seconds per run")
    parser.add_argument("--set", action="append", default=[], metavar="pretrain.KEY=VALUE",
                        help="one more override for both sides (repeatable), e.g. pretrain.optim.fused=true")
    parser.add_argument("--profile", metavar="STEPS", help="bridge side: profile these steps (e.g. 8-9) into "
                        "RUN/profile/ (bridge_ray.sft.profiling); they are left out of the steady state")
    parser.add_argument("stage", choices=("prepare", "run", "summary"))
    parser.add_argument("--side", choices=SIDES)
    parser.add_argument("--pair", type=int, default=0)
    args = parser.parse_args()
    spec = CPU if args.cpu else GPU
    if args.stage == "prepare":
        prepare(args, spec)
    elif args.stage == "run":
        if not args.side:
            parser.error("run needs --side bridge|torchrun")
        run_side(args, spec)
    else:
        build_summary(args)


if __name__ == "__main__":
    main()

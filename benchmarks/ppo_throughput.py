"""PPO/GRPO throughput: the same small-Llama run through bridge-ray and as plain verl ``main_ppo``.

  (a) plain:     ``python -m verl.trainer.main_ppo <overrides>`` (verl starts its own Ray)
  (b) bridge-ray: ``bridge-ray up`` + ``bridge-ray submit recipes/<algo>_gsm8k.py --follow -- ppo.*=...``
The overrides of (a) are ``ppo.to_verl_overrides(cfg)``; the ``ppo.*`` arguments of (b) turn the
recipe's preset into the same ``cfg``, and the job records the overrides it handed verl
(``<run>/config.json``), which are checked to be identical. Both runs use the same run folder
(plain first, then moved aside), so even ``trainer.default_local_dir`` matches.

Measured from verl's console lines (``step:N - timing_s/step:... - perf/throughput:...``),
stamped on arrival: steady-state step time (median of steps 2..N without those that saved a
checkpoint: step 1 warms up, step N always saves), training throughput (verl's ``perf/throughput``, tokens/s/GPU), rollout
throughput (generated tokens/s, from ``timing_per_token_ms/gen``), actor update throughput,
time to the first step, peak GPU memory (nvidia-smi); how, in ``ppo_measure.py``.

Model: ``--shape small`` (default) is a random-init Llama of hidden 512, 4 layers, head dim 64
(the shape verified with vLLM on the GPU host; the demo's ``tiny`` shape has head dim 16, which
vLLM's FlashAttention backend does not take). Settings: ``ppo.tiny_gsm8k`` (vLLM eager, no
torch.compile: both only cut startup).

    python benchmarks/ppo_throughput.py --algo grpo --mode both --out OUT      # GPU host
    python benchmarks/ppo_throughput.py --algo grpo --dry-run --out /tmp/bench  # CPU: all but the verl step
    python benchmarks/ppo_throughput.py --algo ppo --mode bridge --keep-run --steps 12 --tag ppo_resume --out OUT
    python benchmarks/ppo_throughput.py --summarize OUT             # markdown table of OUT/results.json
    python benchmarks/ppo_throughput.py --device cpu --algo ppo --mode both --out OUT   # no GPU: see below

``--device cpu``: both sides on CPU with the demo's tiny Llama and ``ppo.ppo_tiny_cpu`` /
``grpo_tiny_cpu`` settings (verl's FSDP2 over gloo, vLLM's CPU build as the rollout, bridge-ray's
CPU plugins through ``VERL_USE_EXTERNAL_MODULES`` on both sides); bridge-ray's cluster gets
``--num-cpus CPU_SLOTS`` logical CPUs, plain's own Ray ``ray_kwargs.ray_init.num_cpus`` the same.
It tells whether the launcher adds work to a step where no GPU hides the host's share.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge_ray import ppo
from bridge_ray.config import apply_overrides
from bridge_ray.platforms.env import REPLAY_POLL_MODULE
from bridge_ray.ppo.config import plugin_env, verl_plugins
from ppo_measure import (GpuMonitor, StepWatch, gpu_processes_gone, parse_steps, phases, procs_diff,  # noqa: E402
                         stamped_run, summarize)

CLUSTER = "ppo-bench"
RESULTS = "results.json"  # one entry per run, by tag
EXCLUDES = ["--exclude", ".gpu", "--exclude", ".gl"]
CPU_SLOTS = 4  # logical CPUs of either side's Ray on --device cpu (as `make demo`): verl's CPU actors need them
PRESETS = {"grpo": ppo.grpo_gsm8k_llama1b, "ppo": ppo.ppo_gsm8k_llama1b}
SMALL = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
         "intermediate_size": 1536, "head_dim": 64, "max_position_embeddings": 2048}


# ---- assets and configs ----------------------------------------------------------------------------


def build_assets(work: Path, shape: str) -> dict[str, str]:
    """Synthetic GSM8K RL parquets + a random-init Llama of ``shape`` with the demo tokenizer (cached)."""
    from bridge_ray.models.assets import build_demo_assets

    folder = work / ("assets" if shape == "small" else f"assets-{shape}")  # one folder a shape: built once each
    files = {k: str(v) for k, v in build_demo_assets(folder, shape="tiny" if shape == "small" else shape,
                                                     num_train=1024, num_val=64).items()}
    if shape != "small":
        return files
    model_dir = work / "assets" / "model-small"
    if not (model_dir / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, LlamaForCausalLM

        from bridge_ray.models.assets import llama_config

        tokenizer = AutoTokenizer.from_pretrained(files["model"])
        config = llama_config("tiny", tokenizer)
        for key, value in SMALL.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    files["model"] = str(model_dir)
    return files


def bench_config(algo: str, files: dict, run_dir: Path, steps: int, gpus: int, device: str = "gpu") -> ppo.PPOConfig:
    if device == "cpu":
        preset = ppo.ppo_tiny_cpu if algo == "ppo" else ppo.grpo_tiny_cpu
        return ppo.resolve_cpu(preset(files["model"], str(Path(files["rl_train"]).parent), str(run_dir), steps))
    cfg = ppo.tiny_gsm8k(algo, files["model"], files["rl_train"], files["rl_val"], str(run_dir), total_steps=steps)
    return ppo.resolve_gpus(cfg, 1, gpus)


def on_cpu(cfg) -> bool:
    return cfg.trainer.device == "cpu"


def _yaml(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def recipe_args(base, cfg, prefix: str = "ppo") -> list[str]:
    """Dotted overrides that turn ``base`` into ``cfg`` (every leaf that differs)."""
    args = []
    for f in dataclasses.fields(cfg):
        a, b = getattr(base, f.name), getattr(cfg, f.name)
        if dataclasses.is_dataclass(b):
            args += recipe_args(a, b, f"{prefix}.{f.name}")
        elif a != b:
            args.append(f"{prefix}.{f.name}={_yaml(b)}")
    return args


# ---- the two sides -------------------------------------------------------------------------------


def base_env(work: Path, vllm_env: bool = True) -> dict:
    """The environment both sides start from; ``vllm_env`` False leaves VLLM_USE_FLASHINFER_SAMPLER
    out, so only bridge-ray's own injection (``bridge_ray.ppo.run.worker_env``) can provide it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", VLLM_USE_FLASHINFER_SAMPLER="0", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", VLLM_NO_USAGE_STATS="1",
               BRIDGE_RAY_HOME=str(work / "home"))
    if not vllm_env:
        env.pop("VLLM_USE_FLASHINFER_SAMPLER")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("RAY_ADDRESS", None)
    return env


def plain_command(overrides: list[str], cpu: bool = False) -> list[str]:
    """``main_ppo`` with ``overrides``; on CPU its own Ray gets as many logical CPUs as bridge-ray's cluster."""
    cluster = [f"ray_kwargs.ray_init.num_cpus={CPU_SLOTS}"] if cpu else []
    return [sys.executable, "-m", "verl.trainer.main_ppo", *overrides, *cluster]


def bridge_commands(algo: str, cfg, submission_id: str) -> dict[str, list[str]]:
    """bridge-ray's side of ``cfg``: ``up`` sized as plain's Ray, the recipe submitted with the ``ppo.*``
    arguments that rebuild ``cfg`` from its preset, ``stop`` and ``down``."""
    br = [sys.executable, "-m", "bridge_ray"]
    size = ["--num-cpus", str(CPU_SLOTS)] if on_cpu(cfg) else ["--num-gpus", str(cfg.trainer.gpus_per_node)]
    return {"up": br + ["up", "--name", CLUSTER, *size],
            "submit": br + ["submit", f"recipes/{algo}_gsm8k.py", "--name", CLUSTER, *EXCLUDES,
                            "--submission-id", submission_id, "--follow", "--verbose", "--",
                            *recipe_args(PRESETS[algo](), cfg)],
            "stop": br + ["stop", submission_id, "--name", CLUSTER],
            "down": br + ["down", "--name", CLUSTER, "--force"]}


def drop_checkpoints(run_dir: Path) -> None:
    """Remove verl's ``global_step_*`` checkpoint folders under ``run_dir`` (logs, metrics and the merged actor stay):
    on 2026-12-07 (s18) two 1B runs' checkpoints filled the GPU host's disk and the next stage died writing its model."""
    for folder in sorted(run_dir.rglob("global_step_*")):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def run_plain(cfg, args: argparse.Namespace, tag: str) -> dict:
    out, work, timeout_s = args.out, args.work, args.timeout
    run_dir = Path(cfg.trainer.output_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    # verl's main_ppo starts its own Ray; its own temp root lets us stop exactly that Ray if it outlives the run.
    ray_tmp = Path(f"/tmp/brpb-{os.getpid()}")
    # The critic's loader plugin (verl 0.9.1 hard-codes flash_attention_2; no flash-attn here) and, for
    # torch_varlen, the attention plugin, loaded through verl's own VERL_USE_EXTERNAL_MODULES hook: what a plain
    # user without flash-attn must do too. bridge-ray's speed plugin (0.1 s rollout polls) only with --plain-poll.
    plugins = tuple(m for m in verl_plugins(cfg) if args.plain_poll or m != REPLAY_POLL_MODULE)
    env = dict(base_env(work), RAY_TMPDIR=str(ray_tmp), **plugin_env(cfg, {}, plugins))
    monitor = GpuMonitor(work / f"{tag}_nvsmi.csv")
    t0 = time.time()
    # cwd: Hydra's @main writes outputs/<date>/ there
    rc, lines = stamped_run(plain_command(ppo.to_verl_overrides(cfg), on_cpu(cfg)), out / f"{tag}.log", env, timeout_s,
                            cwd=work,
                            on_line=StepWatch(out / f"{tag}_procs.json", cpu_until=cfg.trainer.total_steps - 1))
    wall = time.time() - t0
    gpu = monitor.stop()
    from bridge_ray.cluster import processes

    processes.terminate(processes.find_pids(str(ray_tmp), by_open_files=True))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if run_dir.exists():
        aside = run_dir.with_name(run_dir.name + "-plain")
        shutil.rmtree(aside, ignore_errors=True)
        run_dir.rename(aside)
        drop_checkpoints(aside)  # nothing reads plain's: a 1B set is tens of GB on a 64 GB disk
    return {"side": "plain", "rc": rc, "wall_s": round(wall, 1), "phases_s": phases(lines),
            "rollout_polls": "0.1 s" if args.plain_poll else "2 s", **summarize(parse_steps(lines), cfg), **gpu}


def _bridge_summary(lines: list[tuple[float, str]], cfg) -> dict:
    merged = [line.split("[bridge-ray] merged ", 1)[1] for _, line in lines if "[bridge-ray] merged " in line]
    resumed = [line.split("[bridge-ray] ", 1)[1] for _, line in lines if "[bridge-ray] resumed from step" in line]
    steps = parse_steps(lines)
    return {"first_step": steps[0]["step"] if steps else None, "resumed": resumed[0] if resumed else None,
            "merged_hf_actor": merged[0] if merged else None, "phases_s": phases(lines), **summarize(steps, cfg)}


def run_bridge(algo: str, cfg, args: argparse.Namespace, tag: str) -> dict:
    """One bridge-ray run: up, submit --follow, down.

    ``--keep-run`` keeps the run folder, so verl resumes from its last checkpoint (resume check).
    ``--stop-after K`` runs ``bridge-ray stop`` once step K is logged, then submits the same run again,
    which must resume from its last checkpoint (``stopped`` holds the first submission's numbers).
    """
    out, work, timeout_s, vllm_env = args.out, args.work, args.timeout, not args.unset_vllm_env
    run_dir = Path(cfg.trainer.output_dir)
    if not args.keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    env, log = base_env(work, vllm_env), out / f"{tag}.log"
    sub_id = f"{tag.replace('_', '-')}-{time.strftime('%H%M%S')}"
    cmds = bridge_commands(algo, cfg, sub_id)
    stamped_run(cmds["down"], log, env, 120)  # a cluster left by an earlier, killed stage
    t0 = time.time()
    rc_up, _ = stamped_run(cmds["up"], log, env, 180)
    up_s = time.time() - t0
    monitor = GpuMonitor(work / f"{tag}_nvsmi.csv")
    watch = StepWatch(out / f"{tag}_procs.json", args.stop_after, cmds["stop"], env,
                      cpu_until=cfg.trainer.total_steps - 1)
    rc, lines = stamped_run(cmds["submit"], log, env, timeout_s, on_line=watch) if rc_up == 0 else (rc_up, [])
    extra = {}
    if watch.stopped_at is not None:
        extra = {"stopped": {"rc": rc, "after_step": watch.stopped_at, **_bridge_summary(lines, cfg),
                             "gpu_processes_gone_after_s": gpu_processes_gone(120)}}
        again = bridge_commands(algo, cfg, sub_id + "-again")
        rc, lines = stamped_run(again["submit"], log, env, timeout_s)
    wall = time.time() - t0
    gpu = monitor.stop()
    stamped_run(cmds["down"], log, env, 120)
    recorded = run_dir / "config.json"
    same = json.loads(recorded.read_text())["verl_overrides"] == ppo.to_verl_overrides(cfg) if recorded.exists() else None
    summary = _bridge_summary(lines, cfg)
    if args.shape == "llama-3.2-1b":  # merged and checked already; resume is measured on the small shape
        drop_checkpoints(run_dir)
    first = summary.get("first_step_at_s")
    return {"side": "bridge-ray", "rc": rc, "wall_s": round(wall, 1), "overrides_identical_to_plain": same,
            "flashinfer_env_in_cluster": vllm_env, "up_s": round(up_s, 1),
            "first_step_incl_up_s": round(first + up_s, 1) if first is not None else None, **extra, **summary, **gpu}


def chain_args(files: dict, cfg, run_dir: Path, sft_steps: int) -> list[str]:
    """``recipes/sft_then_ppo.py`` arguments: SFT of the bench model on the synthetic SFT rows (one GPU
    worker, the GPU preset's fast defaults), then GRPO as ``cfg`` from the merged SFT model."""
    from bridge_ray import sft

    base = sft.sft_gsm8k_llama1b()
    sft_cfg = dataclasses.replace(
        base, model=dataclasses.replace(base.model, path=files["model"]),
        data=dataclasses.replace(base.data, train_files=(files["train"],), val_files=(files["val"],),
                                 global_batch_size=16, max_length=512),
        workers=dataclasses.replace(base.workers, num_workers=cfg.trainer.gpus_per_node),
        trainer=dataclasses.replace(base.trainer, total_steps=sft_steps, test_freq=-1))
    return ["--run-dir", str(run_dir), *recipe_args(base, sft_cfg, "sft"), *recipe_args(PRESETS["grpo"](), cfg)]


def run_chain(cfg, args: argparse.Namespace, tag: str, files: dict) -> dict:
    """``recipes/sft_then_ppo.py`` through bridge-ray (up, submit --follow, down), then submitted again:
    the rerun must skip both finished stages."""
    run_dir = args.work / "chain"
    shutil.rmtree(run_dir, ignore_errors=True)
    env, log = base_env(args.work, not args.unset_vllm_env), args.out / f"{tag}.log"
    br = [sys.executable, "-m", "bridge_ray"]
    submit = br + ["submit", "recipes/sft_then_ppo.py", "--name", CLUSTER, *EXCLUDES, "--follow", "--verbose", "--",
                   *chain_args(files, cfg, run_dir, args.sft_steps)]
    stamped_run(br + ["down", "--name", CLUSTER, "--force"], log, env, 120)
    t0 = time.time()
    rc, _ = stamped_run(br + ["up", "--name", CLUSTER, "--num-gpus", str(cfg.trainer.gpus_per_node)], log, env, 180)
    rc, lines = stamped_run(submit, log, env, args.timeout) if rc == 0 else (rc, [])
    first_wall = time.time() - t0
    rc2, again = stamped_run(submit, log, env, 300) if rc == 0 else (None, [])
    stamped_run(br + ["down", "--name", CLUSTER, "--force"], log, env, 120)
    stages = json.loads((run_dir / "stages.json").read_text()) if (run_dir / "stages.json").exists() else {}
    skipped = [line.split("stage ", 1)[1].split(":")[0] for _, line in again if "finished before" in line]
    sft_steps = [line for _, line in lines if "[bridge-ray] sft step" in line or "step:" in line and "loss" in line]
    return {"side": "bridge-ray chain", "rc": rc, "wall_s": round(first_wall, 1), "stages": stages,
            "rerun_rc": rc2, "rerun_skipped": skipped, "command": shlex.join(submit),
            "sft_lines": len(sft_steps), **_bridge_summary(lines, cfg)}


def dry_run(algo: str, cfg) -> dict:
    """Everything but the verl step: both command lines, and the recipe's overrides equal plain's."""
    args = recipe_args(PRESETS[algo](), cfg)
    assert apply_overrides(PRESETS[algo](), args, prefix="ppo") == cfg, "recipe args do not rebuild the config"
    proc = subprocess.run([sys.executable, f"recipes/{algo}_gsm8k.py", "--dry-run", *args], cwd=REPO,
                          env=base_env(Path(cfg.trainer.output_dir).parent), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe_overrides = json.loads(proc.stdout[proc.stdout.index("{\n"):])["verl_overrides"]
    plain = ppo.to_verl_overrides(cfg)
    assert recipe_overrides == plain, f"recipe and plain overrides differ: {set(recipe_overrides) ^ set(plain)}"
    sample = [(12.5, "(TaskRunner pid=1) step:3 - timing_s/step:4.25 - perf/throughput:1234.5 - timing_per_token_ms/gen:0.5")]
    assert parse_steps(sample * 2)[0]["perf/throughput"] == 1234.5
    cmds = bridge_commands(algo, cfg, "dry-run")
    return {"overrides_identical": True, "num_overrides": len(plain), "plain": shlex.join(plain_command(plain, on_cpu(cfg))),
            "bridge_ray": [shlex.join(cmds[k]) for k in ("up", "submit", "down")]}


def markdown(results: list[dict]) -> str:
    """The RESULTS.md table for ``results.json``'s rows, and bridge-ray / plain ratios."""
    header = ("| run | side | steps | step time (s) | train tok/s/GPU | rollout tok/s | actor update tok/s | "
              "first step at (s) | peak GPU MiB | merged HF actor |")
    rows = [header, "|" + "---|" * 10]
    for r in results:
        fmt = lambda v: "-" if v is None else (f"{v:,.{2 if v < 100 else 0}f}" if isinstance(v, float) else str(v))
        rows.append(f"| {r['tag']} | {r['side']} | {r.get('num_steps')} | {fmt(r.get('step_time_s'))} | "
                    f"{fmt(r.get('train_throughput_tok_s_gpu'))} | {fmt(r.get('rollout_throughput_tok_s'))} | "
                    f"{fmt(r.get('actor_update_tok_s'))} | {fmt(r.get('first_step_at_s'))} | "
                    f"{fmt(r.get('peak_gpu_mem_mib'))} | {'yes' if r.get('merged_hf_actor') else '-'} |")
    rows += ratios(results)
    return "\n".join(rows)


# How plain waited for its rollouts: verl's trainer polls every 2 s, bridge-ray's plugin every 0.1 s
# (`PLAIN_POLL=1` gives plain the plugin too). Rows from before this was recorded say neither.
POLLS = {"0.1 s": "same settings: plain with bridge-ray's 0.1 s rollout polls too",
         "2 s": "plain on verl's own 2 s rollout polls, bridge-ray on its 0.1 s ones",
         None: "plain's rollout polls not recorded"}


def _kind(result: dict) -> tuple:
    """What must match for two runs to share a ratio: algorithm, model shape and the overrides on top."""
    return result.get("algo"), result.get("shape"), tuple(result.get("overrides") or ())


def ratios(results: list[dict]) -> list[str]:
    """bridge-ray / plain for each kind of run (``_kind``) and each way plain polled (only like runs share a ratio):
    by step time, by throughput, and by step time without the rollout (``gen``), where the polls make no
    difference. The summary of 2026-12-07 (s18) had put a 1B pair and a small-model pair into one median."""
    lines = []
    kinds = sorted({_kind(r) for r in results if r.get("algo")}, key=str)
    for kind in kinds:
        algo, shape, overrides = kind
        named = algo + (f", {shape}" if shape and len(kinds) > 1 else "") + (
            f", {len(overrides)} overrides" if overrides else "")
        for polls, said in POLLS.items():
            sides = {side: [r for r in results if _kind(r) == kind and r["side"] == side
                            and r.get("step_time_s") and (side != "plain" or r.get("rollout_polls") == polls)
                            and r["tag"].startswith(f"{algo}_{'plain' if side == 'plain' else 'bridge'}")]
                     for side in ("plain", "bridge-ray")}
            if not all(sides.values()):
                continue
            step = {k: statistics.median(r["step_time_s"] for r in v) for k, v in sides.items()}
            tput = {k: statistics.median(r["train_throughput_tok_s_gpu"] for r in v) for k, v in sides.items()}
            rest = {k: statistics.median(r["step_time_s"] - r["gen_time_s"] for r in v if r.get("gen_time_s"))
                    for k, v in sides.items() if all(r.get("gen_time_s") for r in v)}
            without_gen = (f", {rest['plain'] / rest['bridge-ray']:.3f}x by step time without the rollout"
                           if len(rest) == 2 else "")
            lines.append(f"\n{named}: bridge-ray / plain = {step['plain'] / step['bridge-ray']:.3f}x by step time, "
                         f"{tput['bridge-ray'] / tput['plain']:.3f}x by training throughput{without_gen} (medians "
                         f"of {len(sides['plain'])} plain and {len(sides['bridge-ray'])} bridge-ray runs; {said}; "
                         "goal >= 0.98x)")
    return lines


def gpu_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 1
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return max(1, sum(line.startswith("GPU ") for line in out.splitlines()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    parser.add_argument("--mode", choices=("both", "plain", "bridge", "chain"), default="both",
                        help="chain: recipes/sft_then_ppo.py (SFT, then GRPO from it) through bridge-ray, run twice")
    parser.add_argument("--sft-steps", type=int, default=20, help="chain: SFT steps before GRPO")
    parser.add_argument("--out", type=Path, help="logs and JSON (a few files)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bridge-ray-ppo-bench"), help="assets, runs (big)")
    parser.add_argument("--shape", choices=("small", "tiny", "llama-3.2-1b"), default=None,
                        help="default: small (GPU), tiny (--device cpu)")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                        help="cpu: both sides on CPU with the CPU presets' settings (no GPU needed)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs on this node (default: nvidia-smi's count)")
    parser.add_argument("--timeout", type=float, default=480, help="seconds per verl run (each side)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: everything except the verl step")
    parser.add_argument("--unset-vllm-env", action="store_true",
                        help="bridge side: start the cluster without VLLM_USE_FLASHINFER_SAMPLER (bridge-ray injects it)")
    parser.add_argument("--keep-run", action="store_true", help="bridge side: keep the run folder (verl resumes)")
    parser.add_argument("--plain-poll", action="store_true",
                        help="plain side: load bridge-ray's replay-poll plugin too (same settings as bridge-ray; "
                             "default: verl's own 2 s polls, what a plain user runs)")
    parser.add_argument("--stop-after", type=int, help="bridge side: `bridge-ray stop` after step K, then resubmit")
    parser.add_argument("--save-freq", type=int, help="checkpoint every N steps (default: the final step only)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ppo.KEY=VALUE",
                        help="override the benchmark's config on both sides (repeatable), e.g. ppo.rollout.n=5")
    parser.add_argument("--tag", help="name of this run's log and results entry (default ALGO_SIDE)")
    parser.add_argument("--summarize", type=Path, metavar="OUT", help="print the markdown table of OUT/results.json")
    args = parser.parse_args()
    args.shape = args.shape or ("tiny" if args.device == "cpu" else "small")
    if args.device == "cpu" and args.shape != "tiny":
        parser.error("--device cpu runs the tiny shape (the CPU presets' model): drop --shape")
    if args.summarize:
        path = args.summarize / RESULTS
        print(markdown(list(json.loads(path.read_text()).values())) if path.exists() else f"no {path} yet")
        for algo in ("ppo", "grpo"):
            pair = [args.summarize / f"{algo}_{side}_procs.json" for side in ("plain", "bridge")]
            if all(p.exists() for p in pair):
                print(f"\n{algo} processes, plain vs bridge-ray:\n  " + "\n  ".join(
                    procs_diff(*(json.loads(p.read_text()) for p in pair))))
        for path in sorted(args.summarize.glob("*_cpu.json")):
            top = json.loads(path.read_text())[:8]
            print(f"\n{path.stem} (cores busy, steady state):\n  " + "\n  ".join(
                f"{r['cores']:6.2f}  {r['title'][:100]}" for r in top))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files = build_assets(args.work, args.shape)
    print(f"assets ready in {time.time() - t0:.0f}s: {files['model']}", flush=True)
    gpus = 1 if args.device == "cpu" else args.gpus or gpu_count()
    cfg = bench_config(args.algo, files, args.work / f"run-{args.algo}", args.steps, gpus, args.device)
    extra = args.overrides + ([f"ppo.trainer.save_freq={args.save_freq}"] if args.save_freq else [])
    cfg = apply_overrides(cfg, extra, prefix="ppo") if extra else cfg
    if args.mode == "chain" and args.algo != "grpo":
        parser.error("--mode chain runs GRPO after SFT (recipes/sft_then_ppo.py): use --algo grpo")
    if args.dry_run:
        print(json.dumps(dry_run(args.algo, cfg), indent=2))
        if args.mode == "chain":
            proc = subprocess.run([sys.executable, "recipes/sft_then_ppo.py", "--dry-run",
                                   *chain_args(files, cfg, args.work / "chain", args.sft_steps)], cwd=REPO,
                                  env=base_env(args.work), capture_output=True, text=True, timeout=300, check=False)
            print("chain dry run rc", proc.returncode, (proc.stdout + proc.stderr)[-1500:])
        return
    sides = {"plain": ["plain"], "bridge": ["bridge"], "both": ["plain", "bridge"], "chain": ["chain"]}[args.mode]
    for side in sides:  # plain first: verl's own ray.init must not find the bridge-ray cluster
        tag = args.tag or f"{args.algo}_{side}"
        if side == "chain":
            result = run_chain(cfg, args, tag, files)
        else:
            result = run_plain(cfg, args, tag) if side == "plain" else run_bridge(args.algo, cfg, args, tag)
        result.update(tag=tag, algo=args.algo, shape=args.shape, steps_asked=args.steps, overrides=args.overrides)
        path = args.out / RESULTS
        results = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**results, tag: result}, indent=2))
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()

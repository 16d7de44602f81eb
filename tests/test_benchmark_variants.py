"""Unit tier: every variant the GPU benchmarks try is a config bridge-ray accepts and verl composes.

GPU time is scarce (30 minutes a session): a variant with a misspelt key or a combination the
validation refuses must fail here, not on the GPU host. The variants are read from the scripts
themselves (``benchmarks/sft_throughput.py``'s ``VARIANTS``, ``benchmarks/gpu/pretrain.sh``'s).
"""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from bridge_ray import pretrain, sft
from bridge_ray.sft.worker import compose_verl_config
from conftest import REPO

H100 = sft.Hardware(gpu="NVIDIA H100 80GB HBM3", torch_varlen=True, triton=True, liger=True)


def benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module, with its own helpers (``_tools``, ``ppo_measure``)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def sft_variants() -> dict:
    return benchmark("sft_throughput").VARIANTS


def pretrain_variants() -> dict[str, list[str]]:
    script = (REPO / "benchmarks" / "gpu" / "pretrain.sh").read_text()
    table = script.split("declare -A VARIANTS=(", 1)[1].split("\n)", 1)[0]
    return {name: value.split() for name, value in re.findall(r'\[(\w+)\]="([^"]*)"', table)}


@pytest.mark.parametrize("name, preset, overrides", [(n, *v) for n, v in sft_variants().items()])
def test_sft_benchmark_variants_validate_and_compose(name, preset, overrides):
    cfg = sft.validate(sft.resolve(sft.apply_overrides(sft.PRESETS[preset](), overrides), H100))
    composed = compose_verl_config(sft.to_verl_overrides(cfg))
    assert composed.data.train_batch_size == cfg.data.global_batch_size


def test_pretrain_script_has_the_variants_it_documents():
    assert {"default", "mb16", "noreshard", "mb16_noreshard", "compile", "liger", "mb16_liger"} <= set(pretrain_variants())


@pytest.mark.parametrize("name, overrides", sorted(pretrain_variants().items()))
def test_pretrain_benchmark_variants_validate_and_compose(name, overrides, tmp_path):
    cfg = pretrain.pretrain_1b(str(tmp_path / "tok"), [str(tmp_path / "a.jsonl")], str(tmp_path / "run"))
    cfg = pretrain.validate(pretrain.apply_overrides(cfg, overrides))
    composed = compose_verl_config(pretrain.to_verl_overrides(cfg, [str(tmp_path / "a.bin")]))
    assert composed.model.use_liger is cfg.model.liger


def ppo_benchmark():
    return benchmark("ppo_throughput")


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_ppo_benchmark_sides_get_the_same_verl_overrides(device, tmp_path):
    """The benchmark's bridge-ray arguments rebuild its config, and the recipe hands verl exactly plain's
    overrides (the recipe's own ``--dry-run``); on CPU both sides' Ray get the same logical CPUs."""
    bench = ppo_benchmark()
    model, data = tmp_path / "model", tmp_path / "data"
    files = {"model": str(model), "rl_train": str(data / "rl_train.parquet"), "rl_val": str(data / "rl_val.parquet")}
    cfg = bench.bench_config("ppo", files, tmp_path / "run", 4, 1, device)
    args = bench.recipe_args(bench.PRESETS["ppo"](), cfg)
    assert bench.apply_overrides(bench.PRESETS["ppo"](), args, prefix="ppo") == cfg
    plain = bench.plain_command(bench.ppo.to_verl_overrides(cfg), bench.on_cpu(cfg))
    commands = bench.bridge_commands("ppo", cfg, "id")
    assert commands["submit"][commands["submit"].index("--") + 1:] == args
    up = commands["up"]
    if device == "cpu":
        assert cfg.trainer.device == "cpu" and plain[-1] == f"ray_kwargs.ray_init.num_cpus={bench.CPU_SLOTS}"
        assert up[-2:] == ["--num-cpus", str(bench.CPU_SLOTS)]
    else:
        assert not any(a.startswith("ray_kwargs") for a in plain) and up[-2:] == ["--num-gpus", "1"]


def test_stamped_run_waits_for_a_process_that_closed_its_output(tmp_path):
    """A process that closes its output and then takes a moment to exit is not killed as timed out."""
    bench, log = ppo_benchmark(), tmp_path / "log"
    rc, lines = bench.stamped_run(["sh", "-c", "echo one; exec >&- 2>&-; sleep 1; exit 3"], log, {}, 60)
    assert rc == 3 and [line for _, line in lines] == ["one"] and "timeout" not in log.read_text()
    rc, _ = bench.stamped_run(["sh", "-c", "sleep 30"], log, {}, 1)  # past the limit: the group is killed
    assert rc != 0 and "benchmark: timeout 1s, killing the process group" in log.read_text()


def test_ppo_benchmark_steady_state_leaves_out_warmup_and_checkpoint_steps():
    """Step 1 warms up and a step that saved a checkpoint is not a training step's time (a 3-step run
    on the GPU host once reported the mean of step 2 and the final, saving step 3 as its step time)."""
    bench = ppo_benchmark()
    step = lambda n, t, **kw: {"step": n, "t": 10.0 * n, "timing_s/step": t, **kw}
    cfg = bench.bench_config("grpo", {"model": "/m", "rl_train": "/d/t.parquet", "rl_val": "/d/v.parquet"},
                             bench.Path("/r"), 3, 1)
    saved = {"timing_s/save_checkpoint": 17.9}
    three = bench.summarize([step(1, 57.0), step(2, 22.7), step(3, 41.3, **saved)], cfg)
    assert three["steady_steps"] == [2] and three["step_time_s"] == 22.7
    six = bench.summarize([step(1, 9.0), step(2, 4.0, **saved), step(3, 3.0), step(4, 5.0), step(5, 4.0),
                           step(6, 20.0, **saved)], cfg)
    assert six["steady_steps"] == [3, 4, 5] and six["step_time_s"] == 4.0
    assert bench.summarize([step(1, 9.0, **saved)], cfg)["steady_steps"] == [1]


def test_ppo_benchmark_ratios_never_mix_plain_runs_that_polled_differently():
    """A plain run on verl's 2 s rollout polls and one with bridge-ray's plugin are different baselines: the
    summary of 2026-12-07 said 2.099x with no word that plain had waited 2 s a step for its rollouts."""
    bench = ppo_benchmark()
    run = lambda tag, side, step, gen, polls=None: {"tag": tag, "side": side, "algo": "ppo", "step_time_s": step,
                                                    "gen_time_s": gen, "train_throughput_tok_s_gpu": 100.0 / step,
                                                    **({"rollout_polls": polls} if polls else {})}
    lines = bench.ratios([run("ppo_plain_a", "plain", 3.2, 2.05, "2 s"), run("ppo_bridge_a", "bridge-ray", 1.6, 0.45),
                          run("ppo_plain_c", "plain", 1.7, 0.50, "0.1 s"), run("ppo_plain_old", "plain", 1.0, 0.4)])
    assert lines == [
        "\nppo: bridge-ray / plain = 1.062x by step time, 1.062x by training throughput, 1.043x by step time without "
        "the rollout (medians of 1 plain and 1 bridge-ray runs; same settings: plain with bridge-ray's 0.1 s rollout "
        "polls too; goal >= 0.98x)",
        "\nppo: bridge-ray / plain = 2.000x by step time, 2.000x by training throughput, 1.000x by step time without "
        "the rollout (medians of 1 plain and 1 bridge-ray runs; plain on verl's own 2 s rollout polls, bridge-ray on "
        "its 0.1 s ones; goal >= 0.98x)",
        "\nppo: bridge-ray / plain = 0.625x by step time, 0.625x by training throughput, 0.522x by step time without "
        "the rollout (medians of 1 plain and 1 bridge-ray runs; plain's rollout polls not recorded; goal >= 0.98x)",
    ]


def test_ppo_benchmark_ratios_keep_model_shapes_and_override_sets_apart():
    """s18's summary gave one median over a 1B pair and a small-model pair (1.002x), which compares neither."""
    bench = ppo_benchmark()
    run = lambda tag, side, step, shape, sets=(): {"tag": tag, "side": side, "algo": "ppo", "step_time_s": step,
                                                   "gen_time_s": step / 3, "train_throughput_tok_s_gpu": 100.0 / step,
                                                   "rollout_polls": "0.1 s", "shape": shape, "overrides": list(sets)}
    big = ("ppo.data.train_batch_size=256",)
    lines = bench.ratios([run("ppo_plain", "plain", 15.83, "llama-3.2-1b", big),
                          run("ppo_bridge", "bridge-ray", 15.67, "llama-3.2-1b", big),
                          run("ppo_bridge_pp", "bridge-ray", 1.71, "small"), run("ppo_plain_pp", "plain", 1.57, "small")])
    assert [line.split(":")[0] for line in lines] == ["\nppo, llama-3.2-1b, 1 overrides", "\nppo, small"]
    assert [line.split("= ")[1].split("x")[0] for line in lines] == ["1.010", "0.918"]


def test_checkpoints_are_dropped_and_the_rest_of_the_run_stays(tmp_path):
    bench = ppo_benchmark()
    for path in ("global_step_2/actor/model.pt", "global_step_4/critic/model.pt", "hf/config.json", "metrics.jsonl"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    bench.drop_checkpoints(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "hf/config.json", "metrics.jsonl"]


def ppo_sets() -> dict[str, list[str]]:
    script = (REPO / "benchmarks" / "gpu_ppo.sh").read_text()
    table = script.split("declare -A SETS=(", 1)[1].split("\n)", 1)[0]
    return {name: value.split() for name, value in re.findall(r'\[([\w-]+)\]="([^"]*)"', table)}


@pytest.mark.parametrize("name, overrides", sorted(ppo_sets().items()))
def test_ppo_benchmark_named_sets_validate_and_give_the_same_verl_overrides(name, overrides, tmp_path):
    """``SETNAME=1b-ppo`` / ``1b-grpo`` in ``gpu_ppo.sh``: the benchmark's own config path, then the checks a
    submit makes; both sides must hand verl the same overrides."""
    assert {"1b-grpo", "1b-ppo"} <= set(ppo_sets())
    bench = ppo_benchmark()
    files = {"model": str(tmp_path / "m"), "rl_train": str(tmp_path / "t.parquet"),
             "rl_val": str(tmp_path / "v.parquet")}
    algo = name.split("-")[1]
    cfg = bench.apply_overrides(bench.bench_config(algo, files, tmp_path / "run", 4, 1), overrides, prefix="ppo")
    bench.ppo.validate(cfg)
    args = bench.recipe_args(bench.PRESETS[algo](), cfg)
    assert bench.apply_overrides(bench.PRESETS[algo](), args, prefix="ppo") == cfg
    assert cfg.uses_critic is (algo == "ppo")

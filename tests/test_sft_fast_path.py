"""The fast SFT path trains the same model as the seed's padded path, on the same batches.

Both sides run ``torchrun -m verl.trainer.sft_trainer`` with the verl overrides bridge-ray
hands verl (``sft.to_verl_overrides``), the same data, seed, global batch and optimiser; only
the speed settings differ. Losses come from verl's own console lines.

- integration (CPU, 2 ranks over gloo, tiny Llama): padded sdpa vs packed sdpa, and vs packed
  ``torch_varlen`` whose kernel is the CPU reference (``tests/sft_varlen_reference.py``; torch
  has no CPU kernel for it), so verl's packing, the plugin's loading through
  ``model.external_lib`` and its logic run for real and only the CUDA kernel is stood in for.
- gpu (run on the GPU host, never in CI): torch's real varlen kernel against sdpa, the probe,
  and the seed preset against the fast default as ``resolve`` picks it on that GPU. With
  ``BRIDGE_RAY_TEST_ASSETS=DIR`` (from ``bridge-ray assets demo DIR --shape llama-3.2-1b``) it
  uses that model and data, else a tiny Llama; with ``BRIDGE_RAY_TEST_RESULTS=DIR`` it writes
  the two loss curves to ``DIR/sft_loss_parity.json``.

Tolerances: the first step's loss within one bf16 spacing (2^-7 of the loss: verl computes it
in bf16, and a packed batch sums it in another order — on CPU the two sides have differed by
1/64 at a loss of 6.4); every later step within 2 % of the padded path's loss (different kernels
and reduction orders: the curves drift apart a little, they do not diverge).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_ray import sft
from bridge_ray.platforms import cpu_env

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from sft_helpers import build_assets, losses_from_log  # noqa: E402

FIRST_STEP_REL = 2**-7  # bf16's spacing, relative
CURVE_REL = 0.02


def torchrun_losses(cfg: sft.SFTConfig, cwd: Path, env: dict, nproc: int, timeout: float = 900) -> dict[int, float]:
    """{step: loss} of ``torchrun -m verl.trainer.sft_trainer`` with ``cfg``'s verl overrides."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
         "verl.trainer.sft_trainer", *sft.to_verl_overrides(cfg)],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return losses_from_log(proc.stdout)


def assert_same_curve(fast: dict[int, float], seed: dict[int, float], steps: int) -> None:
    assert sorted(fast) == sorted(seed) == list(range(1, steps + 1))
    assert abs(fast[1] - seed[1]) <= FIRST_STEP_REL * abs(seed[1]), (fast[1], seed[1])
    for step in seed:
        assert abs(fast[step] - seed[step]) <= CURVE_REL * abs(seed[step]), (step, fast[step], seed[step])


def short_run(cfg: sft.SFTConfig, steps: int) -> sft.SFTConfig:
    return sft.apply_overrides(cfg, [f"trainer.total_steps={steps}", "trainer.save_freq=-1", "trainer.test_freq=-1",
                                     "trainer.save_checkpoint=false", "trainer.resume_mode=disable", "data.val_files=[]"])


# ---- CPU ----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_packed_paths_match_the_padded_path_on_cpu(tmp_path):
    assets = build_assets(tmp_path / "assets")
    base = short_run(sft.sft_tiny_cpu(assets["model_dir"], assets["train"], None, str(tmp_path / "run")), 6)
    packed = sft.validate(sft.resolve(sft.apply_overrides(base, ["model.use_remove_padding=true",
                                                                 "data.max_tokens_per_worker=auto"])))
    # torch_varlen is refused on CPU workers (there is no CPU kernel); here the reference kernel stands in.
    varlen = dataclasses.replace(packed, model=dataclasses.replace(packed.model, attn_implementation="torch_varlen"))
    plugins = {**cpu_env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    plugins["VERL_USE_EXTERNAL_MODULES"] += ",sft_varlen_reference"
    curves = {"padded": torchrun_losses(base, tmp_path, cpu_env(), nproc=2),
              "packed_sdpa": torchrun_losses(packed, tmp_path, cpu_env(), nproc=2),
              "packed_torch_varlen_reference": torchrun_losses(varlen, tmp_path, plugins, nproc=2)}
    print(json.dumps(curves))
    assert_same_curve(curves["packed_sdpa"], curves["padded"], 6)
    assert_same_curve(curves["packed_torch_varlen_reference"], curves["padded"], 6)
    assert packed.data.max_tokens_per_worker == 4096 and "model.use_remove_padding=True" in sft.to_verl_overrides(varlen)


# ---- GPU ----------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_varlen_kernel_matches_sdpa_on_gpu():
    import torch
    import torch.nn.functional as F

    from bridge_ray.platforms import attention

    torch.manual_seed(0)
    lengths = [173, 12, 511, 64, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lengths), 32, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(sum(lengths), 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "kv")
    out = attention.varlen_kernel(q, k, v, cu, max(lengths), 64 ** -0.5)
    ref = torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True,
                                                    enable_gqa=True).transpose(0, 1)
                     for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert torch.allclose(out.float(), ref.float(), atol=2e-2)
    grads = [torch.autograd.grad(o.float().square().sum(), (q, k, v)) for o in (out, ref)]
    for got, expected in zip(*grads):
        assert torch.allclose(got.float(), expected.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_probe_finds_the_fast_paths_on_gpu():
    from bridge_ray.platforms import hardware

    hw = hardware.probe()
    assert hw.gpu and hw.triton and hw.torch_varlen, hw


@pytest.mark.gpu
def test_fast_default_matches_the_seed_on_gpu(tmp_path):
    from bridge_ray.platforms import hardware

    steps = 10
    assets_dir = os.environ.get("BRIDGE_RAY_TEST_ASSETS")
    if assets_dir:
        model, train = f"{assets_dir}/model", f"{assets_dir}/data/train.parquet"
    else:
        built = build_assets(tmp_path / "assets")
        model, train = built["model_dir"], built["train"]
    overrides = [f"model.path={model}", f"data.train_files=[{train}]"]
    seed = short_run(sft.apply_overrides(sft.sft_gsm8k_llama1b_seed(output_dir=str(tmp_path / "seed")), overrides), steps)
    hw = hardware.probe()
    fast = sft.validate(sft.resolve(short_run(sft.apply_overrides(
        sft.sft_gsm8k_llama1b(output_dir=str(tmp_path / "fast")), overrides), steps), hw))
    seed_losses = torchrun_losses(seed, tmp_path, {}, nproc=1)
    fast_losses = torchrun_losses(fast, tmp_path, {}, nproc=1)
    report = {"hardware": dataclasses.asdict(hw), "fast": hardware.describe(fast, hw), "model": model,
              "seed_losses": seed_losses, "fast_losses": fast_losses,
              "max_rel_diff": max(abs(fast_losses[s] - seed_losses[s]) / abs(seed_losses[s]) for s in seed_losses)}
    print(json.dumps(report, indent=1))
    if os.environ.get("BRIDGE_RAY_TEST_RESULTS"):
        out = Path(os.environ["BRIDGE_RAY_TEST_RESULTS"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "sft_loss_parity.json").write_text(json.dumps(report, indent=1))
    assert_same_curve(fast_losses, seed_losses, steps)

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


def sft_variants() -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))  # its own helpers (_tools)
    try:
        spec = importlib.util.spec_from_file_location("sft_throughput", REPO / "benchmarks" / "sft_throughput.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module.VARIANTS


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

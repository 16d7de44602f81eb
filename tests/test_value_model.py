"""The PPO critic loads with the configured attention (bridge_ray.platforms.value_model).

verl 0.9.1's ``load_valuehead_model`` asks transformers for flash_attention_2 itself; without
flash-attn (every CPU, the GPU host) the critic never loads. These tests build a tiny Llama
offline and load it as verl's critic engine does, on CPU, with no flash-attn installed.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bridge_ray.platforms import cpu_env, verl_plugin_env
from bridge_ray.platforms.env import external_modules

torch_dtype = torch.float32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from bridge_ray.models.assets import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("assets"), num_train=8, num_val=4)["model"]


def _critic_config(model_dir, attention: str):
    """The hf_config verl's critic engine passes: built with the configured attention, one label."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, attn_implementation=attention)
    config.num_labels = 1
    return config


def test_verl_alone_asks_for_flash_attention_and_fails(tiny_model):
    """Pins verl's behaviour that the plugin answers: when this passes, verl fixed it; drop the plugin."""
    from bridge_ray.platforms import value_model

    with pytest.raises(Exception, match="not a value head model|[Ff]lash"):
        value_model.VERL_LOADER(tiny_model, torch_dtype, _critic_config(tiny_model, "sdpa"), False)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_critic_loads_with_the_configured_attention(tiny_model, attention):
    import verl.utils.model as verl_model

    import bridge_ray.platforms.value_model  # noqa: F401 - installs the loader, as verl's plugin hook does

    model = verl_model.load_valuehead_model(tiny_model, torch_dtype, _critic_config(tiny_model, attention), False)
    assert type(model).__name__ == "LlamaForTokenClassification"
    assert model.config._attn_implementation == attention
    assert model.score.out_features == 1
    values = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert values.shape == (1, 3, 1)


def test_a_torch_varlen_critic_loads_in_a_fresh_process_through_verls_own_hook(tiny_model):
    """``import verl`` with the env a packed GPU run's workers get (``VERL_USE_EXTERNAL_MODULES`` naming the
    critic's loader and the attention plugin), then verl's critic load with ``torch_varlen``, as its training
    worker does. On an H100 that load failed ("torch_varlen is not supported") while the plugin came only
    through ``critic.model.external_lib``. torch's varlen kernel needs a CUDA GPU, so this checks the load and
    the attention the model runs with, not a forward pass."""
    from bridge_ray import ppo
    from bridge_ray.ppo.config import verl_plugins

    cfg = ppo.apply_overrides(ppo.grpo_gsm8k_llama1b(), ["ppo.model.use_remove_padding=true",
                                                          "ppo.model.attn_implementation=torch_varlen"])
    code = ("import sys, torch, verl, verl.utils.model as m; from transformers import AutoConfig; "
            "c = AutoConfig.from_pretrained(sys.argv[1], attn_implementation='torch_varlen'); c.num_labels = 1; "
            "print(m.load_valuehead_model(sys.argv[1], torch.float32, c, False).config._attn_implementation)")
    env = {**os.environ, **verl_plugin_env({}, verl_plugins(cfg))}
    out = subprocess.run([sys.executable, "-c", code, tiny_model], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "torch_varlen"


def test_a_real_load_error_is_not_hidden(tmp_path):
    import verl.utils.model as verl_model

    import bridge_ray.platforms.value_model  # noqa: F401

    with pytest.raises(OSError, match=str(tmp_path)):
        verl_model.load_valuehead_model(str(tmp_path), torch_dtype, _critic_config_of_llama(), False)


def _critic_config_of_llama():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       vocab_size=64, num_labels=1)


def test_verl_loads_the_plugin_in_a_fresh_process_through_its_own_hook(tiny_model):
    """``import verl`` with the env that PPO's workers get installs the loader (no bridge-ray import)."""
    code = ("import verl, verl.utils.model as m; print(m.load_valuehead_model.__module__)")
    env = {**os.environ, **verl_plugin_env({})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "bridge_ray.platforms.value_model"


def test_plugin_env_keeps_modules_the_job_already_loads():
    assert verl_plugin_env({}) == {"VERL_USE_EXTERNAL_MODULES": "bridge_ray.platforms.value_model"}
    cpu = cpu_env()["VERL_USE_EXTERNAL_MODULES"]
    assert verl_plugin_env({"VERL_USE_EXTERNAL_MODULES": cpu})["VERL_USE_EXTERNAL_MODULES"] == cpu
    mine = verl_plugin_env({"VERL_USE_EXTERNAL_MODULES": "team.plugin"})
    assert mine["VERL_USE_EXTERNAL_MODULES"] == "team.plugin,bridge_ray.platforms.value_model"
    assert external_modules("a", "b", existing="b, ,c") == "b,c,a"

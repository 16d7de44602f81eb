"""verl plugin: load the PPO critic (a value model) with the attention the run configured.

verl 0.9.1's ``verl.utils.model.load_valuehead_model`` passes
``attn_implementation="flash_attention_2"`` to ``from_pretrained`` itself, whatever
``critic.model.override_config.attn_implementation`` says, and turns any failure into
"model ... is not a value head model, please install trl". So PPO with a critic fails on
every host without flash-attn (the GPU host, every CPU). This module replaces that
function with one that uses the attention already in the model's config (verl builds
``hf_config`` with the configured ``attn_implementation``), and lets a real load error
through unchanged.

verl imports this module in every process when ``VERL_USE_EXTERNAL_MODULES`` names it
(``bridge_ray.platforms.verl_plugin_env``); verl's critic engine
(``verl/workers/engine/fsdp/transformer_impl.py``) imports ``load_valuehead_model`` from
``verl.utils.model`` at call time, so replacing the module attribute is enough. Drop this
when verl stops hard-coding flash_attention_2 there.
"""
from __future__ import annotations

import verl.utils.model as verl_model

DEFAULT_ATTENTION = "sdpa"
VERL_LOADER = verl_model.load_valuehead_model  # verl's own, kept for models it alone handles


def configured_attention(model_config) -> str:
    """The attention ``model_config`` was built with (verl passes the configured one), else sdpa."""
    return getattr(model_config, "_attn_implementation", None) or DEFAULT_ATTENTION


def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
    """verl's value-model loader, with the configured attention instead of flash_attention_2.

    Models that transformers has a ``...ForTokenClassification`` class for (Llama, Qwen2,
    Mistral, ...) load as that class with one output label, as in verl. Others (VLMs) keep
    verl's own trl value-head path unchanged.
    """
    from transformers import AutoModelForTokenClassification

    if type(model_config) not in AutoModelForTokenClassification._model_mapping.keys():
        return VERL_LOADER(local_path, torch_dtype, model_config, trust_remote_code)
    return AutoModelForTokenClassification.from_pretrained(
        pretrained_model_name_or_path=local_path,
        torch_dtype=torch_dtype,
        config=model_config,
        attn_implementation=configured_attention(model_config),
        trust_remote_code=trust_remote_code,
    )


def install() -> None:
    """Put ``load_valuehead_model`` in place of verl's (importing this module does it once)."""
    verl_model.load_valuehead_model = load_valuehead_model


install()

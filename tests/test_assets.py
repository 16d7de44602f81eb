"""Offline tokenizer, random-init Llama and demo assets, read back by transformers and verl."""
from __future__ import annotations

import pytest

from bridge_ray.errors import ConfigError
from bridge_ray.data import read_rows
from bridge_ray.models.assets import build_demo_assets, build_llama, llama_config

CONVERSATION = [{"role": "user", "content": "What is 12 * 34?"},
                {"role": "assistant", "content": "12 * 34 = <<12*34=408>>408\n#### 408"}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_assets(tmp_path_factory.mktemp("demo"), num_train=64, num_val=8)


@pytest.fixture(scope="module")
def tokenizer(demo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo["model"])


def test_chat_template_renders_llama3_layout(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 12 * 34?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n12 * 34 = <<12*34=408>>408\n#### 408<|eot_id|>")
    prompt = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token == "<|pad|>"


def test_tokenizer_round_trips_any_text_and_splits_digits(tokenizer):
    text = "Ünïcode & real GSM8K: 1,234 x 5 = $6,170.\n#### 6170"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.tokenize("408") == ["4", "0", "8"]


def test_tiny_model_loads_and_generates(demo, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo["model"])
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size >= len(tokenizer)
    inputs = tokenizer.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_verl_sft_dataset_reads_demo_parquet(demo, tokenizer):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from bridge_ray.data import read_rows

    dataset = MultiTurnSFTDataset(str(demo["train"]), tokenizer, {"max_length": 512, "pad_mode": "right"})
    assert len(dataset) == 64
    item = dataset[0]
    assert item["input_ids"].shape == (512,)
    trained = item["input_ids"][item["loss_mask"].bool()]
    answer = read_rows(demo["train"])[0]["messages"][1]["content"]
    assert tokenizer.decode(trained) == answer + "<|eot_id|>"


def test_demo_assets_are_reused_until_arguments_change(demo, tmp_path):
    weights = demo["model"] / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert build_demo_assets(demo["model"].parent, num_train=64, num_val=8) == demo
    assert weights.stat().st_mtime_ns == built_at
    other = build_demo_assets(tmp_path, num_train=16, num_val=4, seed=1)
    assert other["train"].is_file() and (tmp_path / "bridge_ray_assets.json").is_file()
    data_at = other["train"].stat().st_mtime_ns
    with pytest.raises(ConfigError) as err:  # rebuilt silently before, under runs that read them
        build_demo_assets(tmp_path, num_train=8, num_val=4, seed=1)
    assert str(err.value) == (f"{tmp_path} holds demo assets built with other options (num_train 16, not 8): rebuild "
                              f"them with `bridge-ray assets demo {tmp_path} --shape tiny --num-train 8 --num-val 4 "
                              "--overwrite` (runs that read them see the new files), or give another folder")
    assert other["train"].stat().st_mtime_ns == data_at
    assert build_demo_assets(tmp_path, num_train=8, num_val=4, seed=1, overwrite=True) == other
    assert len(read_rows(other["train"])) == 8


def test_cli_assets_demo_as_a_user_runs_it(demo):
    """`bridge-ray assets demo` on the folder built above: it reuses it and prints where everything is."""
    from conftest import run_cli

    weights = demo["model"] / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    out = run_cli("assets", "demo", str(demo["model"].parent), "--num-train", "64", "--num-val", "8", timeout=300)
    assert out.returncode == 0, out.stderr
    assert [line.split() for line in out.stdout.splitlines()] == [[name, str(path)] for name, path in demo.items()]
    assert weights.stat().st_mtime_ns == built_at
    bad = run_cli("assets", "demo", str(demo["model"].parent), "--shape", "llama-70b")
    assert bad.returncode == 2 and "Invalid value for '--shape'" in bad.stderr and "Traceback" not in bad.stderr


def test_llama_1b_shape_matches_the_real_model(tokenizer):
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config("llama-3.2-1b", tokenizer)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (128256, 2048, 16)
    assert config.rope_parameters["rope_type"] == "llama3" and config.tie_word_embeddings
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400


def test_unknown_shape_and_dtype(tmp_path, demo):
    with pytest.raises(ConfigError, match=r"^unknown model shape 'llama-70b'; choose one of: tiny, llama-3.2-1b$"):
        build_llama(tmp_path, shape="llama-70b", tokenizer_dir=demo["model"])
    with pytest.raises(ConfigError, match=r"^unknown dtype 'bf16'; use bfloat16, float16 or float32$"):
        build_llama(tmp_path, dtype="bf16", tokenizer_dir=demo["model"])


@pytest.mark.integration
def test_a_checkpoint_trained_with_another_attention_merges_and_stays_untouched(demo, tmp_path):
    """A GPU run writes its attention (``torch_varlen``: registered only inside verl's workers;
    ``flash_attention_2``: needs flash-attn) into the checkpoint's ``huggingface/config.json``;
    the merger is a fresh process that knows neither. The shards here are the demo model's
    weights saved as a one-rank FSDP checkpoint (plain tensors, as verl's merger reads them):
    CPU training runs only with ``sdpa``, so a real CPU run cannot write these names."""
    import json
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from bridge_ray.models.checkpoints import _merge_view, check_hf_model, merge_to_hf
    from bridge_ray.platforms import cpu_env

    step = tmp_path / "global_step_2"
    (step / "huggingface").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(demo["model"])
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, step / "model_world_size_1_rank_0.pt")
    (step / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for item in demo["model"].iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, step / "huggingface" / item.name)
    config_path = step / "huggingface" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "attn_implementation": "torch_varlen"}))
    written = config_path.read_text()
    merged = merge_to_hf(step, tmp_path / "hf", env=cpu_env())
    assert "attn_implementation" not in json.loads((merged / "config.json").read_text())
    assert check_hf_model(merged, max_new_tokens=2)
    assert config_path.read_text() == written  # the checkpoint is left as it was
    assert sorted(p.name for p in step.iterdir()) == ["fsdp_config.json", "huggingface", "model_world_size_1_rank_0.pt"]
    config_path.write_text(written.replace("torch_varlen", "flash_attention_2"))
    (tmp_path / "view").mkdir()
    view = _merge_view(step, tmp_path / "view")  # what the merger reads: the same for any name
    assert "attn_implementation" not in json.loads((view / "huggingface" / "config.json").read_text())
    assert (view / "model_world_size_1_rank_0.pt").resolve() == step / "model_world_size_1_rank_0.pt"


def test_a_generation_without_text_still_shows_what_was_generated(demo, tmp_path):
    """A merged model's check prints its sample; an untrained model often generates only special tokens or
    ids past its tokenizer (the GPU benchmarks' random 1B shape keeps Llama's 128,256 rows over a 573-id
    tokenizer), whose text is empty, and an empty sample reads as "generated nothing"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridge_ray.models.checkpoints import check_hf_model, describe_tokens

    tokenizer = AutoTokenizer.from_pretrained(demo["model"])
    assert describe_tokens(tokenizer, [1, *tokenizer.encode("12 * 34", add_special_tokens=False)]) == "12 * 34"
    assert describe_tokens(tokenizer, [0, 0]) == "<|pad|><|pad|>"  # special tokens only: their own text
    past = len(tokenizer)
    assert describe_tokens(tokenizer, [past] * 9) == (
        f"<9 token(s) with no text in the tokenizer ({past} ids): {', '.join([str(past)] * 8)}, ...>")
    # The real check on a model whose every step picks a row past the tokenizer (tied embeddings: two
    # opposite rows, so one of them wins whatever the sign of the final hidden state).
    model = AutoModelForCausalLM.from_pretrained(demo["model"])
    assert model.config.vocab_size >= past + 2
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.get_output_embeddings().weight[past] = 1000 * direction
        model.get_output_embeddings().weight[past + 1] = -1000 * direction
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    sample = check_hf_model(tmp_path / "m", max_new_tokens=3)
    assert sample.startswith(f"<3 token(s) with no text in the tokenizer ({past} ids): "), sample

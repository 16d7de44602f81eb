"""Unit tier: the ``torch_varlen`` attention plugin and the hardware probe, on CPU.

torch has no CPU kernel behind ``varlen_attn``, so these tests run the plugin's own logic
(boundaries from position ids, head layout, GQA, scale, the causal flag across torch's
signatures) against a CPU reference kernel (``tests/sft_varlen_reference.py``: sdpa per
sample) and compare a whole tiny Llama with the plugin to the same Llama with sdpa. The real
kernel runs in ``tests/test_sft_fast_path.py`` (marked ``gpu``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bridge_ray.platforms.attention as attention
from bridge_ray import sft
from bridge_ray.platforms import hardware

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture
def reference(monkeypatch):
    """Use the CPU reference kernel for this test (the module's own patch is undone afterwards)."""
    monkeypatch.setattr(attention, "_kernel", attention._kernel)
    import sft_varlen_reference

    sft_varlen_reference.use_reference()
    return sft_varlen_reference.use_reference


def tiny_llama():
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads), fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(torch.float32).eval()


def packed(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of samples with lengths ``lengths`` and position ids restarting at each sample."""
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, positions


def test_the_name_is_registered_and_matches_the_config():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert attention.ATTENTION_NAME == "torch_varlen"
    assert ALL_ATTENTION_FUNCTIONS["torch_varlen"] is attention.varlen_attention_forward
    assert sft.config.ATTENTION_PLUGIN == attention.__name__


@pytest.mark.parametrize("signature", ["2.10", "2.11", "2.12"])
def test_packed_llama_matches_sdpa_sample_by_sample(reference, signature):
    reference(signature)
    model = tiny_llama()
    lengths = [5, 9, 3, 7]
    ids, positions = packed(lengths)
    model.config._attn_implementation = "torch_varlen"
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    model.config._attn_implementation = "sdpa"
    expected, start = [], 0
    with torch.no_grad():
        for n in lengths:
            expected.append(model(input_ids=ids[:, start:start + n]).logits[0])
            start += n
    assert torch.allclose(got, torch.cat(expected), atol=1e-5)


def test_gradients_match_packed_sdpa(reference):
    reference("2.11")
    model = tiny_llama()
    ids, positions = packed([6, 4, 8])
    grads = {}
    for attn in ("torch_varlen", "sdpa"):  # sdpa builds a block-diagonal mask from the position ids
        model.zero_grad()
        model.config._attn_implementation = attn
        model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss.backward()
        grads[attn] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grads["torch_varlen"], grads["sdpa"], atol=1e-5)


def test_boundaries_are_worked_out_once_per_forward(reference, monkeypatch):
    reference("2.12")
    calls = []
    nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: calls.append(1) or nonzero(*a, **k))
    model = tiny_llama()
    model.config._attn_implementation = "torch_varlen"
    ids, positions = packed([4, 4])
    with torch.no_grad():
        model(input_ids=ids, position_ids=positions, use_cache=False)
    assert len(calls) == 1  # 2 decoder layers, one host sync


def test_padded_batches_are_refused_with_the_fix():
    model = tiny_llama()
    model.config._attn_implementation = "torch_varlen"
    with pytest.raises(ValueError, match=r"^attention 'torch_varlen' takes one packed row with position_ids and no "
                                         r"KV cache, got a batch of 2: set sft.model.use_remove_padding=true for "
                                         r"training, or attn_implementation=sdpa$"):
        model(input_ids=torch.zeros(2, 5, dtype=torch.long), use_cache=False)


def test_generation_is_refused_with_the_fix(reference):
    model = tiny_llama()
    model.config._attn_implementation = "torch_varlen"
    with pytest.raises(ValueError, match=r"got a batch of 1: .* or attn_implementation=sdpa$"):
        model.generate(torch.zeros(1, 5, dtype=torch.long), max_new_tokens=2, do_sample=False)


def test_verl_loads_the_plugin_through_model_external_lib(tmp_path):
    """A fresh process: verl's model config imports ``model.external_lib`` before it asks transformers
    for ``torch_varlen`` (nothing else imports the plugin there)."""
    from bridge_ray.models.assets import build_tokenizer, build_llama

    model_dir = tmp_path / "model"
    build_tokenizer(model_dir, ["what is 2 + 3? The answer is 5."] * 8, vocab_size=300)
    build_llama(model_dir, shape="tiny", tokenizer_dir=model_dir)
    cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(model_dir=str(model_dir), output_dir=str(tmp_path / "run")), [])
    overrides = sft.to_verl_overrides(sft.resolve(cfg, sft.Hardware(gpu="x", torch_varlen=True)))
    script = (
        "import sys, json\n"
        "assert 'bridge_ray.platforms.attention' not in sys.modules\n"
        "from bridge_ray.sft.worker import compose_verl_config\n"
        "from verl.utils.config import omega_conf_to_dataclass\n"
        "model = omega_conf_to_dataclass(compose_verl_config(json.loads(sys.argv[1])).model)\n"
        "print(model.hf_config._attn_implementation, 'bridge_ray.platforms.attention' in sys.modules)\n"
    )
    import json

    out = subprocess.run([sys.executable, "-c", script, json.dumps(overrides)], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["torch_varlen", "True"]


def test_probe_on_this_cpu_machine_finds_no_gpu():
    assert not torch.cuda.is_available()  # this tier runs on the CPU machine
    assert hardware.probe() == sft.Hardware()


def test_each_node_probes_once_until_its_packages_change(tmp_path, monkeypatch):
    """The probe's answer is kept in the cluster's temp dir; a package installed into a folder on sys.path
    (its change time moves) or an unreadable cache makes the node probe again. probe() is replaced by a
    counter: the real one needs a GPU to say anything but "no GPU"."""
    calls = []
    h100 = sft.Hardware(gpu="NVIDIA H100 80GB HBM3", torch_varlen=True, liger=True, triton=True)
    monkeypatch.setattr(hardware, "probe", lambda: calls.append(1) or h100)
    monkeypatch.setenv(hardware.TEMP_DIR_ENV, str(tmp_path / "ray"))
    (tmp_path / "ray").mkdir()
    packages = tmp_path / "site-packages"
    packages.mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(packages), str(tmp_path / "ray" / "working_dir")])
    assert hardware.cached_probe() == h100 and hardware.cached_probe() == h100 and len(calls) == 1
    (tmp_path / "ray" / "working_dir").mkdir()  # a job's working_dir, in the Ray temp dir: not the node's software
    assert hardware.cached_probe() == h100 and len(calls) == 1
    (packages / "flash_attn").mkdir()
    os.utime(packages, ns=(0, os.stat(packages).st_mtime_ns + 1))  # coarse clocks: make the change visible
    assert hardware.cached_probe() == h100 and len(calls) == 2
    (tmp_path / "ray" / hardware.CACHE_FILE).write_text("{not json")
    assert hardware.cached_probe() == h100 and len(calls) == 3
    assert hardware.cached_probe() == h100 and len(calls) == 3
    monkeypatch.delenv(hardware.TEMP_DIR_ENV)  # outside a bridge-ray cluster: no cache
    assert hardware.cached_probe() == h100 and len(calls) == 4


def test_models_with_sliding_windows_are_refused(reference):
    model = tiny_llama()
    model.config._attn_implementation = "torch_varlen"
    _, positions = packed([3, 3])
    layer = model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 6, 16)
    with pytest.raises(ValueError, match=r"^attention 'torch_varlen' does not do sliding_window \(this model uses it\): "
                                         r"set sft.model.attn_implementation=sdpa or flash_attention_2$"):
        attention.varlen_attention_forward(layer, q, q[:, :2], q[:, :2], None, position_ids=positions,
                                           sliding_window=4)


def test_compiled_layers_give_the_same_loss_and_gradients_across_row_lengths(reference):
    """``sft.model.compile_layers`` on the packed path: one compiled function serves every layer and every row
    length (dynamic shapes), the varlen attention stays eager between the two graphs of a layer. torch's
    ``aot_eager`` backend here (what dynamo and autograd see; the inductor run is in test_sft_train.py)."""
    import copy

    import torch._dynamo

    from bridge_ray.platforms.compiled_layers import compile_decoder_layers, decoder_layers

    reference("2.11")
    eager = tiny_llama().train()
    eager.config._attn_implementation = "torch_varlen"
    compiled = copy.deepcopy(eager)
    assert decoder_layers(compiled) is compiled.model.layers
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_decoder_layers(compiled, backend="aot_eager") == 2
    graphs = []
    for lengths in ([5, 9, 3, 7], [6, 11, 2], [8, 8, 8, 8, 1]):
        ids, positions = packed(lengths)
        results = []
        for model in (eager, compiled):
            model.zero_grad()
            loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss
            loss.backward()
            results.append((loss.detach(), [p.grad for p in model.parameters()]))
        assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[-1] and graphs[0] <= 4  # compiled once, for the first row of the first layer


def test_a_model_without_a_layer_stack_is_refused_by_name():
    from bridge_ray.platforms.compiled_layers import compile_decoder_layers

    with pytest.raises(ValueError, match="^Linear has no stack of decoder layers to compile: set "
                                         "sft.model.compile_layers=false$"):
        compile_decoder_layers(torch.nn.Linear(2, 2))

"""Unit tier: sentencepiece tokenizer training (in-process, no Ray), its Hugging Face form, bad input.

The Ray-task path (``tokenizer.train``) runs in the chain test on a real local cluster.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_ray import tokenizer
from bridge_ray.data.text import generate_synthetic_text
from bridge_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TEXT = ("Once upon a time, there was a cat named Lily.\n  Two  spaces, digits 12345, tabs\t and"
        " ünïcødé — 日本語のテキスト 🙂")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tuple(map(str, generate_synthetic_text(tmp_path_factory.mktemp("text"), num_docs=400, num_shards=2)))


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def trained(request, shards, tmp_path_factory):
    cfg = tokenizer.TokenizerConfig(files=shards, model_type=request.param, vocab_size=300, num_threads=2,
                                    output_dir=str(tmp_path_factory.mktemp(request.param)))
    return tokenizer.train_here(cfg)


def test_round_trips_text_and_loads_in_transformers(trained):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(trained.output_dir)
    sp = spm.SentencePieceProcessor(model_file=str(trained.model_file))
    ids = hf(TEXT).input_ids
    assert ids[0] == hf.bos_token_id and hf.decode(ids, skip_special_tokens=True) == TEXT
    assert ids[1:] == sp.encode(TEXT) and sp.decode(sp.encode(TEXT)) == TEXT
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
    assert len(hf) == trained.vocab_size == 300


def test_chat_template_turns_tokenize_alone_as_in_the_whole(trained):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(trained.output_dir)
    messages = [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a time."}]
    whole = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    first = hf.apply_chat_template(messages[:1], tokenize=True, return_dict=True)["input_ids"]
    assert whole[:len(first)] == first and whole.count(hf.bos_token_id) == 1
    eot = hf.convert_tokens_to_ids("<|eot_id|>")
    assert hf.convert_ids_to_tokens(whole).count("<|eot_id|>") == 2 and eot in whole


def test_vocab_larger_than_the_data_is_one_line(shards, tmp_path):
    cfg = tokenizer.TokenizerConfig(files=shards, vocab_size=5000, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^tokenizer.vocab_size=5000 is larger than these files support \(at most "
                                          r"\d+\): lower tokenizer.vocab_size or add text$"):
        tokenizer.train_here(cfg)


def test_bad_values_are_listed_together():
    cfg = tokenizer.TokenizerConfig(vocab_size=100, output_dir="rel", num_cpus=0, character_coverage=2.0)
    with pytest.raises(ConfigError) as err:
        tokenizer.validate(cfg)
    assert err.value.problems == [
        "tokenizer.files is empty: set tokenizer.files=[/abs/a.jsonl,/abs/b.jsonl]",
        "tokenizer.output_dir='rel' must be an absolute path",
        "tokenizer.vocab_size=100 is too small: it holds 256 byte pieces and 7 special tokens; use at least 264",
        "tokenizer.character_coverage=2.0 must be in (0, 1]",
        "tokenizer.num_cpus=0 must be >= 1",
    ]


def test_an_output_dir_holding_something_else_is_refused_and_a_rerun_trains_nothing(shards, trained, tmp_path):
    """The tokenizer was written into any folder: a merged model's tokenizer.json was replaced silently, and a
    rerun with another vocabulary replaced a finished tokenizer."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    cfg = tokenizer.TokenizerConfig(files=shards, vocab_size=300, output_dir=str(model))
    with pytest.raises(ConfigError) as err:
        tokenizer.validate(cfg)
    assert err.value.problems == [
        f"tokenizer.output_dir={model} is not empty (config.json, tokenizer.json): the new tokenizer's files would "
        "replace or sit beside those; choose a new or empty folder, or set tokenizer.overwrite=true"]
    assert tokenizer.validate(tokenizer.TokenizerConfig(files=shards, vocab_size=300, output_dir=str(model),
                                                        overwrite=True))
    done = tokenizer.TokenizerConfig(files=shards, model_type=trained.output_dir.name.rstrip("0123456789"),
                                     vocab_size=300, num_threads=2, output_dir=str(trained.output_dir))
    assert tokenizer.trained_before(done) and tokenizer.validate(done)  # the same settings: a rerun is fine
    assert tokenizer.trained_before(dataclasses.replace(done, num_threads=1, num_cpus=4))  # not a setting of the model
    other = dataclasses.replace(done, vocab_size=400, text_key="body")
    with pytest.raises(ConfigError) as err:
        tokenizer.validate(other)
    assert err.value.problems == [
        f"tokenizer.output_dir={trained.output_dir} holds a tokenizer trained otherwise (text_key, vocab_size differ): "
        "choose a new folder, or set tokenizer.overwrite=true to replace it"]
    fewer = dataclasses.replace(done, files=shards[:1])
    assert not tokenizer.trained_before(fewer)
    assert "(files, the input files (their list, sizes or times) differ)" in str(pytest.raises(
        ConfigError, tokenizer.validate, fewer).value)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "tokenizer.model").write_bytes(b"cut short")
    assert tokenizer.output_problem(dataclasses.replace(done, output_dir=str(unfinished))) is None
    (tmp_path / "file").write_text("")
    assert tokenizer.output_problem(dataclasses.replace(done, output_dir=str(tmp_path / "file"))) == (
        f"tokenizer.output_dir={tmp_path / 'file'} is a file: give a folder")


def recipe(*args, home):
    return subprocess.run([sys.executable, "recipes/train_tokenizer.py", *args], cwd=REPO, capture_output=True,
                          text=True, env={**__import__("os").environ, "BRIDGE_RAY_HOME": str(home)}, timeout=120)


def test_recipe_dry_run_and_bad_input(tmp_path):
    shown = recipe("--dry-run", "tokenizer.vocab_size=32000", "tokenizer.model_type=bpe", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["vocab_size"] == 32000
    bad = recipe("tokenizer.vocab_size=lots", home=tmp_path)
    assert (bad.returncode, bad.stderr) == (2, "error: tokenizer.vocab_size='lots' is not an integer\n")
    field = tmp_path / "a.jsonl"
    field.write_text('{"body": "text"}\n')
    missing = recipe(f"tokenizer.files=[{field}]", home=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == f"error: {field}: line 1 has no text field 'text' (it has: body); set tokenizer.text_key=body\n"

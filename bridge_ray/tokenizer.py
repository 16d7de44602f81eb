"""Train a sentencepiece tokenizer on raw text, as a Ray task, and save it for sentencepiece and transformers.

The older workflow ran ``spm_train --vocab_size 32000 --input_sentence_size 3000000
--shuffle_input_sentence True --num_threads 16`` over jsonl files by hand. Here ``TokenizerConfig``
holds the same knobs, ``train(cfg)`` checks the files first (a missing text field or an empty
file is one line), then trains in a Ray task that holds ``num_cpus`` CPUs and gives sentencepiece
that many threads. It writes into ``output_dir``:

    tokenizer.model         the sentencepiece model (``spm.SentencePieceProcessor(model_file=...)``)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                            the same vocabulary as a Hugging Face fast tokenizer: Llama-3-style
                            special tokens (BOS added in front of every text), a chat template

Sentencepiece runs with identity normalisation, no dummy prefix, split digits and byte fallback,
so any text round-trips exactly and a chat turn tokenizes the same alone or inside a whole
conversation (verl's multi-turn SFT dataset checks that). The Hugging Face tokenizer is built from
the sentencepiece vocabulary (unigram or BPE), so both give the same pieces.

Example:
    >>> cfg = TokenizerConfig(files=("/data/a.jsonl", "/data/b.jsonl"), vocab_size=32000,
    ...                       output_dir="/abs/tokenizer", num_cpus=16)
    >>> train(cfg).output_dir
    PosixPath('/abs/tokenizer')
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge_ray.config import apply_overrides as apply_dotted, too_small
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.models.assets import BOS, CHAT_TEMPLATE, EOS, EOT, HEADER_END, HEADER_START, PAD
from bridge_ray.recipe import recipe_main

UNK = "<unk>"
USER_SYMBOLS = (HEADER_START, HEADER_END, EOT)
MODEL_FILE = "tokenizer.model"
# sentencepiece's own message when the data cannot fill the vocabulary
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


@dataclass(frozen=True)
class TokenizerConfig:
    """One tokenizer training run. Override as ``tokenizer.<key>=...``.

    Attributes:
        files: jsonl (a text field), txt or parquet files; every line of every document is a sentence.
        text_key: the jsonl field / parquet column holding the text (dotted for nested fields).
        model_type: ``unigram`` (sentencepiece's default) or ``bpe``.
        vocab_size: pieces in the vocabulary, special tokens and the 256 byte pieces included.
        input_sentence_size: sentences sampled for training (0: all), as ``spm_train``'s flag.
        shuffle_input_sentence: sample at random (True) or take the first ones.
        character_coverage: share of characters covered by pieces; the rest fall back to bytes.
        max_sentence_length: longer sentences (in bytes) are skipped by sentencepiece.
        num_cpus: CPUs of the Ray task that trains.
        num_threads: sentencepiece threads; 0 means the task's CPUs.
        output_dir: absolute folder for the model files: new, empty, or holding this tokenizer already (then
            a rerun with the same settings and input files trains nothing).
        overwrite: write into an ``output_dir`` that holds other files or a tokenizer trained otherwise.
    """

    files: tuple[str, ...] = ()
    text_key: str = "text"
    model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 32000
    input_sentence_size: int = 3_000_000
    shuffle_input_sentence: bool = True
    character_coverage: float = 0.9995
    max_sentence_length: int = 16384
    num_cpus: int = 1
    num_threads: int = 0
    output_dir: str = ""
    overwrite: bool = False


@dataclass(frozen=True)
class TokenizerResult:
    """What ``train`` wrote: the folder (HF files + ``tokenizer.model``), the vocabulary size, a digest."""

    output_dir: Path
    model_file: Path
    vocab_size: int
    sha256: str


def validate(cfg: TokenizerConfig) -> TokenizerConfig:
    """Check the config's values (not the files); return it unchanged.

    Raises:
        ConfigError: listing every problem with its fix.
    """
    problems = [] if cfg.files else ["tokenizer.files is empty: set tokenizer.files=[/abs/a.jsonl,/abs/b.jsonl]"]
    if not cfg.output_dir or not os.path.isabs(cfg.output_dir):
        problems.append(f"tokenizer.output_dir={cfg.output_dir!r} must be an absolute path")
    minimum = 256 + 4 + len(USER_SYMBOLS) + 1
    if cfg.vocab_size < minimum:
        problems.append(f"tokenizer.vocab_size={cfg.vocab_size} is too small: it holds 256 byte pieces and "
                        f"{4 + len(USER_SYMBOLS)} special tokens; use at least {minimum}")
    problems += too_small(0, {"tokenizer.input_sentence_size": cfg.input_sentence_size}, " (0: all)")
    problems += too_small(1, {"tokenizer.max_sentence_length": cfg.max_sentence_length})
    if not 0 < cfg.character_coverage <= 1:
        problems.append(f"tokenizer.character_coverage={cfg.character_coverage} must be in (0, 1]")
    problems += too_small(1, {"tokenizer.num_cpus": cfg.num_cpus})
    problems += too_small(0, {"tokenizer.num_threads": cfg.num_threads}, " (0: the task's CPUs)")
    if not problems and (problem := output_problem(cfg)):
        problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return cfg


STAMP_FILE = "bridge_ray_tokenizer.json"
# What train_here writes: a folder holding only these (and no stamp) is an unfinished run of its own.
OWN_FILES = frozenset({MODEL_FILE, "tokenizer.vocab", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "chat_template.jinja", STAMP_FILE})
_NOT_SETTINGS = frozenset({"output_dir", "num_cpus", "num_threads", "overwrite"})  # the same tokenizer either way


def _stamp(cfg: TokenizerConfig) -> dict:
    """The settings that make the tokenizer, and each input file's size and modification time."""
    inputs = [[path, os.stat(path).st_size, os.stat(path).st_mtime_ns] for path in cfg.files if os.path.isfile(path)]
    return {**dataclasses.asdict(cfg), "inputs": inputs}


def _differences(saved: dict, cfg: TokenizerConfig) -> list[str]:
    now = json.loads(json.dumps(_stamp(cfg)))  # as the stamp file holds it (lists, not tuples)
    changed = [k for k in now if k not in _NOT_SETTINGS and k != "inputs" and saved.get(k, now[k]) != now[k]]
    if saved.get("inputs") != now["inputs"]:
        changed.append("the input files (their list, sizes or times)")
    return changed


def _saved_stamp(out: Path) -> dict | None:
    try:
        saved = json.loads((out / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def trained_before(cfg: TokenizerConfig) -> bool:
    """Whether ``output_dir`` holds the tokenizer these settings and input files make (a finished earlier run)."""
    out = Path(cfg.output_dir)
    saved = _saved_stamp(out)
    return saved is not None and (out / MODEL_FILE).is_file() and not _differences(saved, cfg)


def output_problem(cfg: TokenizerConfig) -> str | None:
    """Why training into ``output_dir`` would overwrite or mix with something (without ``overwrite``); None if not."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        return f"tokenizer.output_dir={out} is a file: give a folder"
    if cfg.overwrite or not out.is_dir():
        return None
    names = {p.name for p in out.iterdir()}
    if not names or trained_before(cfg):
        return None
    saved = _saved_stamp(out)
    if saved is not None:
        return (f"tokenizer.output_dir={out} holds a tokenizer trained otherwise ({', '.join(_differences(saved, cfg))} "
                "differ): choose a new folder, or set tokenizer.overwrite=true to replace it")
    if names <= OWN_FILES:
        return None  # an unfinished run of this trainer: nothing of anyone else's
    shown = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
    return (f"tokenizer.output_dir={out} is not empty ({shown}): the new tokenizer's files would replace or sit beside "
            "those; choose a new or empty folder, or set tokenizer.overwrite=true")


def sentences(cfg: TokenizerConfig) -> Iterator[str]:
    """Every non-empty line of every document: what sentencepiece samples from."""
    from bridge_ray.data.text import iter_documents

    for document in iter_documents(cfg.files, cfg.text_key):
        yield from (line for line in document.splitlines() if line.strip())


def _trainer_args(cfg: TokenizerConfig, threads: int) -> dict:
    return dict(
        model_type=cfg.model_type, vocab_size=cfg.vocab_size, input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=cfg.shuffle_input_sentence, character_coverage=cfg.character_coverage,
        max_sentence_length=cfg.max_sentence_length, num_threads=threads,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        user_defined_symbols=list(USER_SYMBOLS), minloglevel=2,
    )


def _vocab_error(cfg: TokenizerConfig, err: RuntimeError) -> ConfigError:
    text = str(err)
    if match := _TOO_HIGH.search(text):
        return ConfigError(f"tokenizer.vocab_size={cfg.vocab_size} is larger than these files support (at most "
                           f"{match.group(2)}): lower tokenizer.vocab_size or add text")
    if match := _TOO_SMALL.search(text):
        return ConfigError(f"tokenizer.vocab_size={cfg.vocab_size} is smaller than the {match.group(2)} distinct "
                           "characters kept: raise tokenizer.vocab_size or lower tokenizer.character_coverage")
    return ConfigError(f"sentencepiece refused the data: {text.strip().splitlines()[-1]}")


def hf_tokenizer(model_file: str | Path):
    """A transformers fast tokenizer with the sentencepiece model's vocabulary, special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    spm_model = SentencePieceExtractor(str(model_file))
    unigram = spm_model.proto.trainer_spec.model_type == 1
    found = spm_model.extract(models.Unigram if unigram else models.BPE)
    if unigram:
        model = models.Unigram(found["vocab"], unk_id=found["unk_id"], byte_fallback=True)
    else:
        model = models.BPE(found["vocab"], found["merges"], unk_token=UNK, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                      pad_token=PAD, chat_template=CHAT_TEMPLATE)
    wrapped.add_special_tokens({"additional_special_tokens": list(USER_SYMBOLS)})
    return wrapped


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


def train_here(cfg: TokenizerConfig, threads: int | None = None) -> TokenizerResult:
    """Train in this process (what the Ray task runs); ``threads`` defaults to ``cfg.num_threads`` or 1.

    Raises:
        ConfigError: the data cannot give the vocabulary asked for.
    """
    import sentencepiece as spm

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(cfg), model_prefix=str(out / "tokenizer"),
                                       **_trainer_args(cfg, threads or cfg.num_threads or 1))
    except RuntimeError as err:
        raise _vocab_error(cfg, err) from None
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    hf_tokenizer(out / MODEL_FILE).save_pretrained(out)
    (out / STAMP_FILE).write_text(json.dumps(_stamp(cfg), indent=2))
    return _result(out)


def _result(out: Path) -> TokenizerResult:
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_file=str(out / MODEL_FILE)).get_piece_size()
    return TokenizerResult(out, out / MODEL_FILE, size, _digest(out))


def _task(cfg: TokenizerConfig) -> TokenizerResult | str:
    """The Ray task: sentencepiece threads = the CPUs Ray gave it; a user error comes back as its message."""
    import ray

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
    try:
        return train_here(cfg, cfg.num_threads or cpus)
    except ConfigError as err:
        return str(err)


def cpus_problem(cfg: TokenizerConfig, nodes: list[dict]) -> str | None:
    """Why no alive node can hold the training task's ``num_cpus`` (Ray would wait for one forever); None if one can."""
    most = max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=0)
    if cfg.num_cpus <= most:
        return None
    return (f"tokenizer.num_cpus={cfg.num_cpus}, but the largest node of the cluster has {most} CPUs and the "
            f"tokenizer trains on one node: set tokenizer.num_cpus={most} or less")


def fits(cfg: TokenizerConfig, nodes: list[dict]) -> None:
    """Raise PreflightError unless a node of ``nodes`` can hold the training task (``submit`` asks first)."""
    if problem := cpus_problem(cfg, nodes):
        raise PreflightError(problem)


def train(cfg: TokenizerConfig) -> TokenizerResult:
    """Check the files, train in a Ray task with ``cfg.num_cpus`` CPUs, save both formats.

    Runs inside a job's driver (``bridge-ray submit recipes/train_tokenizer.py``); attaches to the cluster.

    Returns:
        The ``TokenizerResult``; also recorded as the run's ``output_dir``.

    Raises:
        ConfigError: a bad value, a missing file or text field, an empty file, or a vocabulary the
            data cannot fill (each one line, with its fix).
        PreflightError: no node of the cluster has ``num_cpus`` CPUs.
    """
    import ray

    from bridge_ray.cluster import driver
    from bridge_ray.data.text import check_text_files
    from bridge_ray.runs import lifecycle

    validate(cfg)
    check_text_files(cfg.files, cfg.text_key, "tokenizer.files")
    driver.connect()
    lifecycle.start(cfg.output_dir)  # no checkpoint, so no finish_model: the tokenizer is the output dir
    if trained_before(cfg):
        result = _result(Path(cfg.output_dir))
        print(f"[bridge-ray] tokenizer: {result.output_dir} holds it already (the same settings and input files): "
              f"{result.vocab_size} pieces ({cfg.model_type}); nothing trained", flush=True)
        return result
    fits(cfg, driver.alive_nodes())
    outcome = ray.get(ray.remote(num_cpus=cfg.num_cpus)(_task).remote(cfg))
    if isinstance(outcome, str):
        raise ConfigError(outcome)
    print(f"[bridge-ray] tokenizer: {outcome.vocab_size} pieces ({cfg.model_type}) -> {outcome.output_dir}", flush=True)
    return outcome


def apply_overrides(cfg: TokenizerConfig, overrides: list[str]) -> TokenizerConfig:
    """``cfg`` with dotted ``tokenizer.<key>=value`` overrides (the prefix is optional)."""
    return apply_dotted(cfg, overrides, prefix="tokenizer")


def main(config, argv: list[str] | None = None, before=None) -> TokenizerResult | None:
    """A recipe's body: ``config(argv)`` then ``train``; ``--dry-run`` prints the config instead.

    ``before(cfg)``, when given, runs first on the cluster (e.g. to write demo text). Errors print as
    one ``error: ...`` line and exit with their code (2 for bad input).
    """
    return recipe_main(argv, lambda args: validate(config(args)), dataclasses.asdict, train, before=before)

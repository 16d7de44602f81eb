"""Raw text for tokenizer training and pretraining: real files read as streams, and an offline generator.

Supported files, read one document at a time (never whole in memory):

- ``.jsonl``: one JSON object per line; the document is the ``text_key`` field (dotted keys reach
  nested fields, e.g. ``meta.body``), as the older workflow's corpora hold it;
- ``.txt``: plain text; documents are separated by blank lines;
- ``.parquet``: a string column named ``text_key``, read in record batches.

``check_text_files`` reads the start of each file so that a wrong field, an empty file or an
unsupported type is one line before anything starts; ``iter_documents`` streams the rest.
``generate_synthetic_text`` writes short stories from templates (nothing is downloaded), so the
tests and the demo have text whose loss visibly falls and a prompt ("Once upon a time,") the model
can continue.

Example:
    >>> shards = generate_synthetic_text("/abs/text", num_docs=2000, num_shards=2)
    >>> check_text_files(shards, "text")
    >>> sum(1 for _ in iter_documents(shards, "text"))
    2000
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from bridge_ray.errors import ConfigError

SUFFIXES = (".jsonl", ".txt", ".parquet")
CHECKED_ROWS = 100


def _field(row: dict, key: str):
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _key_hint(string_fields: list[str], key: str) -> str:
    """How to point the text key (``key``: its config name) at the text: the file's one text field, else any."""
    if len(string_fields) == 1:
        return f"set {key}={string_fields[0]}"
    if string_fields:
        return f"set {key} to the field that holds the text, e.g. {key}={string_fields[0]}"
    return f"set {key} to the field that holds the text (dotted for a nested one, e.g. {key}=meta.body)"


def _jsonl_documents(path: Path, text_key: str, key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove it") from None
            text = _field(row, text_key) if isinstance(row, dict) else None
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"{path}: line {number}: field {text_key!r} holds {type(text).__name__} "
                                  f"{json.dumps(text)[:40]}, not text; each row's {text_key!r} must be a string")
            if not isinstance(text, str):
                found = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                strings = sorted(k for k, v in row.items() if isinstance(v, str)) if isinstance(row, dict) else []
                raise ConfigError(f"{path}: line {number} has no text field {text_key!r} (it has: {found}); "
                                  f"{_key_hint(strings, key)}")
            if text.strip():
                yield text


def _txt_documents(path: Path) -> Iterator[str]:
    block: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


def _parquet_documents(path: Path, text_key: str, key: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if text_key not in parquet.schema_arrow.names:
            strings = [f.name for f in parquet.schema_arrow if str(f.type) in ("string", "large_string")]
            raise ConfigError(f"{path}: no column {text_key!r} (it has: {', '.join(parquet.schema_arrow.names)}); "
                              f"{_key_hint(strings, key)}")
        for batch in parquet.iter_batches(columns=[text_key], batch_size=1024):
            yield from (text for text in batch.column(0).to_pylist() if isinstance(text, str) and text.strip())
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"{path}: not a readable parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                          "pass a parquet file, or the text as .jsonl or .txt") from None


def _decoded(documents: Iterator[str], path: Path) -> Iterator[str]:
    try:
        yield from documents
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None


def documents(path: str | Path, text_key: str = "text", key: str = "text_key") -> Iterator[str]:
    """The non-empty documents of one file, streamed (``key``: the text key's config name, for the hint).

    Raises:
        ConfigError: the file is missing, of an unsupported type, or a row lacks ``text_key``.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl (a text field), .txt or .parquet")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass existing .jsonl, .txt or .parquet files")
    if path.suffix == ".jsonl":
        return _decoded(_jsonl_documents(path, text_key, key), path)
    if path.suffix == ".parquet":
        return _parquet_documents(path, text_key, key)
    return _decoded(_txt_documents(path), path)


def iter_documents(paths: Sequence[str | Path], text_key: str = "text") -> Iterator[str]:
    """Every document of every file, in order."""
    for path in paths:
        yield from documents(path, text_key)


def check_text_files(paths: Sequence[str | Path], text_key: str = "text", what: str = "data.train_files") -> None:
    """Read the start of each file: it exists, has a supported type, holds ``text_key`` and some text.

    Raises:
        ConfigError: listing every file with a problem, each with its fix.
    """
    if not paths:
        raise ConfigError(f"{what} is empty: pass one or more .jsonl/.txt/.parquet files")
    key = f"{what.rpartition('.')[0]}.text_key".lstrip(".")  # tokenizer.files -> tokenizer.text_key
    problems = []
    for path in paths:
        try:
            found = sum(1 for _, _ in zip(range(CHECKED_ROWS), documents(path, text_key, key)))
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        if not found:
            problems.append(f"{path}: no text in it (empty, or every {text_key!r} is blank); pass files that hold text")
    if problems:
        raise ConfigError(problems)


# ---- offline text --------------------------------------------------------------------------------

NAMES = ("Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam")
ANIMALS = ("cat", "dog", "bird", "fox", "rabbit", "bear", "duck", "frog")
PLACES = ("a small house", "a big forest", "a quiet town", "a sunny farm", "a tall tree", "a blue lake")
THINGS = ("a red ball", "a shiny stone", "a little boat", "an old map", "a warm hat", "a yellow kite")
FEELINGS = ("happy", "sad", "brave", "tired", "curious", "scared")
ENDINGS = ("From that day on, they were best friends.", "They laughed and went home together.",
           "And everyone was happy again.", "It was the best day ever.")


def story(rng: random.Random, name: str | None = None, animal: str | None = None) -> str:
    """One short template story that starts with "Once upon a time,"; ``name``/``animal`` fix its hero."""
    name = name or rng.choice(NAMES)
    friend = rng.choice([n for n in NAMES if n != name])
    animal, place, thing = animal or rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    feeling, later = rng.choice(FEELINGS), rng.choice(FEELINGS)
    return (f"Once upon a time, there was a {animal} named {name} who lived in {place}. "
            f"One day, {name} found {thing}. {name} felt {feeling}. "
            f"{name} showed {thing} to a friend named {friend}. {friend} was {later}. "
            f"They played with {thing} until the sun went down. {rng.choice(ENDINGS)}")


def synthetic_documents(num_docs: int, seed: int = 0) -> Iterator[str]:
    """``num_docs`` template stories (same seed, same text)."""
    rng = random.Random(seed)
    return (story(rng) for _ in range(num_docs))


def generate_synthetic_text(out_dir: str | Path, num_docs: int = 2000, num_shards: int = 2, seed: int = 0,
                            text_key: str = "text") -> list[Path]:
    """Write ``num_docs`` template stories as ``num_shards`` jsonl shards (``{text_key: ...}`` per line).

    Returns:
        The shard paths, ``text-00000.jsonl``, ... under ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [out_dir / f"text-{i:05d}.jsonl" for i in range(num_shards)]
    handles = [open(path, "w", encoding="utf-8") for path in shards]
    try:
        for i, text in enumerate(synthetic_documents(num_docs, seed)):
            handles[i % num_shards].write(json.dumps({text_key: text}) + "\n")
    finally:
        for handle in handles:
            handle.close()
    return shards


def demo_text(root: str | Path, num_docs: int = 3000, num_val_docs: int = 200, seed: int = 0,
              create: bool = True) -> tuple[list[Path], list[Path]]:
    """Offline demo text under ``root``: (train shards, validation shards), written once and reused.

    A stamp records the arguments; matching stamp and files mean nothing is written again.
    ``create=False`` only names the paths (for a config built on the submitting machine).
    """
    root = Path(root)
    stamp = {"num_docs": num_docs, "num_val_docs": num_val_docs, "seed": seed}
    train = [root / "train" / f"text-{i:05d}.jsonl" for i in range(2)]
    val = [root / "val" / "text-00000.jsonl"]
    stamp_file = root / "bridge_ray_text.json"
    current = stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
    if not create or current and all(p.is_file() for p in train + val):
        return train, val
    generate_synthetic_text(root / "train", num_docs=num_docs, num_shards=2, seed=seed)
    generate_synthetic_text(root / "val", num_docs=num_val_docs, num_shards=1, seed=seed + 1)
    stamp_file.write_text(json.dumps(stamp))
    return train, val

"""Raw text shards -> token shards: documents tokenized once, streamed, into memory-mapped files.

Each input file (jsonl/txt/parquet, see ``bridge_ray.data.text``) is read one document at a time
by its own Ray task and written as ``<name>.bin`` (token ids, ``uint16`` when the vocabulary fits,
else ``uint32``) beside ``<name>.json`` (dtype, token and document counts, the source's size and
mtime, the tokenizer's digest). Every document is ``BOS + tokens + EOS``; documents follow each
other with nothing between them, which is what "concatenated and cut into fixed-length sequences"
means: ``bridge_ray.pretrain.dataset`` reads fixed windows across the concatenation.

A shard whose sidecar matches the source and tokenizer is not tokenized again, so a resubmitted
run (or a second run on the same data) starts training at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

BATCH_DOCS = 512


@dataclass(frozen=True)
class TokenShard:
    """One tokenized file: the ``.bin`` path and what its sidecar says."""

    path: Path
    dtype: str
    num_tokens: int
    num_documents: int


def tokenizer_digest(tokenizer_dir: str | Path) -> str:
    """sha256 of the tokenizer's ``tokenizer.json`` (what decides the ids)."""
    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()


def _sidecar(source: Path, digest: str) -> dict:
    stat = source.stat()
    return {"source": str(source), "size": stat.st_size, "mtime": stat.st_mtime, "tokenizer": digest}


def shard_path(source: str | Path, out_dir: str | Path) -> Path:
    """Where ``source``'s tokens go: ``out_dir/<stem>-<hash of the path>.bin`` (names stay unique)."""
    source = Path(source)
    tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
    return Path(out_dir) / f"{source.stem}-{tag}.bin"


def read_shard(path: str | Path) -> TokenShard:
    """The ``TokenShard`` of a written ``.bin`` (from its sidecar)."""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return TokenShard(Path(path), meta["dtype"], meta["num_tokens"], meta["num_documents"])


def _current(source: Path, target: Path, digest: str) -> TokenShard | None:
    side = target.with_suffix(".json")
    if not (side.is_file() and target.is_file()):
        return None
    meta = json.loads(side.read_text())
    wanted = _sidecar(source, digest)
    return read_shard(target) if all(meta.get(k) == v for k, v in wanted.items()) else None


def tokenize_file(source: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                  text_key: str = "text") -> TokenShard:
    """Tokenize one file into ``shard_path(source, out_dir)``, streaming; reuse it when still current."""
    source, digest = Path(source), tokenizer_digest(tokenizer_dir)
    target = shard_path(source, out_dir)
    if (done := _current(source, target, digest)) is not None:
        return done
    import numpy as np
    from transformers import AutoTokenizer

    from bridge_ray.data.text import documents

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    partial, tokens, docs, batch = target.with_suffix(".partial"), 0, 0, []

    def flush(f) -> int:
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        rows = [([bos] if bos is not None else []) + row + [eos] for row in ids]
        array = np.fromiter((t for row in rows for t in row), dtype=dtype)
        array.tofile(f)
        batch.clear()
        return len(array)

    with open(partial, "wb") as f:
        for text in documents(source, text_key):
            batch.append(text)
            docs += 1
            if len(batch) == BATCH_DOCS:
                tokens += flush(f)
        if batch:
            tokens += flush(f)
    partial.replace(target)
    meta = {**_sidecar(source, digest), "dtype": np.dtype(dtype).name, "num_tokens": tokens, "num_documents": docs}
    target.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return TokenShard(target, meta["dtype"], tokens, docs)


def tokenize_files(files: tuple[str, ...], tokenizer_dir: str, out_dir: str | Path, text_key: str = "text",
                   cpus_per_task: int = 1) -> list[TokenShard]:
    """Tokenize every file in its own Ray task (``cpus_per_task`` CPUs each); shards in input order.

    Shards still current are read here, without a task: a resubmitted run starts its workers at once.
    """
    digest = tokenizer_digest(tokenizer_dir) if files else ""
    done = [_current(Path(path), shard_path(path, out_dir), digest) for path in files]
    todo = [i for i, shard in enumerate(done) if shard is None]
    if todo:
        import ray

        task = ray.remote(num_cpus=cpus_per_task)(tokenize_file)
        made = ray.get([task.remote(files[i], tokenizer_dir, str(out_dir), text_key) for i in todo])
        for i, shard in zip(todo, made):
            done[i] = shard
    return done

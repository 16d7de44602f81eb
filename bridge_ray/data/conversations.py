"""Conversations for instruction tuning: OpenAssistant-style message trees flattened to message lists.

OpenAssistant (oasst1/oasst2) ships conversations as trees: a prompter message, several ranked
assistant replies, prompter follow-ups under each, and so on. Two layouts are read:

- **trees** (``*.trees.jsonl``): one tree per line, ``{"message_tree_id", "prompt": {"role", "text",
  "rank", "deleted", "lang", "replies": [...]}}``;
- **message rows** (``*.messages.jsonl`` or the Hub's parquet): one message per row with
  ``message_id``, ``parent_id`` (null at the root), ``role``, ``text``, ``rank``, ``deleted``, ``lang``.

``flatten`` turns a tree into message lists: ``mode="top"`` follows the best-ranked reply at every
turn (one conversation per tree, as the oasst "top-1" sets do); ``mode="all"`` keeps every path from
the root to a leaf. Roles become ``user``/``assistant``, deleted messages and their subtrees are
dropped, and a conversation ends on an assistant turn. Files that already hold a ``messages``
column pass through. ``convert_conversations`` writes the ``messages`` parquet verl's SFT reads;
``generate_synthetic_conversations`` writes oasst-style trees offline for tests and the demo.

Example:
    >>> convert_conversations(["/data/oasst2.trees.jsonl"], "/abs/chat.parquet", lang="en")
    (PosixPath('/abs/chat.parquet'), 12345)
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from bridge_ray.errors import ConfigError

ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}
Mode = Literal["top", "all"]


def _rows(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass OpenAssistant .jsonl/.parquet files (trees or message rows)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    if path.suffix not in (".jsonl", ".json"):
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}: line {number} is not valid JSON ({err.msg}); "
                                      "fix or remove it") from None


def _trees_from_rows(rows: list[dict]) -> list[dict]:
    """Nested trees (``replies``) from flat message rows linked by ``parent_id``."""
    nodes = {row["message_id"]: {**row, "replies": []} for row in rows}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.get("parent_id"))
        if node.get("parent_id") is None:
            roots.append(node)
        elif parent is not None:
            parent["replies"].append(node)
    return roots


def _kind(row: dict, path: Path) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row:
        return "trees"
    if {"message_id", "role", "text"} <= set(row):
        return "rows"
    raise ConfigError(f"{path}: rows hold neither 'messages', an oasst tree ('prompt' with 'replies') nor oasst "
                      f"message rows (message_id, parent_id, role, text); it has: {', '.join(sorted(row))}")


def _live(node: dict, lang: str | None) -> bool:
    return (not node.get("deleted") and ROLES.get(node.get("role", "")) is not None
            and isinstance(node.get("text"), str) and bool(node["text"].strip())
            and (lang is None or node.get("lang") in (None, lang)))


def _rank(node: dict) -> float:
    rank = node.get("rank")
    return float("inf") if rank is None else rank


def _paths(node: dict, mode: Mode, lang: str | None) -> Iterator[list[dict]]:
    turn = {"role": ROLES[node["role"]], "content": node["text"]}
    replies = sorted((r for r in node.get("replies") or [] if _live(r, lang)), key=_rank)
    if mode == "top":
        replies = replies[:1]
    if not replies:
        yield [turn]
    for reply in replies:
        for rest in _paths(reply, mode, lang):
            yield [turn, *rest]


def _ends_on_assistant(messages: list[dict]) -> list[dict]:
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    return messages


def flatten(root: dict, mode: Mode = "top", lang: str | None = None) -> list[list[dict]]:
    """The conversations of one oasst tree (see the module docstring), each ending on an assistant turn."""
    if not _live(root, lang):
        return []
    found = []
    for path in _paths(root, mode, lang):
        messages = _ends_on_assistant(path)
        if len(messages) >= 2 and messages not in found:
            found.append(messages)
    return found


def iter_conversations(paths: Sequence[str | Path], mode: Mode = "top",
                       lang: str | None = None) -> Iterator[list[dict]]:
    """Message lists from OpenAssistant trees, message rows or ``messages`` files.

    Raises:
        ConfigError: a file is missing, unreadable or of an unknown layout.
    """
    for path in map(Path, paths):
        rows = iter(_rows(path))
        first = next(rows, None)
        if first is None:
            continue
        kind = _kind(first, path)
        if kind == "messages":
            yield from (row["messages"] for row in [first, *rows])
        elif kind == "trees":
            for row in [first, *rows]:
                yield from flatten(row["prompt"], mode, lang)
        else:
            for root in _trees_from_rows([first, *rows]):
                yield from flatten(root, mode, lang)


def convert_conversations(paths: Sequence[str | Path], out_path: str | Path, mode: Mode = "top",
                          lang: str | None = None) -> tuple[Path, int]:
    """Write the conversations of ``paths`` as a ``messages`` parquet for verl's SFT trainer.

    Returns:
        (``out_path``, number of conversations).

    Raises:
        ConfigError: no conversation came out (with what to check).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    conversations = list(iter_conversations(paths, mode, lang))
    if not conversations:
        where = f" in language {lang!r}" if lang else ""
        raise ConfigError(f"no conversation{where} in {', '.join(map(str, paths))}: each needs a user turn followed "
                          "by an assistant reply that is not deleted")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"messages": conversations}), out_path)
    return out_path, len(conversations)


# ---- offline conversations ------------------------------------------------------------------------

def _reply(text: str, rank: int, replies: list | None = None) -> dict:
    return {"role": "assistant", "text": text, "rank": rank, "deleted": False, "lang": "en", "replies": replies or []}


def synthetic_tree(rng: random.Random, index: int) -> dict:
    """One oasst-style tree: a request, two ranked replies, a follow-up under the best one."""
    from bridge_ray.data.text import ANIMALS, NAMES, story

    animal, name = rng.choice(ANIMALS), rng.choice(NAMES)
    follow_up = {"role": "prompter", "text": f"What did {name} do next?", "deleted": False, "lang": "en",
                 "replies": [_reply(f"{name} the {animal} went home and slept.", 0)]}
    best = _reply(story(rng, name, animal), 0, [follow_up])
    other = _reply(f"I do not know a story about a {animal}.", 1)
    prompt = {"role": "prompter", "text": f"Tell me a story about a {animal} named {name}.", "deleted": False,
              "lang": "en", "replies": [best, other]}
    return {"message_tree_id": f"synthetic-{index}", "tree_state": "ready_for_export", "prompt": prompt}


def generate_synthetic_conversations(out_path: str | Path, num_trees: int = 256, seed: int = 0) -> Path:
    """Write ``num_trees`` oasst-style trees (the ``trees.jsonl`` layout) to ``out_path``."""
    rng = random.Random(seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for i in range(num_trees):
            f.write(json.dumps(synthetic_tree(rng, i)) + "\n")
    return out_path

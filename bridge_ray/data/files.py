"""Reading, checking and writing the row files verl trains on.

verl 0.9.1's SFT dataset (``MultiTurnSFTDataset``) reads only a ``messages`` column (a list of
``{role, content}``); it has no prompt/response keys. ``check_sft_file`` accepts either shape so a
preflight can tell the user early, and ``convert_to_messages`` turns a prompt/response file into
the ``messages`` parquet verl reads. Column names may be dotted (``extra_info.question``) to reach
nested fields.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bridge_ray.errors import ConfigError

SUFFIXES = (".parquet", ".jsonl", ".json")
ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED = 3
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class SftFileCheck:
    """What ``check_sft_file`` found.

    Attributes:
        path: The file checked.
        num_rows: How many rows it holds (all were checked).
        needs_conversion: True when rows are prompt/response pairs: verl 0.9.1 reads only
            ``messages``, so run ``convert_to_messages`` first.
    """

    path: Path
    num_rows: int
    needs_conversion: bool


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict]:
    """Read a ``.parquet`` or ``.jsonl``/``.json`` file into plain Python dicts.

    Args:
        path: The file.
        columns: Top-level columns to read from a parquet file (all when None).

    Returns:
        One dict per row, nested values as plain lists and dicts.

    Raises:
        ConfigError: The file is missing, of another type, or not valid JSON lines.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: pass one of its .parquet, .jsonl or .json files")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass an existing .parquet, .jsonl or .json file")
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; convert it to .parquet or .jsonl")
    rows = _read_parquet_rows(path, columns) if path.suffix == ".parquet" else _read_json_rows(path)
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise ConfigError(f"{path} row {bad}: a {type(rows[bad]).__name__}, not an object with named fields; "
                          "each row must be a JSON object")
    return rows


def _read_parquet_rows(path: Path, columns: list[str] | None) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        present = pq.read_schema(path).names
        wanted = [c for c in columns or [] if c in present] or None
        return pq.read_table(path, columns=wanted).to_pylist()
    except (pa.ArrowException, OSError) as err:
        what = "is empty" if path.stat().st_size == 0 else f"is not a readable parquet file ({_first_line(err)})"
        raise ConfigError(f"{path} {what}: write it again, or pass the right file") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _read_json_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: pass a .jsonl/.json file, or a .parquet one") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON at line {err.lineno} ({err.msg}); fix the file") from None
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove it") from None
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows to a parquet file atomically (a temporary file, then a rename).

    Args:
        rows: Plain dicts with the same keys.
        path: Where to write.

    Returns:
        The path written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), partial)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({err.strerror or err}): choose a writable path") from None
    except BaseException:  # Ctrl-C mid-write: no hidden half-file is left beside the output
        partial.unlink(missing_ok=True)
        raise
    return path


def check_outputs(outputs: list[Path], inputs: list[str | Path] = (), overwrite: bool = False) -> None:
    """Refuse, before anything is written, an output that would destroy data.

    Args:
        outputs: The files a command is about to write.
        inputs: The files it reads: an output that is one of them (the same file, by any path) is
            always refused, ``overwrite`` or not.
        overwrite: Replace outputs that already exist (the CLI's ``--overwrite``).

    Raises:
        ConfigError: Naming the output and the fix; nothing has been written.
    """
    sources = [Path(p) for p in inputs]
    for given in outputs:
        if not str(given).strip() or Path(given).name in ("", ".", ".."):
            raise ConfigError(f"output {str(given)!r} names no file: give a file path, e.g. data/train.parquet")
    for out in map(Path, outputs):
        if any(out.resolve() == p.resolve() or (out.exists() and p.exists() and os.path.samefile(out, p))
               for p in sources):
            raise ConfigError(f"{out} is also an input: writing it would destroy the rows it is made from; "
                              "write the output to another path")
        if out.is_dir():
            raise ConfigError(f"{out} is a folder: name the file to write, e.g. {out / out.with_suffix('.parquet').name}")
        if os.path.lexists(out) and not overwrite:
            raise ConfigError(f"{out} already exists: pass --overwrite to replace it, "
                              "or write to another path")


def lookup(row: dict, key: str) -> Any:
    """The value of a possibly dotted key (``extra_info.question``), or ``_MISSING``."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def raise_row_problems(path: Path, problems: list[tuple[int, str]]) -> None:
    """Raise one ConfigError naming the file and the first bad rows, if there are any."""
    if not problems:
        return
    listed = [f"{path} row {index}: {what}" for index, what in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        listed.append(f"and {len(problems) - MAX_LISTED} more bad rows")
    raise ConfigError(listed)


def _messages_problem(messages: Any, key: str) -> str | None:
    if messages is _MISSING:
        return f'no "{key}" field'
    if not isinstance(messages, list) or not messages:
        return f'"{key}" must be a non-empty list of {{role, content}} dicts, got {type(messages).__name__}'
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f'"{key}"[{turn}] needs a string "content"'
        if message.get("role") not in ROLES:
            return f'"{key}"[{turn}] has role {message.get("role")!r}; use one of {", ".join(ROLES)}'
    if not any(message["role"] == "assistant" for message in messages):
        return f'"{key}" has no assistant turn, so there is nothing to train on'
    return None


def _pair_problem(row: dict, prompt_key: str, response_key: str) -> str | None:
    prompt = lookup(row, prompt_key)
    if isinstance(prompt, list) and prompt:  # a chat prompt, e.g. the RL files' "prompt"
        problem = _messages_problem(prompt, prompt_key)
        if problem and "no assistant turn" not in problem:
            return problem
        if isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            return (f'"{prompt_key}" ends with an assistant turn, so "{response_key}" would follow it as a second '
                    "one: end each prompt with the user's turn, or convert whole conversations (a messages column)")
    elif not isinstance(prompt, str) or not prompt.strip():
        return f'"{prompt_key}" must be a non-empty string or list of messages, but it is {_describe(prompt)}'
    response = lookup(row, response_key)
    if not isinstance(response, str) or not response.strip():
        return f'"{response_key}" must be a non-empty string, but it is {_describe(response)}'
    return None


def _prompt_turns(prompt: str | list) -> list[dict]:
    """The user turn(s) of a prompt: a string becomes one user turn, a chat prompt is kept as it is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    return "an empty string" if isinstance(value, str) else f"a {type(value).__name__}"


def check_sft_file(
    path: str | Path,
    prompt_key: str | None = None,
    response_key: str | None = None,
    messages_key: str = "messages",
) -> SftFileCheck:
    """Check that a file can feed SFT, before any job starts.

    Either every row has ``messages_key`` (a list of ``{role, content}`` with an assistant turn),
    or, when ``prompt_key`` and ``response_key`` are given, both are non-empty strings.

    Args:
        path: A ``.parquet`` or ``.jsonl`` file.
        prompt_key: Column (dotted for nested fields, e.g. ``extra_info.question``) of the prompt.
        response_key: Column of the response, e.g. ``extra_info.answer``.
        messages_key: Column of the conversations when no prompt/response keys are given.

    Returns:
        An ``SftFileCheck``; ``needs_conversion`` says whether ``convert_to_messages`` must run.

    Raises:
        ConfigError: Naming the file, the first bad rows, what is wrong and how to fix it.

    Example:
        >>> check_sft_file("gsm8k/rl_train.parquet", "extra_info.question", "extra_info.answer")
    """
    path = Path(path)
    if (prompt_key is None) != (response_key is None):
        raise ConfigError(f"{path}: give both prompt_key and response_key, or neither (to use {messages_key!r})")
    pair = prompt_key is not None
    keys = [prompt_key, response_key] if pair else [messages_key]
    rows = read_rows(path, columns=list(dict.fromkeys([k.split(".")[0] for k in keys] + keys)))
    if not rows:
        raise ConfigError(f"{path}: the file has no rows")
    if not pair and all(lookup(row, messages_key) is _MISSING for row in rows):
        raise ConfigError(
            f'{path}: no "{messages_key}" column (columns: {", ".join(rows[0]) or "none"}); '
            f"pass messages_key=..., or prompt_key=... and response_key=... (dotted names reach nested fields)"
        )
    if pair:
        found = [(index, _pair_problem(row, prompt_key, response_key)) for index, row in enumerate(rows)]
    else:
        found = [(index, _messages_problem(lookup(row, messages_key), messages_key)) for index, row in enumerate(rows)]
    raise_row_problems(path, [(index, problem) for index, problem in found if problem])
    return SftFileCheck(path=path, num_rows=len(rows), needs_conversion=pair)


def convert_to_messages(
    source: str | Path,
    out_path: str | Path,
    prompt_key: str,
    response_key: str,
    system_prompt: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a prompt/response file into the ``messages`` parquet verl's SFT dataset reads.

    Args:
        source: A ``.parquet`` or ``.jsonl`` file with prompt and response columns.
        out_path: The parquet to write (one ``messages`` column).
        prompt_key: Prompt column, dotted for nested fields (``extra_info.question``); a string, or a
            list of ``{role, content}`` turns such as the RL files' ``prompt`` (the exact prompt PPO samples on).
        response_key: Response column (``extra_info.answer``).
        system_prompt: If given, a system turn opens every conversation.
        overwrite: Replace ``out_path`` when it exists (it is never ``source``).

    Returns:
        ``out_path``.

    Raises:
        ConfigError: From ``check_sft_file``, or ``out_path`` is ``source``, exists (without
            ``overwrite``) or does not end in ``.parquet``; nothing is written then.
    """
    out_path = Path(out_path)
    check_outputs([out_path], inputs=[source], overwrite=overwrite)
    if out_path.suffix != ".parquet":
        raise ConfigError(f"{out_path}: the output is a parquet file: name it with .parquet, "
                          f"e.g. {out_path.with_suffix('.parquet')}")
    check_sft_file(source, prompt_key=prompt_key, response_key=response_key)
    opening = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = [
        {"messages": opening + _prompt_turns(lookup(row, prompt_key))
                     + [{"role": "assistant", "content": lookup(row, response_key)}]}
        for row in read_rows(source)
    ]
    return write_parquet(rows, out_path)

"""GSM8K in the files verl trains on: synthetic problems offline, or the real dataset converted.

Both paths write the same four parquets into one folder:

- ``train.parquet`` / ``val.parquet``: SFT rows, a ``messages`` column
  (user = the question followed by verl's instruction ``INSTRUCTION``, exactly the RL prompt, as
  verl's own GSM8K SFT preprocessing does; assistant = the GSM8K answer: reasoning, then ``#### N``);
- ``rl_train.parquet`` / ``rl_val.parquet``: RL rows exactly as verl's
  ``examples/data_preprocess/gsm8k.py`` makes them (``data_source`` "openai/gsm8k", so verl's
  rule reward ``verl.utils.reward_score.gsm8k`` scores them).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path

from bridge_ray.data.files import check_outputs, raise_row_problems, read_rows, write_parquet
from bridge_ray.errors import ConfigError

HUB_ID = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
# The pattern verl's preprocessing and its strict reward use for the final answer.
FINAL_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")
OUTPUT_NAMES = ("train", "val", "rl_train", "rl_val")

_NAMES = ("Ava", "Bilal", "Chen", "Dara", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca")
_ITEMS = ("apples", "pencils", "stickers", "cupcakes", "marbles", "books", "shells", "cards")


@dataclasses.dataclass(frozen=True)
class Example:
    """One GSM8K problem: a question and an answer that ends with ``#### N``."""

    question: str
    answer: str


def final_answer(answer: str) -> str | None:
    """The number after ``####`` as verl reads it (commas dropped), or None when there is none."""
    found = FINAL_ANSWER.search(answer)
    return found.group(1).replace(",", "") if found else None


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    """GSM8K's calculator notation: ``3 * 4 = <<3*4=12>>12`` and the value."""
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a} {op} {b} = <<{a}{op}{b}={value}>>{value}", value


def _sell_leftovers(rng: random.Random) -> Example:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, times, price = rng.randint(4, 60), rng.randint(2, 6), rng.randint(2, 9)
    grown, total = _step(start, "*", times)
    given = rng.randint(1, min(20, total - 1))
    left, count = _step(total, "-", given)
    earned, money = _step(count, "*", price)
    question = (f"{name} has {start} {item}. A week later {name} has {times} times as many, then gives {given} "
                f"of them to a friend. If {name} sells the rest for ${price} each, how many dollars does {name} earn?")
    lines = [f"After a week {name} has {grown} {item}.", f"After giving some away {name} has {left} {item}.",
             f"Selling them earns {earned} dollars."]
    return Example(question, "\n".join(lines) + f"\n#### {money}")


def _change_from_bill(rng: random.Random) -> Example:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count_a, price_a, count_b, price_b = (rng.randint(2, 9) for _ in range(4))
    first, cost_a = _step(count_a, "*", price_a)
    second, cost_b = _step(count_b, "*", price_b)
    both, total = _step(cost_a, "+", cost_b)
    bill = 100 if total < 100 else 200
    change, money = _step(bill, "-", total)
    question = (f"{name} buys {count_a} packs of {item} at ${price_a} each and {count_b} boxes of {item} at "
                f"${price_b} each. {name} pays with a ${bill} bill. How much change does {name} get?")
    lines = [f"The packs cost {first} dollars.", f"The boxes cost {second} dollars.",
             f"Together they cost {both} dollars.", f"The change is {change} dollars."]
    return Example(question, "\n".join(lines) + f"\n#### {money}")


def _wages_saved(rng: random.Random) -> Example:
    name, parts = rng.choice(_NAMES), rng.choice((2, 4, 5))
    wage, hours, days = parts * rng.randint(2, 6), rng.randint(2, 8), rng.randint(3, 6)
    daily, per_day = _step(wage, "*", hours)
    weekly, earned = _step(per_day, "*", days)
    spent, spend = _step(earned, "/", parts)
    kept, money = _step(earned, "-", spend)
    question = (f"{name} earns ${wage} an hour and works {hours} hours a day for {days} days. {name} spends "
                f"1/{parts} of the money on food. How many dollars does {name} have left?")
    lines = [f"Each day {name} earns {daily} dollars.", f"In {days} days that is {weekly} dollars.",
             f"Food costs {spent} dollars.", f"{name} has {kept} dollars left."]
    return Example(question, "\n".join(lines) + f"\n#### {money}")


def _share_equally(rng: random.Random) -> Example:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    friends, size, rounds = rng.randint(2, 6), rng.randint(3, 12), rng.randint(1, 4)
    packs = friends * rounds
    bought, total = _step(packs, "*", size)
    shared, each = _step(total, "/", friends)
    used = rng.randint(2, each - 1)
    kept, left = _step(each, "-", used)
    question = (f"{name} buys {packs} bags with {size} {item} in each and shares them equally among {friends} "
                f"friends. Each friend uses {used} {item}. How many {item} does each friend have left?")
    lines = [f"There are {bought} {item} in all.", f"Each friend gets {shared} {item}.",
             f"Each friend has {kept} {item} left."]
    return Example(question, "\n".join(lines) + f"\n#### {left}")


def _trip_distance(rng: random.Random) -> Example:
    name = rng.choice(_NAMES)
    speed_a, hours_a, speed_b, hours_b = rng.randint(30, 70), rng.randint(1, 5), rng.randint(20, 60), rng.randint(1, 4)
    first, part_a = _step(speed_a, "*", hours_a)
    second, part_b = _step(speed_b, "*", hours_b)
    both, total = _step(part_a, "+", part_b)
    question = (f"{name} drives at {speed_a} miles per hour for {hours_a} hours, then at {speed_b} miles per hour "
                f"for {hours_b} hours. How many miles does {name} drive in total?")
    lines = [f"The first part is {first} miles.", f"The second part is {second} miles.",
             f"In total {name} drives {both} miles."]
    return Example(question, "\n".join(lines) + f"\n#### {total}")


_TEMPLATES = (_sell_leftovers, _change_from_bill, _wages_saved, _share_equally, _trip_distance)


def sample_examples(num: int, seed: int = 0) -> list[Example]:
    """``num`` synthetic GSM8K-style problems with exact answers, the same for the same seed."""
    rng = random.Random(seed)
    return [rng.choice(_TEMPLATES)(rng) for _ in range(num)]


def prompt(question: str) -> str:
    """The user turn for a GSM8K question, the same in SFT and RL rows: the question, then verl's instruction."""
    return f"{question} {INSTRUCTION}"


def _sft_row(example: Example) -> dict:
    return {"messages": [{"role": "user", "content": prompt(example.question)},
                         {"role": "assistant", "content": example.answer}]}


def _rl_row(example: Example, split: str, index: int) -> dict:
    return {
        "data_source": HUB_ID,
        "prompt": [{"role": "user", "content": prompt(example.question)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": final_answer(example.answer)},
        "extra_info": {"split": split, "index": index, "answer": example.answer, "question": example.question},
    }


def output_paths(out_dir: str | Path) -> dict[str, Path]:
    """The four parquets ``write_gsm8k`` writes into ``out_dir``, keyed by name."""
    return {name: Path(out_dir) / f"{name}.parquet" for name in OUTPUT_NAMES}


def write_gsm8k(train: list[Example], val: list[Example], out_dir: str | Path) -> dict[str, Path]:
    """Write the SFT and RL parquets for already-checked examples.

    Returns:
        Paths keyed ``train``, ``val`` (SFT) and ``rl_train``, ``rl_val`` (RL).
    """
    paths = output_paths(out_dir)
    return {
        "train": write_parquet([_sft_row(e) for e in train], paths["train"]),
        "val": write_parquet([_sft_row(e) for e in val], paths["val"]),
        "rl_train": write_parquet([_rl_row(e, "train", i) for i, e in enumerate(train)], paths["rl_train"]),
        "rl_val": write_parquet([_rl_row(e, "test", i) for i, e in enumerate(val)], paths["rl_val"]),
    }


def generate_synthetic(
    out_dir: str | Path, num_train: int = 2000, num_val: int = 128, seed: int = 0, overwrite: bool = False
) -> dict[str, Path]:
    """Write synthetic GSM8K-style data, offline, in verl's SFT and RL formats.

    Args:
        out_dir: Folder for the four parquets (created if needed).
        num_train: Training problems.
        num_val: Validation problems (RL rows carry ``split`` "test", as verl's GSM8K does).
        seed: Same seed, same files.
        overwrite: Replace the parquets when ``out_dir`` holds them already.

    Returns:
        Paths keyed ``train``, ``val``, ``rl_train``, ``rl_val``.

    Raises:
        ConfigError: One of the parquets exists and ``overwrite`` is False; nothing is written.

    Example:
        >>> paths = generate_synthetic("/tmp/gsm8k", num_train=512)
        >>> paths["train"]  # verl: data.train_files=/tmp/gsm8k/train.parquet
    """
    check_outputs(list(output_paths(out_dir).values()), overwrite=overwrite)
    examples = sample_examples(num_train + num_val, seed)
    return write_gsm8k(examples[:num_train], examples[num_train:], out_dir)


def _row_problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return f"expected an object with question and answer, got {type(row).__name__}"
    for key in ("question", "answer"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            return (f'"{key}" holds {type(value).__name__} {json.dumps(value)[:40]}, not text (each GSM8K row needs '
                    'non-empty "question" and "answer" strings)')
        if not isinstance(value, str) or not value.strip():
            return f'missing "{key}" (each GSM8K row needs non-empty "question" and "answer" strings)'
    if final_answer(row["answer"]) is None:
        return 'the answer has no final "#### N" line (GSM8K answers end with e.g. "#### 72"); fix or drop the row'
    return None


def examples_from_rows(rows: list, source: str | Path) -> list[Example]:
    """Check GSM8K rows (``question``/``answer``) and turn them into examples.

    Raises:
        ConfigError: Naming ``source``, the first bad rows and what is wrong with each.
    """
    problems = [(index, problem) for index, row in enumerate(rows) if (problem := _row_problem(row))]
    raise_row_problems(Path(source), problems)
    if not rows:
        raise ConfigError(f"{source}: the file has no rows")
    return [Example(row["question"], row["answer"]) for row in rows]


def _load_hub_splits() -> tuple[list[dict], list[dict]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f'loading "{HUB_ID}" needs the datasets package (pip install datasets); '
                          "or pass a local GSM8K .parquet/.jsonl file instead") from None
    try:
        loaded = datasets.load_dataset(HUB_ID, "main")
    except (OSError, ValueError) as err:  # no network, offline mode, or the dataset is not found
        raise ConfigError(f'could not load "{HUB_ID}" from the Hugging Face Hub ({type(err).__name__}); '
                          "download GSM8K's train/test files where the Hub is reachable and pass their "
                          "local .parquet/.jsonl paths instead") from None
    return loaded["train"].to_list(), loaded["test"].to_list()


def convert_gsm8k(
    source: str | Path,
    out_dir: str | Path,
    val_source: str | Path | None = None,
    num_val: int = 128,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert the real GSM8K into verl's SFT and RL parquets.

    Args:
        source: A local ``.parquet``/``.jsonl`` with GSM8K's ``question`` and ``answer`` columns, or
            ``"openai/gsm8k"`` to load it with ``datasets`` (train split → train, test → val).
        out_dir: Folder for the four parquets.
        val_source: A local file for validation rows (e.g. GSM8K's test split). Without one, the last
            ``num_val`` rows of ``source`` are held out.
        num_val: Rows held out when ``val_source`` is None and ``source`` is a local file.
        overwrite: Replace the parquets when ``out_dir`` holds them already (never ``source`` or
            ``val_source`` themselves).

    Returns:
        Paths keyed ``train``, ``val``, ``rl_train``, ``rl_val``.

    Raises:
        ConfigError: A file is missing or has bad rows, an output exists (without ``overwrite``) or is
            an input (nothing is written then), ``val_source`` comes with the Hub's dataset, or the Hub
            is unreachable.

    Example:
        >>> convert_gsm8k("gsm8k/train.jsonl", "data/gsm8k", val_source="gsm8k/test.jsonl")
    """
    from_hub = str(source) == HUB_ID and not Path(source).exists()
    if from_hub and val_source is not None:
        raise ConfigError(f'"{HUB_ID}" brings its own validation rows (its test split): drop --val (val_source=), '
                          "or pass local train and validation files")
    if not from_hub and val_source is not None and Path(val_source).exists() and Path(source).exists() \
            and os.path.samefile(val_source, source):
        raise ConfigError(f"--val {val_source} is the training file itself: validation on the rows it trains on says "
                          "nothing; give a separate file (GSM8K's test split), or drop --val to hold out the last rows")
    inputs = [] if from_hub else [p for p in (source, val_source) if p is not None]
    check_outputs(list(output_paths(out_dir).values()), inputs=inputs, overwrite=overwrite)
    if from_hub:
        train_rows, val_rows = _load_hub_splits()
        train = examples_from_rows(train_rows, f"{HUB_ID}[train]")
        val = examples_from_rows(val_rows, f"{HUB_ID}[test]")
    elif val_source is not None:
        train = examples_from_rows(read_rows(source), source)
        val = examples_from_rows(read_rows(val_source), val_source)
    else:
        examples = examples_from_rows(read_rows(source), source)
        if len(examples) <= num_val:
            raise ConfigError(f"{source}: {len(examples)} rows cannot spare {num_val} for validation: pass a "
                              "validation file (--val FILE, val_source=) or hold out fewer rows (--num-val N, num_val=)")
        train, val = examples[: len(examples) - num_val], examples[len(examples) - num_val :]
    return write_gsm8k(train, val, out_dir)

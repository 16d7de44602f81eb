"""GSM8K data (synthetic and converted) and SFT file checks, on real files in tmp_path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bridge_ray.data import check_sft_file, convert_gsm8k, convert_to_messages, generate_synthetic, read_rows
from bridge_ray.data.gsm8k import INSTRUCTION, final_answer
from bridge_ray.errors import ConfigError

CALC = re.compile(r"<<(-?\d+)([-+*/])(-?\d+)=(-?\d+)>>(-?\d+)")
# Two rows from GSM8K's train split, verbatim, and one with a thousands separator.
REAL_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "A farm has 600 cows and buys 600 more. How many cows does it have?",
     "answer": "It has 600+600 = <<600+600=1200>>1200 cows.\n#### 1,200"},
]
RL_COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_synthetic_answers_are_exact(tmp_path):
    paths = generate_synthetic(tmp_path, num_train=300, num_val=20, seed=3)
    assert sorted(paths) == ["rl_train", "rl_val", "train", "val"]
    rows = read_rows(paths["train"])
    assert len(rows) == 300 and len(read_rows(paths["val"])) == 20
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        steps = CALC.findall(assistant["content"])
        assert steps, assistant["content"]
        for a, op, b, shown, written in steps:
            a, b = int(a), int(b)
            assert int(shown) == int(written) == {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
        assert assistant["content"].endswith(f"\n#### {steps[-1][4]}")
        assert int(final_answer(assistant["content"])) > 0


def test_synthetic_is_deterministic(tmp_path):
    first = generate_synthetic(tmp_path / "a", num_train=50, num_val=5, seed=7)
    second = generate_synthetic(tmp_path / "b", num_train=50, num_val=5, seed=7)
    other = generate_synthetic(tmp_path / "c", num_train=50, num_val=5, seed=8)
    assert read_rows(first["rl_train"]) == read_rows(second["rl_train"])
    assert read_rows(first["train"]) != read_rows(other["train"])


def test_rl_rows_follow_verl_gsm8k_and_score_with_verl_reward(tmp_path):
    from verl.utils.reward_score import default_compute_score

    paths = generate_synthetic(tmp_path, num_train=40, num_val=8)
    assert pq.read_schema(paths["rl_train"]).names == RL_COLUMNS
    for split, name in (("train", "rl_train"), ("test", "rl_val")):
        for index, row in enumerate(read_rows(paths[name])):
            extra = row["extra_info"]
            assert extra == {"split": split, "index": index, "answer": extra["answer"], "question": extra["question"]}
            assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
            assert row["prompt"] == [{"role": "user", "content": f"{extra['question']} {INSTRUCTION}"}]
            truth = row["reward_model"]["ground_truth"]
            assert row["reward_model"] == {"style": "rule", "ground_truth": final_answer(extra["answer"])}
            assert default_compute_score(row["data_source"], extra["answer"], truth) == 1.0
            assert default_compute_score(row["data_source"], f"#### {int(truth) + 1}", truth) == 0


def test_convert_local_jsonl_with_val_parquet(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", REAL_ROWS)
    val = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(REAL_ROWS[:1]), val)
    paths = convert_gsm8k(train, tmp_path / "out", val_source=val)
    sft = read_rows(paths["train"])
    assert sft[0]["messages"] == [{"role": "user", "content": f"{REAL_ROWS[0]['question']} {INSTRUCTION}"},
                                  {"role": "assistant", "content": REAL_ROWS[0]["answer"]}]
    rl = read_rows(paths["rl_train"])
    assert [row["reward_model"]["ground_truth"] for row in rl] == ["72", "10", "1200"]
    assert read_rows(paths["rl_val"])[0]["extra_info"]["split"] == "test"
    assert len(read_rows(paths["val"])) == 1


def test_convert_holds_out_last_rows_without_val_source(tmp_path):
    source = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.Table.from_pylist(REAL_ROWS), source)
    paths = convert_gsm8k(source, tmp_path / "out", num_val=1)
    assert [row["extra_info"]["question"] for row in read_rows(paths["rl_val"])] == [REAL_ROWS[2]["question"]]
    assert len(read_rows(paths["train"])) == 2


def test_convert_bad_rows_name_file_and_row_and_write_nothing(tmp_path):
    rows = [REAL_ROWS[0], {"question": "How many?"}, {"question": "How many?", "answer": "It is 4."},
            {"question": 123, "answer": "#### 4"}]
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        convert_gsm8k(source, tmp_path / "out", num_val=1)
    assert str(caught.value) == (
        f'{source} row 1: missing "answer" (each GSM8K row needs non-empty "question" and "answer" strings); '
        f'{source} row 2: the answer has no final "#### N" line (GSM8K answers end with e.g. "#### 72"); '
        f'fix or drop the row; {source} row 3: "question" holds int 123, not text (each GSM8K row needs non-empty "question" and '
        '"answer" strings)'
    )
    assert not (tmp_path / "out").exists()


def test_convert_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError) as caught:
        convert_gsm8k(missing, tmp_path / "out")
    assert str(caught.value) == f"{missing}: no such file; pass an existing .parquet, .jsonl or .json file"
    with pytest.raises(ConfigError) as caught:
        convert_gsm8k(tmp_path, tmp_path / "out")
    assert str(caught.value) == f"{tmp_path} is a folder: pass one of its .parquet, .jsonl or .json files"


def test_hub_unreachable_says_to_pass_a_local_file(tmp_path):
    code = ("from bridge_ray.data import convert_gsm8k\n"
            f"convert_gsm8k('openai/gsm8k', {str(tmp_path)!r})\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode != 0
    assert ('bridge_ray.errors.ConfigError: could not load "openai/gsm8k" from the Hugging Face Hub '
            "(ConnectionError); download GSM8K's train/test files where the Hub is reachable and pass their "
            "local .parquet/.jsonl paths instead") in done.stderr


def test_nested_prompt_response_keys_convert_to_messages(tmp_path):
    paths = generate_synthetic(tmp_path / "gsm8k", num_train=10, num_val=2)
    check = check_sft_file(paths["rl_train"], prompt_key="extra_info.question", response_key="extra_info.answer")
    assert (check.num_rows, check.needs_conversion) == (10, True)
    out = convert_to_messages(paths["rl_train"], tmp_path / "messages.parquet", "extra_info.question",
                              "extra_info.answer", system_prompt="Solve it.")
    assert check_sft_file(out).needs_conversion is False
    rows = read_rows(out)
    assert rows[0]["messages"][0] == {"role": "system", "content": "Solve it."}
    questions = [row["extra_info"]["question"] for row in read_rows(paths["rl_train"])]
    assert [row["messages"][1]["content"] for row in rows] == questions  # the bare column, as asked


def test_sft_and_rl_rows_carry_the_same_prompt(tmp_path):
    """SFT trains on the very prompt PPO samples on: verl's instruction appended to the question."""
    for paths in (generate_synthetic(tmp_path / "synthetic", num_train=10, num_val=2),
                  convert_gsm8k(write_jsonl(tmp_path / "real.jsonl", REAL_ROWS), tmp_path / "real", num_val=1)):
        for sft_name, rl_name in (("train", "rl_train"), ("val", "rl_val")):
            sft_rows, rl_rows = read_rows(paths[sft_name]), read_rows(paths[rl_name])
            assert [row["messages"][:-1] for row in sft_rows] == [row["prompt"] for row in rl_rows]
            assert all(row["prompt"][0]["content"].endswith(f" {INSTRUCTION}") for row in rl_rows)
    # The RL files' chat prompt converts to exactly the SFT rows, here through the CLI as a user runs it.
    from conftest import run_cli

    out = run_cli("data", "to-messages", str(paths["rl_train"]), str(tmp_path / "from_rl.parquet"),
                  "--prompt-key", "prompt", "--response-key", "extra_info.answer", timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, str(tmp_path / "from_rl.parquet")), out.stderr
    assert read_rows(tmp_path / "from_rl.parquet") == read_rows(paths["train"])


def test_a_chat_prompt_that_ends_with_the_assistant_is_refused(tmp_path):
    """Its response became a second assistant turn right after the first, without a word."""
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "answer": "#### 4"}]
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        convert_to_messages(source, tmp_path / "out.parquet", "prompt", "answer")
    assert str(caught.value) == (f'{source} row 0: "prompt" ends with an assistant turn, so "answer" would follow it '
                                 "as a second one: end each prompt with the user's turn, or convert whole "
                                 "conversations (a messages column)")
    assert not (tmp_path / "out.parquet").exists()


def test_flat_prompt_response_jsonl(tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "response": "#### 4"}])
    assert check_sft_file(source, prompt_key="prompt", response_key="response").num_rows == 1


def test_missing_messages_column_says_how_to_fix(tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "response": "4"}])
    with pytest.raises(ConfigError) as caught:
        check_sft_file(source)
    assert str(caught.value) == (
        f'{source}: no "messages" column (columns: prompt, response); pass messages_key=..., or prompt_key=... '
        "and response_key=... (dotted names reach nested fields)"
    )


def test_missing_nested_key_names_row(tmp_path):
    rows = [{"extra_info": {"question": "q", "answer": "a"}}, {"extra_info": {"question": "q"}}]
    source = tmp_path / "nested.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    with pytest.raises(ConfigError) as caught:
        check_sft_file(source, prompt_key="extra_info.question", response_key="extra_info.answer")
    assert str(caught.value) == f'{source} row 1: "extra_info.answer" must be a non-empty string, but it is null'


def test_bad_messages_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "bot", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        check_sft_file(source)
    assert caught.value.problems == [
        f'{source} row 0: "messages" has no assistant turn, so there is nothing to train on',
        f'{source} row 1: "messages"[0] has role \'bot\'; use one of system, user, assistant, tool',
    ]


def test_prompt_key_needs_response_key(tmp_path):
    with pytest.raises(ConfigError, match="give both prompt_key and response_key, or neither"):
        check_sft_file(tmp_path / "x.jsonl", prompt_key="prompt")


@pytest.mark.parametrize("content,said", [(b"", "is empty"), (b"PAR1 not really", "is not a readable parquet file")])
def test_empty_or_corrupt_parquet_is_one_line_from_the_cli(tmp_path, content, said):
    from conftest import run_cli

    source = tmp_path / "in.parquet"
    source.write_bytes(content)
    out = run_cli("data", "to-messages", str(source), str(tmp_path / "out.parquet"),
                  "--prompt-key", "q", "--response-key", "a", timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: {source} {said}") and out.stderr.rstrip().endswith(
        ": write it again, or pass the right file")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_broken_json_and_non_object_rows_are_one_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "x",')
    with pytest.raises(ConfigError, match=rf"^{broken}: not valid JSON at line 1 \(Expecting"):
        read_rows(broken)
    numbers = tmp_path / "numbers.json"
    numbers.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"^{numbers} row 0: a int, not an object with named fields"):
        read_rows(numbers)


def test_cli_gsm8k_names_its_flags_when_rows_are_too_few(tmp_path):
    from conftest import run_cli

    source = write_jsonl(tmp_path / "gsm8k.jsonl", REAL_ROWS)
    out = run_cli("data", "gsm8k", "--source", str(source), "--out", str(tmp_path / "out"), "--num-val", "5",
                  timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: {source}: 3 rows cannot spare 5 for validation: pass a validation file "
                                  "(--val FILE, val_source=) or hold out fewer rows (--num-val N, num_val=)")
    assert not (tmp_path / "out").exists()
    ok = run_cli("data", "gsm8k", "--source", str(source), "--out", str(tmp_path / "out"), "--num-val", "1",
                 timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[:2] == ["train", str(tmp_path / "out" / "train.parquet")]

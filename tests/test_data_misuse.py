"""`bridge-ray data ...` misused: every case is one line, exit 2, and nothing written or lost.

    .venv/bin/python -m pytest tests/test_data_misuse.py -q      # unit, seconds
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge_ray.cli import cli
from bridge_ray.data import convert_to_messages, generate_synthetic, read_rows
from bridge_ray.errors import ConfigError
from bridge_ray.models import assets

PAIR = ["--prompt-key", "p", "--response-key", "r"]


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def _refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {message}\n"


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"p": "hi", "r": "yo"}) + "\n")
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_to_messages_refuses_its_own_source_even_with_overwrite(source, tmp_path):
    before = source.read_bytes()
    for out, extra in ((str(source), []), (str(tmp_path / "sub" / ".." / "ok.jsonl"), ["--overwrite"])):
        _refused(_cli("data", "to-messages", str(source), out, *PAIR, *extra),
                 f"{out} is also an input: writing it would destroy the rows it is made from; "
                 "write the output to another path")
    (tmp_path / "link.parquet").symlink_to(source)
    _refused(_cli("data", "to-messages", str(source), str(tmp_path / "link.parquet"), *PAIR, "--overwrite"),
             f"{tmp_path / 'link.parquet'} is also an input: writing it would destroy the rows it is made from; "
             "write the output to another path")
    assert source.read_bytes() == before


def test_to_messages_refuses_an_existing_output_unless_overwrite(source, tmp_path):
    out = tmp_path / "sft.parquet"
    out.write_bytes(b"keep me")
    _refused(_cli("data", "to-messages", str(source), str(out), *PAIR),
             f"{out} already exists: pass --overwrite to replace it, or write to another path")
    assert out.read_bytes() == b"keep me"
    done = _cli("data", "to-messages", str(source), str(out), *PAIR, "--overwrite")
    assert done.exit_code == 0 and done.output == f"{out}\n"
    assert read_rows(out) == [{"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "yo"}]}]


def test_to_messages_output_must_be_named_parquet_and_be_no_folder(source, tmp_path):
    for name in ("sft.txt", "sft.jsonl", "sft"):
        out = tmp_path / name
        _refused(_cli("data", "to-messages", str(source), str(out), *PAIR),
                 f"{out}: the output is a parquet file: name it with .parquet, e.g. {tmp_path / 'sft.parquet'}")
        assert not out.exists()
    (tmp_path / "folder").mkdir()
    _refused(_cli("data", "to-messages", str(source), str(tmp_path / "folder"), *PAIR, "--overwrite"),
             f"{tmp_path / 'folder'} is a folder: name the file to write, e.g. {tmp_path / 'folder' / 'folder.parquet'}")
    existing_txt = tmp_path / "notes.txt"
    existing_txt.write_text("mine")
    _refused(_cli("data", "to-messages", str(source), str(existing_txt), *PAIR),
             f"{existing_txt} already exists: pass --overwrite to replace it, or write to another path")
    assert existing_txt.read_text() == "mine"


def test_to_messages_library_refuses_the_same(source, tmp_path):
    with pytest.raises(ConfigError, match="is also an input"):
        convert_to_messages(source, source, "p", "r", overwrite=True)
    assert convert_to_messages(source, tmp_path / "a.parquet", "p", "r") == tmp_path / "a.parquet"
    with pytest.raises(ConfigError, match="already exists"):
        convert_to_messages(source, tmp_path / "a.parquet", "p", "r")


def test_gsm8k_refuses_existing_outputs_unless_overwrite(tmp_path):
    out = tmp_path / "g"
    args = ["data", "gsm8k", "--synthetic", "--out", str(out), "--num-train", "8", "--num-val", "2"]
    assert _cli(*args).exit_code == 0
    before = _tree(out)
    _refused(_cli(*args, "--seed", "1"), f"{out / 'train.parquet'} already exists: pass --overwrite "
                                         "to replace it, or write to another path")
    assert _tree(out) == before
    assert _cli(*args, "--seed", "1", "--overwrite").exit_code == 0
    assert _tree(out) != before


def test_gsm8k_never_writes_over_its_source(tmp_path):
    out = tmp_path / "g"
    generate_synthetic(out, num_train=8, num_val=2)
    before = _tree(out)
    for flag in ("--source", "--val"):
        other = [] if flag == "--source" else ["--source", str(out / "rl_train.parquet")]
        result = _cli("data", "gsm8k", *other, flag, str(out / "train.parquet"), "--out", str(out), "--overwrite")
        _refused(result, f"{out / 'train.parquet'} is also an input: writing it would destroy the rows it is made "
                         "from; write the output to another path")
    assert _tree(out) == before


@pytest.mark.parametrize("args,message", [
    (["--synthetic", "--val", "v.jsonl"], "--val FILE is a validation file for --source; --synthetic makes its own "
                                          "validation rows (--num-val N): drop --val"),
    (["--source", "s.jsonl", "--num-train", "5", "--seed", "2"],
     "--num-train applies to --synthetic only: drop it; --seed applies to --synthetic only: drop it"),
    (["--source", "s.jsonl", "--val", "v.jsonl", "--num-val", "5"],
     "--num-val N holds rows of --source out for validation when there is no --val FILE: drop one of them"),
    (["--source", "openai/gsm8k", "--val", "v.jsonl"],
     "openai/gsm8k brings its own validation rows (its test split): drop --val and --num-val, or pass local train "
     "and validation files"),
    (["--source", "openai/gsm8k", "--num-val", "5"],
     "openai/gsm8k brings its own validation rows (its test split): drop --val and --num-val, or pass local train "
     "and validation files"),
])
def test_gsm8k_options_the_source_would_ignore_are_one_line(tmp_path, args, message):
    _refused(_cli("data", "gsm8k", *args, "--out", str(tmp_path / "g")), message)
    assert not (tmp_path / "g").exists()


def test_gsm8k_library_refuses_val_with_the_hub(tmp_path):
    from bridge_ray.data import convert_gsm8k

    with pytest.raises(ConfigError) as err:
        convert_gsm8k("openai/gsm8k", tmp_path, val_source=tmp_path / "v.jsonl")
    assert str(err.value) == ('"openai/gsm8k" brings its own validation rows (its test split): drop --val '
                              "(val_source=), or pass local train and validation files")


def test_demo_assets_still_rebuild_their_data_in_place(tmp_path, monkeypatch):
    """`build_demo_assets(..., overwrite=True)` regenerates data/ over a build with other arguments."""
    monkeypatch.setattr(assets, "build_tokenizer", lambda *a, **k: None)
    monkeypatch.setattr(assets, "build_llama", lambda *a, **k: None)
    first = assets.build_demo_assets(tmp_path, num_train=8, num_val=2)
    second = assets.build_demo_assets(tmp_path, num_train=9, num_val=2, overwrite=True)
    assert len(read_rows(second["train"])) == 9 and first["train"] == second["train"]


def test_demo_assets_never_write_over_files_they_did_not_make(tmp_path, monkeypatch):
    """`assets demo DIR` over a user's model/ and data/train.parquet replaced the parquet, wrote a tokenizer into
    the model folder, then died on "config.json is not a valid JSON file" reported as a bridge-ray bug. A build cut
    short leaves its stamp, so running it again finishes it."""
    from conftest import run_cli

    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "data").mkdir()
    (tmp_path / "mine" / "model" / "config.json").write_text("mine")
    (tmp_path / "mine" / "data" / "train.parquet").write_text("precious")
    out = run_cli("assets", "demo", str(tmp_path / "mine"), timeout=120)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"error: {tmp_path / 'mine'} holds files bridge-ray did not make (model, data/train.parquet): "
                          "demo assets are built into a new or empty folder (or one they were built in before); give "
                          "another folder, or move those files away\n")
    assert (tmp_path / "mine" / "data" / "train.parquet").read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "mine").rglob("*")) == ["config.json", "data", "model", "train.parquet"]

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "build_llama", cut_short)
    with pytest.raises(KeyboardInterrupt):
        assets.build_demo_assets(tmp_path / "ours", num_train=8, num_val=2)
    monkeypatch.setattr(assets, "build_llama", lambda *a, **k: None)
    monkeypatch.setattr(assets, "build_tokenizer", lambda *a, **k: None)
    assert len(read_rows(assets.build_demo_assets(tmp_path / "ours", num_train=8, num_val=2)["train"])) == 8


def test_cli_refusal_is_one_line_on_stderr_as_a_user_sees_it(source, tmp_path):
    from conftest import run_cli

    out = run_cli("data", "to-messages", str(source), str(source), *PAIR, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"error: {source} is also an input: writing it would destroy the rows it is made from; "
                          "write the output to another path\n")


def test_an_interrupted_write_leaves_no_half_file(tmp_path, monkeypatch):
    """Ctrl-C during `data to-messages` left a hidden 113 MB `.out.parquet.partial` beside the output."""
    import pyarrow.parquet as pq

    from bridge_ray.data import files

    def interrupted(table, where, *args, **kwargs):
        Path(where).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_parquet([{"a": 1}], tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_output_that_names_no_file_is_one_line(source, tmp_path):
    """`data to-messages chat.parquet ""` gave "unexpected ValueError: PosixPath('.') has an empty name"."""
    from conftest import run_cli

    out = run_cli("data", "to-messages", str(source), "", *PAIR, timeout=120)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "error: output '.' names no file: give a file path, e.g. data/train.parquet\n"


def test_the_training_file_as_its_own_validation_file_is_refused(tmp_path):
    """`data gsm8k --source X --val X` silently validated on the rows it trains on."""
    from bridge_ray.data.gsm8k import convert_gsm8k

    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n")
    with pytest.raises(ConfigError) as err:
        convert_gsm8k(rows, tmp_path / "out", val_source=tmp_path / "." / "train.jsonl")
    assert str(err.value) == (f"--val {tmp_path / '.' / 'train.jsonl'} is the training file itself: validation on the "
                              "rows it trains on says nothing; give a separate file (GSM8K's test split), or drop "
                              "--val to hold out the last rows")
    assert not (tmp_path / "out").exists()

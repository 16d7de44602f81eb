"""Unit tier: raw-text loaders, OpenAssistant tree flattening, the offline text and conversations."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bridge_ray.data.conversations import (convert_conversations, flatten, generate_synthetic_conversations,
                                           iter_conversations)
from bridge_ray.data.text import (check_text_files, demo_text, documents, generate_synthetic_text, iter_documents)
from bridge_ray.errors import ConfigError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_txt_and_parquet_documents(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "  "}, {"meta": {"body": "x"}, "text": "two"}])
    txt = tmp_path / "b.txt"
    txt.write_text("first line\nsame doc\n\n\nsecond doc\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["p1", None, "p2"]}), parquet)
    assert list(documents(jsonl)) == ["one", "two"]
    assert list(documents(txt)) == ["first line\nsame doc", "second doc"]
    assert list(documents(parquet, "content")) == ["p1", "p2"]
    assert list(iter_documents([jsonl, txt])) == ["one", "two", "first line\nsame doc", "second doc"]
    assert list(documents(write_jsonl(tmp_path / "n.jsonl", [{"meta": {"body": "nested"}}]), "meta.body")) == ["nested"]


def test_bad_text_files_are_one_line_each(tmp_path):
    missing_field = write_jsonl(tmp_path / "a.jsonl", [{"content": "x", "id": 1}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{oops\n')
    number = write_jsonl(tmp_path / "n.jsonl", [{"text": 5}])
    not_parquet = tmp_path / "bad.parquet"
    not_parquet.write_text("notparquet\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        check_text_files([missing_field, empty, tmp_path / "nope.jsonl", tmp_path / "x.csv", bad_json, number,
                          not_parquet, latin])
    assert err.value.problems == [
        f"{missing_field}: line 1 has no text field 'text' (it has: content, id); set data.text_key=content",
        f"{empty}: no text in it (empty, or every 'text' is blank); pass files that hold text",
        f"{tmp_path / 'nope.jsonl'}: no such file; pass existing .jsonl, .txt or .parquet files",
        f"{tmp_path / 'x.csv'}: unsupported file type '.csv'; use .jsonl (a text field), .txt or .parquet",
        f"{bad_json}: line 2 is not valid JSON (Expecting property name enclosed in double quotes); fix or remove it",
        f"{number}: line 1: field 'text' holds int 5, not text; each row's 'text' must be a string",
        f"{not_parquet}: not a readable parquet file (Parquet magic bytes not found in footer. Either the file is "
        "corrupted or this is not a parquet file.); pass a parquet file, or the text as .jsonl or .txt",
        f"{latin}: not UTF-8 text (byte 3: invalid continuation byte); convert it to UTF-8",
    ]
    with pytest.raises(ConfigError, match=r"^tokenizer.files is empty: pass one or more .jsonl/.txt/.parquet files$"):
        check_text_files([], what="tokenizer.files")


def test_a_missing_text_field_names_the_key_to_set_and_the_field_to_set_it_to(tmp_path):
    many = write_jsonl(tmp_path / "many.jsonl", [{"title": "t", "body": "b", "n": 1}])
    none = write_jsonl(tmp_path / "none.jsonl", [{"meta": {"body": "b"}, "n": 1}])
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1], "body": ["b"]}), table)
    with pytest.raises(ConfigError) as err:
        check_text_files([many, none, table], what="pretrain.data.train_files")
    assert err.value.problems == [
        f"{many}: line 1 has no text field 'text' (it has: body, n, title); set pretrain.data.text_key to the field "
        "that holds the text, e.g. pretrain.data.text_key=body",
        f"{none}: line 1 has no text field 'text' (it has: meta, n); set pretrain.data.text_key to the field that "
        "holds the text (dotted for a nested one, e.g. pretrain.data.text_key=meta.body)",
        f"{table}: no column 'text' (it has: id, body); set pretrain.data.text_key=body",
    ]


def test_synthetic_text_is_deterministic_and_sharded(tmp_path):
    a = generate_synthetic_text(tmp_path / "a", num_docs=10, num_shards=3)
    b = generate_synthetic_text(tmp_path / "b", num_docs=10, num_shards=3)
    assert [p.read_text() for p in a] == [p.read_text() for p in b]
    docs = list(iter_documents(a))
    assert len(docs) == 10 and all(d.startswith("Once upon a time, there was a ") for d in docs)
    train, val = demo_text(tmp_path / "demo", num_docs=20, num_val_docs=4)
    assert len(list(iter_documents(train))) == 20 and len(list(iter_documents(val))) == 4
    stamp = (tmp_path / "demo" / "bridge_ray_text.json").stat().st_mtime_ns
    assert demo_text(tmp_path / "demo", num_docs=20, num_val_docs=4) == (train, val)
    assert (tmp_path / "demo" / "bridge_ray_text.json").stat().st_mtime_ns == stamp


def node(role, text, rank=None, replies=(), deleted=False, lang="en"):
    return {"role": role, "text": text, "rank": rank, "deleted": deleted, "lang": lang, "replies": list(replies)}


TREE = node("prompter", "Q1", replies=[
    node("assistant", "A-worse", rank=1),
    node("assistant", "A-best", rank=0, replies=[node("prompter", "Q2", replies=[node("assistant", "A2", rank=0)]),
                                                  node("prompter", "Q2-dangling")]),
    node("assistant", "A-deleted", rank=None, deleted=True),
])


def test_flatten_top_and_all_paths():
    user, bot = "user", "assistant"
    assert flatten(TREE) == [[{"role": user, "content": "Q1"}, {"role": bot, "content": "A-best"},
                              {"role": user, "content": "Q2"}, {"role": bot, "content": "A2"}]]
    every = flatten(TREE, mode="all")
    assert [[m["content"] for m in conv] for conv in every] == [["Q1", "A-best", "Q2", "A2"], ["Q1", "A-best"],
                                                                  ["Q1", "A-worse"]]
    assert flatten(node("prompter", "Q", lang="de", replies=[node("assistant", "A", rank=0, lang="de")]), lang="en") == []


def test_oasst_rows_trees_and_messages_files(tmp_path):
    rows = [{"message_id": "1", "parent_id": None, "role": "prompter", "text": "Hi", "rank": None, "deleted": False},
            {"message_id": "2", "parent_id": "1", "role": "assistant", "text": "Hello!", "rank": 0, "deleted": False},
            {"message_id": "3", "parent_id": "1", "role": "assistant", "text": "Yo", "rank": 1, "deleted": False}]
    rows_file = write_jsonl(tmp_path / "oasst.messages.jsonl", rows)
    trees_file = write_jsonl(tmp_path / "oasst.trees.jsonl", [{"message_tree_id": "t", "prompt": TREE}])
    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    messages_file = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    found = list(iter_conversations([rows_file, trees_file, messages_file]))
    assert [[m["content"] for m in c] for c in found] == [["Hi", "Hello!"], ["Q1", "A-best", "Q2", "A2"], ["u", "a"]]
    out, count = convert_conversations([rows_file, trees_file], tmp_path / "out" / "train.parquet")
    assert count == 2 and pq.read_table(out).column("messages").to_pylist()[0] == found[0]


def test_conversation_errors(tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ConfigError, match=r"rows hold neither 'messages', an oasst tree .* it has: answer, question$"):
        list(iter_conversations([other]))
    german = write_jsonl(tmp_path / "de.jsonl", [{"prompt": node("prompter", "Q", lang="de", replies=[
        node("assistant", "A", rank=0, lang="de")])}])
    with pytest.raises(ConfigError, match=rf"^no conversation in language 'en' in {german}: each needs a user turn "
                                          r"followed by an assistant reply that is not deleted$"):
        convert_conversations([german], tmp_path / "x.parquet", lang="en")


def test_synthetic_conversations_flatten_to_two_turn_pairs(tmp_path):
    path = generate_synthetic_conversations(tmp_path / "trees.jsonl", num_trees=5)
    conversations = list(iter_conversations([path]))
    assert len(conversations) == 5
    assert all([m["role"] for m in c] == ["user", "assistant", "user", "assistant"] for c in conversations)
    assert all(c[1]["content"].startswith("Once upon a time,") for c in conversations)

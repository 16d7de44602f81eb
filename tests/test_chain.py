"""Integration tier: raw text -> tokenizer -> pretrain -> instruction-tune -> upload, one command, on a real local cluster.

``bridge-ray submit recipes/text_to_chat.py --follow`` on the session's ``bridge-ray up`` cluster (2 CPUs):
the tiny presets with fewer steps, offline stories and oasst-style trees, the upload going to
``HubStandIn`` (test_hub.py: the Hub's HTTP API on 127.0.0.1; the real Hub is not reachable here).
A second submission of the same run skips every stage.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli_watched
from test_hub import FAKE_TOKEN, HubStandIn

pytestmark = pytest.mark.integration

SHORT = ["pretrain.trainer.total_steps=6", "pretrain.trainer.save_freq=-1", "pretrain.trainer.test_freq=-1",
         "instruct.trainer.total_steps=4", "instruct.trainer.save_freq=-1"]


def submit(run_dir: Path, hub: HubStandIn, *extra: str):
    # Stopped when silent for 900 s, not at a fixed time: beside two busy loops this job ran past 25 min
    # while printing all along (2026-12-05).
    return run_cli_watched("submit", "recipes/text_to_chat.py", "--name", "ci", "--follow", "--verbose",
                           "--env", f"HF_ENDPOINT={hub.url}",
                           "--", f"run_dir={run_dir}", "hub_repo_id=me/tiny-chat", *SHORT, *extra,
                           env={"HF_TOKEN": FAKE_TOKEN},  # a secret goes from the shell, in a 0600 file
                           quiet=900, limit=3600)


def test_text_to_chat_end_to_end_then_skipped(local_cluster, tmp_path):
    import bridge_ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "chain"
    with HubStandIn() as hub:
        first = submit(run_dir, hub)
        assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
        stages = json.loads((run_dir / "stages.json").read_text())
        assert list(stages) == ["tokenizer", "pretrain", "instruct", "upload"]
        assert "'Once upon a time,' -> " in first.stdout  # the pretrained model's test prompt
        # Each training stage's start-up clock counts from that stage's start, not from the job's.
        assert first.stdout.count("s after the stage started (connect ") == 2, first.stdout[-4000:]
        assert "after its process started" not in first.stdout
        files = hub.repos["me/tiny-chat"]["files"]
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
        again = submit(run_dir, hub)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    for name in ("tokenizer", "pretrain", "instruct", "upload"):
        assert f"stage {name}: finished before" in again.stdout
    assert len(hub.repos["me/tiny-chat"]["commits"]) == 1
    chat = run_dir / "instruct" / "hf"
    tokenizer = AutoTokenizer.from_pretrained(chat)
    model = AutoModelForCausalLM.from_pretrained(chat)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a story about a cat named Lily."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model.generate(**prompt, max_new_tokens=4, do_sample=False).shape[1] > prompt["input_ids"].shape[1]
    submission = next(line.split()[1] for line in first.stdout.splitlines() if line.startswith("submitted "))
    run = bridge_ray.load_run(submission)
    assert run.hf_model == str(chat) and run.hub_url.endswith("me/tiny-chat")


@pytest.mark.parametrize("args, message", [
    (["run_dir=relative"], "error: run_dir='relative' must be an absolute path (relative paths land in Ray's "
                           "working_dir)\n"),
    (["pretrain.optim.lr=fast"], "error: pretrain.optim.lr='fast' is not a number\n"),
    (["preset=chain_huge"], "error: unknown preset 'chain_huge': choose from chain_tiny_cpu, chain_1b\n"),
    (["hub_repo_id=me/chat"], "error: hub_repo_id=me/chat needs a Hugging Face token in the job and it has none: "
                              "`export HF_TOKEN=...` where you submit (bridge-ray hands it to the job in a private "
                              "file) or `hf auth login` on the nodes; or leave the repo out and upload later with "
                              "`bridge-ray upload RUN --repo-id ...`\n"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_TOKEN"}
    proc = subprocess.run([sys.executable, "recipes/text_to_chat.py", *args], cwd=REPO, capture_output=True, text=True,
                          env={**env, "BRIDGE_RAY_HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}, timeout=300)
    assert (proc.returncode, proc.stderr) == (2, message)
    assert not (tmp_path / "outputs").exists()

"""Unit tier: ``bridge-ray upload`` against a local stand-in of the Hugging Face Hub's HTTP API.

The real Hub is not reachable from the CI machines, so ``HubStandIn`` serves, on 127.0.0.1, the
four endpoints huggingface_hub (1.x) calls for ``create_repo`` + ``upload_folder``:
``POST /api/repos/create``, ``POST /api/validate-yaml`` (it rejects a ``base_model`` that is not a
repo id, as the Hub does), ``POST /api/models/<repo>/preupload/main`` (every file "regular", so
file contents come inline in the commit) and ``POST /api/models/<repo>/commit/main`` (NDJSON).
It checks the bearer token on every request. Real LFS/Xet transfer is not exercised.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bridge_ray import runs
from bridge_ray.cli import cli
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import ConfigError
from bridge_ray.jobs import SubmitPlan
from bridge_ray.models import hub
from conftest import run_cli

FAKE_TOKEN = "hf_standinFAKEtoken1234567890"


class HubStandIn:
    """Just enough of the Hub's HTTP API for create_repo + upload_folder (see the module docstring)."""

    def __init__(self, token: str = FAKE_TOKEN):
        self.token, self.repos, self.requests = token, {}, []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        self.requests.append((method, path, dict(headers)))
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = {"visibility": data.get("visibility"), "files": {}, "commits": []}
            return 200, {"url": f"{self.url}/{repo_id}"}
        if path == "/api/validate-yaml":
            meta = yaml.safe_load(json.loads(body)["content"].split("---")[1])
            base = meta.get("base_model")
            if base is not None and (base.startswith("/") or base.count("/") != 1):
                return 400, {"errors": [{"message": f'"base_model" with value "{base}" is not a valid model id'}]}
            return 200, {"warnings": []}
        kind, _, rest = path.removeprefix("/api/models/").rpartition("/main")[0].rpartition("/")
        repo = self.repos.get(kind)
        if repo is None:
            return 404, {"error": "Repository not found"}
        if rest == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if rest == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            repo["commits"].append(lines[0]["value"]["summary"])
            for line in lines[1:]:
                assert line["key"] == "file", line
                repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            return 200, {"commitUrl": f"{self.url}/{kind}/commit/{'a' * 40}", "commitOid": "a" * 40}
        return 404, {"error": f"stand-in does not serve {path}"}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                code, payload = standin.handle("POST", self.path.split("?")[0], headers, body)
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def standin():
    with HubStandIn() as server:
        yield server


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No HF_TOKEN and no `hf auth login` token file (a real login on this machine must not count)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with its tokenizer: a folder transformers loads."""
    from bridge_ray.models.assets import build_llama, build_tokenizer, default_corpus

    folder = tmp_path_factory.mktemp("merged") / "hf"
    build_tokenizer(folder, default_corpus(200), vocab_size=512)
    return build_llama(folder, shape="tiny", tokenizer_dir=folder, dtype="float32")


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    return tmp_path / "home"


def _fake_run(home: Path, model: Path, submission_id: str = "sft-gsm8k-20261125-120000-abcd") -> runs.RunRecord:
    """A finished run record whose job merged ``model`` (as ``bridge_ray.sft`` would record it)."""
    project = home.parent / "project"
    project.mkdir(exist_ok=True)
    plan = SubmitPlan("ci", submission_id, "python recipes/sft_gsm8k.py",
                      {"working_dir": str(project), "env_vars": {"HF_TOKEN": FAKE_TOKEN}},
                      {"recipe": "recipes/sft_gsm8k.py"})
    folder = runs.start_run(plan, ClusterRecord(name="ci", backend="local", gcs_address="x", dashboard_url="y"))
    (folder / "config.json").write_text(json.dumps({"sft": {
        "model": {"path": "/models/Llama-3.2-1B-Instruct"}, "data": {"train_files": ["/data/gsm8k/train.parquet"]}}}))
    (folder / "metrics.json").write_text(json.dumps({"final": {"step": 6, "loss": 1.25}, "history": []}))
    wandb = {"mode": "online", "url": "https://wandb.ai/me/gsm8k/runs/abc123", "dir": None, "sync_command": None}
    runs.update_fields(folder, {"hf_model": str(model), "status": "SUCCEEDED", "wandb": wandb})
    return runs.load_run(submission_id)


def test_upload_sends_files_and_card_to_the_standin(standin, model_dir, home, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (model_dir / "weights.tmp").write_text("half-written")
    run = _fake_run(home, model_dir)

    url = hub.upload(run.submission_id, "me/tiny-gsm8k", private=True, endpoint=standin.url)

    assert url == f"{standin.url}/me/tiny-gsm8k"
    repo = standin.repos["me/tiny-gsm8k"]
    assert repo["visibility"] == "private"
    assert repo["commits"] == [f"Upload hf from bridge-ray run {run.submission_id}"]
    sent = repo["files"]
    assert sent["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(sent)
    assert "weights.tmp" not in sent
    card = sent["README.md"].decode()
    for expected in ("`/models/Llama-3.2-1B-Instruct`", "`/data/gsm8k/train.parquet`", "`recipes/sft_gsm8k.py`",
                     "| Steps | 6 |", "https://wandb.ai/me/gsm8k/runs/abc123", "| Final loss | 1.25 |",
                     'AutoModelForCausalLM.from_pretrained("me/tiny-gsm8k")'):
        assert expected in card, expected
    assert "base_model:" not in card  # a local path is not a Hub id; the Hub would reject the commit
    assert runs.load_run(run.submission_id).hub_url == url
    assert all(h.get("authorization") == f"Bearer {FAKE_TOKEN}" for _, _, h in standin.requests)
    out = capsys.readouterr()
    assert FAKE_TOKEN not in out.out + out.err
    assert FAKE_TOKEN not in "".join(p.read_text(errors="replace") for p in Path(run.run_dir).rglob("*") if p.is_file())


def test_card_names_a_hub_base_model_in_its_metadata(standin, model_dir, home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (model_dir / "README.md").unlink(missing_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "_name_or_path": "meta-llama/Llama-3.2-1B"}))

    hub.upload(model_dir, "me/from-folder", endpoint=standin.url)

    card = standin.repos["me/from-folder"]["files"]["README.md"].decode()
    assert "base_model: meta-llama/Llama-3.2-1B" in card
    assert standin.repos["me/from-folder"]["visibility"] == "public"


def test_upload_cli_takes_the_token_from_the_environment_only(standin, model_dir, home):
    run = _fake_run(home, model_dir, "sft-cli-1")
    env = {"BRIDGE_RAY_HOME": str(home), "HF_TOKEN": FAKE_TOKEN, "HF_ENDPOINT": standin.url}

    proc = run_cli("upload", run.submission_id, "--repo-id", "me/cli-upload", env=env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"uploaded to {standin.url}/me/cli-upload"
    # The long phases on stderr (not a terminal: a line as each starts and one as it ends, with its time).
    folder = Path(run.hf_model)
    said = proc.stderr.splitlines()
    assert said[0] == f"[bridge-ray] checking that {folder} loads in transformers ..."
    assert re.fullmatch(rf"\[bridge-ray\] checking that {re.escape(str(folder))} loads in transformers: done in [\d.]+ s",
                        said[1])
    assert said[2] == "[bridge-ray] creating or finding me/cli-upload on the Hub ..."
    assert re.fullmatch(r"\[bridge-ray\] creating or finding me/cli-upload on the Hub: done in [\d.]+ s", said[3])
    assert re.fullmatch(rf"\[bridge-ray\] uploading {re.escape(str(folder))} \(\d+ files, [\d,]+ MiB\) to me/cli-upload \.\.\.",
                        said[4])
    assert said[5].startswith(f"[bridge-ray] uploading {folder} (") and re.search(r": done in [\d.]+ s$", said[5])
    assert "README.md" in standin.repos["me/cli-upload"]["files"]
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert "--token" not in CliRunner().invoke(cli, ["upload", "--help"]).output


def test_a_folder_that_is_not_a_model_is_refused(standin, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError) as err:
        hub.upload(tmp_path, "me/nope", endpoint=standin.url)
    assert str(err.value) == (f"{tmp_path} is not a model transformers can load (no config.json): pass a merged "
                              "model folder (a run's hf/, or `bridge-ray export RUN`) or a run id")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="has a config.json but no weights"):
        hub.upload(tmp_path, "me/nope", endpoint=standin.url)
    assert standin.requests == []


def test_no_token_and_bad_repo_id_are_one_line_errors(standin, model_dir, no_login):
    with pytest.raises(ConfigError) as err:
        hub.upload(model_dir, "me/x", endpoint=standin.url)
    assert str(err.value) == ("no Hugging Face token: run `hf auth login` (or `huggingface-cli login`), "
                              "or `export HF_TOKEN=...` with a token that can write to the repo")
    with pytest.raises(ConfigError) as err:
        hub.upload(model_dir, "no-owner", endpoint=standin.url)
    assert str(err.value) == "--repo-id 'no-owner' is not owner/name: write e.g. --repo-id my-org/llama1b-gsm8k"
    assert standin.requests == []


def test_a_refused_token_is_a_hub_error_without_the_token(standin, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKENvalue000")
    with pytest.raises(hub.HubError) as err:
        hub.upload(model_dir, "me/refused", endpoint=standin.url)
    assert str(err.value).startswith("the Hub refused the upload to me/refused (HTTP 401")
    assert "hf_wrongTOKENvalue000" not in str(err.value)


def test_a_hub_out_of_reach_is_one_line_that_names_the_network_not_the_model(model_dir, monkeypatch):
    """No network gave "unexpected ConnectError ... a bridge-ray bug", under a progress line saying the model's
    check had failed. The stand-in for an unreachable Hub is a local port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    phases = []
    with pytest.raises(hub.HubError) as err:
        hub.upload(model_dir, "me/offline", endpoint=f"http://127.0.0.1:{port}", on_phase=phases.append)
    assert str(err.value).startswith(f"could not reach the Hub at http://127.0.0.1:{port} (ConnectError: ")
    assert str(err.value).endswith(f"): check this machine's network and proxy, then run the upload again (nothing "
                                   f"is lost: the model stays in {model_dir})")
    assert phases[-1] == "creating or finding me/offline on the Hub" and FAKE_TOKEN not in str(err.value)


def test_upload_after_run_is_a_no_op_without_a_repo_id(model_dir):
    assert hub.upload_after_run(model_dir, None) is None


def test_run_record_fields_survive_a_round_trip(home, model_dir):
    run = _fake_run(home, model_dir, "roundtrip")
    assert runs.RunRecord.from_dict(dataclasses.asdict(run)) == run

"""Upload a merged Hugging Face model (and its tokenizer) to the Hub, with a model card.

``upload(run_or_dir, repo_id)`` checks that transformers can load the folder, writes a model card
(``README.md``: base model, data, recipe, steps, W&B run) into it unless it already has one,
creates the repo (``exist_ok``) and uploads the folder in one commit, leaving temporary files out.

The token comes from ``HF_TOKEN`` or ``hf auth login`` (huggingface_hub's own lookup), never from
an argument, so it is never in a shell history, a process list or a log.
"""
from __future__ import annotations

import fnmatch
import os
import json
import re
from pathlib import Path
from typing import Callable

from bridge_ray import runs
from bridge_ray.errors import ConfigError, HubError

IGNORE_PATTERNS = ("*.tmp", "*.temp", "*.partial", "*.incomplete", "*.lock", "*~", "*.swp", ".DS_Store",
                   "__pycache__/*", ".ipynb_checkpoints/*", "tmp*/*")
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
CARD_MARKER = "<!-- model card written by bridge-ray -->"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_model(folder: Path) -> None:
    """Refuse a folder that transformers cannot load as a model (config, weights, tokenizer if any).

    Raises:
        ConfigError: saying what is missing and what to pass instead.
    """
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        raise ConfigError("checking the model needs transformers: pip install 'bridge-ray[train]'") from None
    hint = "pass a merged model folder (a run's hf/, or `bridge-ray export RUN`) or a run id"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a model transformers can load (no config.json): {hint}")
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{folder} is not a model transformers can load ({_first_line(err)}): {hint}") from None
    if not any(any(folder.glob(pattern)) for pattern in WEIGHTS):
        raise ConfigError(f"{folder} has a config.json but no weights (*.safetensors or pytorch_model*.bin): {hint}")
    if any((folder / name).exists() for name in TOKENIZER_FILES):
        try:
            AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(f"the tokenizer in {folder} does not load ({_first_line(err)}): {hint}") from None


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token: run `hf auth login` (or `huggingface-cli login`), "
                          "or `export HF_TOKEN=...` with a token that can write to the repo")
    return token


def require_token(setting: str) -> None:
    """Before a run trains: the upload it ends with (``setting``, e.g. ``hub_repo_id=me/model``) will have a token.

    Raises:
        ConfigError: no token where the run runs (``HF_TOKEN`` or a ``hf auth login``).
    """
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(f"{setting} needs a Hugging Face token in the job and it has none: `export HF_TOKEN=...` "
                          "where you submit (bridge-ray hands it to the job in a private file) or `hf auth login` on "
                          "the nodes; or leave the repo out and upload later with `bridge-ray upload RUN --repo-id ...`")


def resolve(run_or_dir: str | Path) -> tuple[Path, runs.RunRecord | None]:
    """The model folder and its run record (if known) for a run id, a run folder or a model folder.

    Raises:
        RunNotFound: neither a folder nor a recorded run.
        ConfigError: the run has no merged model yet.
    """
    path = Path(run_or_dir)
    if path.is_dir() and not (path / "run.json").is_file():
        folder = path.resolve()
        return folder, _run_of(folder)
    run = runs.read_run(path) if path.is_dir() else runs.load_run(str(run_or_dir))
    if not run.hf_model:
        _has_checkpoint(run)
        raise ConfigError(f"run {run.submission_id} has no merged model recorded: "
                          f"merge one with `bridge-ray export {run.submission_id}` and upload that folder")
    return Path(run.hf_model), run


def _has_checkpoint(run: runs.RunRecord) -> None:
    """Raise, for a run without a merged model, when ``bridge-ray export RUN`` would find nothing to merge."""
    from bridge_ray.models.export import CheckpointNotFound, find_checkpoint

    if not run.output_dir:
        raise ConfigError(f"run {run.submission_id} has no merged model to upload and recorded no output dir to merge "
                          "one from: upload a model folder instead (`bridge-ray upload FOLDER --repo-id ...`)")
    try:
        find_checkpoint(Path(run.output_dir))
    except CheckpointNotFound as err:
        raise ConfigError(f"run {run.submission_id} has no merged model to upload and none to merge: {err}") from None


def _run_of(folder: Path) -> runs.RunRecord | None:
    """The run that produced ``folder``: the current job's, or the one whose merged model it is."""
    current = runs.current_run_dir()
    if current is not None and (current / "run.json").is_file():
        return runs.read_run(current)
    candidates = runs.list_runs() if runs.runs_root().is_dir() else []
    made = [run for run in candidates
            if folder in {Path(p).resolve() for p in [run.hf_model, *run.exports.values()] if p}]
    return made[-1] if made else None


def _section(config: dict | None, name: str) -> dict:
    """The ``name`` section of a resolved config, at the top or one level down (``sft.model``)."""
    config = config or {}
    if isinstance(config.get(name), dict):
        return config[name]
    return next((v[name] for v in config.values() if isinstance(v, dict) and isinstance(v.get(name), dict)), {})


def _base_model(folder: Path, run: runs.RunRecord | None) -> str | None:
    path = _section(run.config if run else None, "model").get("path")
    if path:
        return path
    config = json.loads((folder / "config.json").read_text())
    return config.get("_name_or_path") or None


def _run_rows(run: runs.RunRecord) -> list[tuple[str, str]]:
    """The model card's rows about the run that made the model."""
    files = _section(run.config, "data").get("train_files") or []
    git = run.git or {}
    commit = (git.get("commit") or "no commit")[:12] + (" + uncommitted changes" if git.get("dirty") else "")
    wandb = run.wandb or {}
    offline = f"offline: `{wandb['sync_command']}`" if wandb.get("sync_command") else "none"
    rows = [("Data", ", ".join(f"`{f}`" for f in files) or "unknown"),
            ("Recipe", f"`{run.recipe}` at {commit}"),
            ("Steps", "unknown" if run.last_step is None else str(run.last_step)),
            ("W&B run", wandb.get("url") or offline),
            ("Run", f"`{run.submission_id}` ({run.status}) on cluster `{run.cluster}`")]
    metrics = run.metrics or {}
    return rows + [(f"Final {k}", f"{metrics[k]:.4g}") for k in ("loss", "val_loss")
                   if isinstance(metrics.get(k), (int, float))]


def model_card(folder: Path, repo_id: str, run: runs.RunRecord | None) -> str:
    """The ``README.md`` for ``repo_id``: base model, data, recipe, steps, W&B run, final metrics.

    ``base_model`` goes into the metadata only when it is a Hub id: the Hub rejects a local path there.
    """
    base = _base_model(folder, run)
    meta = ["library_name: transformers", "tags:", "- bridge-ray", "- verl"]
    if base and _REPO_ID.match(base) and not Path(base).exists():
        meta.append(f"base_model: {base}")
    rows = [("Base model", f"`{base}`" if base else "unknown")] + (_run_rows(run) if run else [])
    versions = (run.packages if run else None) or {}
    made_with = ", ".join(f"{name} {versions[name]}" for name in ("verl", "ray", "transformers", "torch")
                          if versions.get(name))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return ("---\n" + "\n".join(meta) + f"\n---\n{CARD_MARKER}\n\n# {repo_id.split('/')[1]}\n\n"
            f"Fine-tuned with bridge-ray{f' ({made_with})' if made_with else ''}.\n\n"
            f"| | |\n|---|---|\n{table}\n\n## Use\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n```\n')


def _write_card(folder: Path, card: str) -> None:
    readme = folder / "README.md"
    if not readme.exists() or CARD_MARKER in readme.read_text(errors="replace"):
        readme.write_text(card)


def upload(run_or_dir: str | Path, repo_id: str, private: bool = False, endpoint: str | None = None,
           on_phase: Callable[[str], None] | None = None) -> str:
    """Upload a merged model (and tokenizer) with a model card; return the repo's URL.

    Args:
        run_or_dir: a run id (its merged model), a run folder, or a model folder.
        repo_id: ``owner/name`` on the Hub (created if missing).
        private: create the repo private (an existing repo keeps its visibility).
        endpoint: the Hub's URL (default ``HF_ENDPOINT`` or https://huggingface.co).
        on_phase: called with each long phase's name as it starts (checking, uploading); the CLI
            shows them with their elapsed time (and huggingface_hub its own byte counts on a terminal).

    Returns:
        The repo URL; also recorded as the run's ``hub_url``.

    Raises:
        ConfigError: a bad repo id, a folder transformers cannot load, or no token (with the fix).
        HubError: the Hub refused the request.

    Example:
        >>> bridge_ray.upload("sft-gsm8k-20261125-1730", "me/llama1b-gsm8k", private=True)
        'https://huggingface.co/me/llama1b-gsm8k'
    """
    if not _REPO_ID.match(repo_id):
        raise ConfigError(f"--repo-id {repo_id!r} is not owner/name: write e.g. --repo-id my-org/llama1b-gsm8k")
    say = on_phase or (lambda phase: None)
    folder, run = resolve(run_or_dir)
    token = _token()  # before the check: a missing token is not the model's fault
    say(f"checking that {folder} loads in transformers")
    check_model(folder)
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    _write_card(folder, model_card(folder, repo_id, run))
    try:
        say(f"creating or finding {repo_id} on the Hub")
        url = str(api.create_repo(repo_id, private=private, exist_ok=True))
        files = [f for f in folder.rglob("*") if f.is_file() and not any(
            fnmatch.fnmatch(f.relative_to(folder).as_posix(), pattern) for pattern in IGNORE_PATTERNS)]
        say(f"uploading {folder} ({len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:,.0f} MiB) "
            f"to {repo_id}")
        api.upload_folder(repo_id=repo_id, folder_path=folder, ignore_patterns=list(IGNORE_PATTERNS),
                          commit_message=f"Upload {folder.name} from bridge-ray"
                                         + (f" run {run.submission_id}" if run else ""))
    except HfHubHTTPError as err:
        code = err.response.status_code if err.response is not None else "?"
        raise HubError(f"the Hub refused the upload to {repo_id} (HTTP {code}: {_first_line(err)}): check that "
                       "your token (HF_TOKEN or `hf auth login`) can write to that owner") from None
    except (httpx.TransportError, OSError) as err:  # no network, DNS, a proxy, a timeout: nothing reached the Hub
        where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise HubError(f"could not reach the Hub at {where} ({type(err).__name__}: {_first_line(err)}): check this "
                       "machine's network and proxy, then run the upload again (nothing is lost: the model stays in "
                       f"{folder})") from None
    if run is not None:
        runs.amend(run, hub_url=url)
    return url


def upload_after_run(hf_model: str | Path, repo_id: str | None, private: bool = False) -> str | None:
    """For trainers and recipes: upload the model just merged when ``repo_id`` is set; else do nothing.

    Inside a bridge-ray job the card describes the current run and the URL lands in its record.
    The job needs ``HF_TOKEN``: set it where you submit; bridge-ray hands it to the job's processes
    in a private file, never in the runtime_env.

    Example:
        >>> hub.upload_after_run(result.hf_model, cfg.trainer.hub_repo_id)
    """
    if not repo_id:
        return None
    url = upload(hf_model, repo_id, private=private)
    print(f"[bridge-ray] uploaded {hf_model} to {url}", flush=True)
    return url

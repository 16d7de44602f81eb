"""Unit tier: runtime_env building, env parsing, recipe checks, records, config overrides. No cluster."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bridge_ray.cluster import records
from bridge_ray.config import apply_overrides
from bridge_ray.errors import BridgeRayError, ClusterNotFound, ConfigError, RecipeError, WorkingDirTooLarge
from bridge_ray.jobs import check_recipe, runtime_env


def test_parse_env_accepts_key_value_and_pins_malformed_message():
    assert runtime_env.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigError) as err:
        runtime_env.parse_env(["NCCL_DEBUG"])
    assert str(err.value) == "--env 'NCCL_DEBUG' is not KEY=VALUE: write e.g. --env NCCL_DEBUG=INFO"


def test_allowed_env_takes_only_the_allow_list():
    environ = {"NCCL_IB_HCA": "mlx5_0", "HF_TOKEN": "t", "PATH": "/bin", "AWS_SECRET": "x",
               "CUDA_DEVICE_MAX_CONNECTIONS": "1", "VERL_PLATFORM": "cpu", "HOME": "/root"}
    assert runtime_env.allowed_env(environ) == {
        "NCCL_IB_HCA": "mlx5_0", "HF_TOKEN": "t", "CUDA_DEVICE_MAX_CONNECTIONS": "1", "VERL_PLATFORM": "cpu"}


def test_redact_hides_secret_values_only():
    shown = runtime_env.redact({"env_vars": {"HF_TOKEN": "hf_abc", "WANDB_API_KEY": "k", "NCCL_DEBUG": "INFO"}})
    assert shown["env_vars"] == {"HF_TOKEN": "***", "WANDB_API_KEY": "***", "NCCL_DEBUG": "INFO"}


def test_project_dir_is_nearest_marker(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.py"
    recipe.write_text("")
    assert runtime_env.project_dir(recipe) == tmp_path


def test_package_size_skips_excludes_and_pins_too_large_message(tmp_path):
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "big").write_bytes(b"0" * 4096)
    (tmp_path / "model.safetensors").write_bytes(b"0" * 4096)
    assert runtime_env.check_package_size(tmp_path) == 6
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"0" * 3 * 2**20)
    with pytest.raises(WorkingDirTooLarge) as err:
        runtime_env.check_package_size(tmp_path, limit=2 * 2**20)
    assert str(err.value) == (
        f"working_dir {tmp_path} would upload 3 MiB, over Ray's 2 MiB limit; biggest: data (3 MiB), "
        "code.py (0 MiB): move data and checkpoints out of the project or add --exclude PATTERN")


def test_check_recipe_messages(tmp_path):
    with pytest.raises(RecipeError) as err:
        check_recipe(tmp_path / "nope.py")
    assert str(err.value) == (f"recipe {tmp_path / 'nope.py'} does not exist: pass the path of a .py file, "
                              "e.g. recipes/hello_cluster.py")
    (tmp_path / "r.yaml").write_text("")
    with pytest.raises(RecipeError) as err:
        check_recipe(tmp_path / "r.yaml")
    assert str(err.value) == (f"recipe {tmp_path / 'r.yaml'} is not a Python file: pass a .py file, "
                              "e.g. recipes/hello_cluster.py")


def test_records_roundtrip_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path))  # no other clusters recorded here
    rec = records.ClusterRecord(name="unit", backend="address", gcs_address="", dashboard_url="http://x:1")
    records.save(rec)
    assert records.load("unit") == rec
    assert records.delete("unit") and not records.delete("unit")
    with pytest.raises(ClusterNotFound) as err:
        records.load("nothere")
    assert str(err.value) == (f"no cluster named 'nothere' is recorded in {tmp_path}: "
                              "start one with `bridge-ray up --name nothere`")


def test_bad_cluster_name():
    with pytest.raises(ConfigError, match="cluster name 'a b' is not valid"):
        records.check_name("a b")


def test_a_negative_stop_wait_is_refused_before_any_cluster_is_asked():
    from click.testing import CliRunner

    from bridge_ray.cli import cli

    result = CliRunner().invoke(cli, ["stop", "some-job", "--name", "no-such-cluster", "--wait", "-1"])
    assert result.exit_code == 2
    assert result.output == ("error: Invalid value for '--wait': -1.0 is not in the range x>=0: "
                             "see `cli stop --help`\n")
    assert "Traceback" not in result.output and "no-such-cluster" not in result.output


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 1e-5
    names: tuple[str, ...] = ("console",)


@dataclasses.dataclass(frozen=True)
class _Outer:
    steps: int = 1
    inner: _Inner = _Inner()
    path: str | None = None


def test_apply_overrides_types_and_collected_errors():
    cfg = apply_overrides(_Outer(), ["x.steps=3", "inner.lr=2e-4", "x.inner.names=[console,wandb]", "path=/a"], prefix="x")
    assert cfg == _Outer(steps=3, inner=_Inner(lr=2e-4, names=("console", "wandb")), path="/a")
    with pytest.raises(ConfigError) as err:
        apply_overrides(_Outer(), ["steps=many", "nope=1", "inner.lr", "-v"], prefix="x")
    assert err.value.problems == [
        "steps='many' is not an integer",
        "unknown key 'nope': _Outer has inner, path, steps",
        "override 'inner.lr' has no '=': write it as inner.lr=VALUE",
        "'-v' is not an override: recipe arguments are x.GROUP.KEY=VALUE overrides and preset=NAME",
    ]


def test_the_bridge_ray_home_inside_the_project_is_never_uploaded(tmp_path, monkeypatch):
    """A recipe in a folder without project markers above the home (BRIDGE_RAY_HOME=/tmp/x/home, recipe /tmp/x/r.py)
    uploaded the home: the clusters' auth tokens and other jobs' secrets files, kept in Ray's working_dir cache.
    The exclude is checked with Ray's own packaging, which reads it as .gitignore does."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    home = tmp_path / "proj" / "home"
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(home))
    (home / "clusters" / "default" / "secrets").mkdir(parents=True)
    (home / "clusters" / "default" / "auth_token").write_text("tok")
    (home / "clusters" / "default" / "secrets" / "job.env").write_text("HF_TOKEN=hf_x")
    (tmp_path / "proj" / "data" / "home").mkdir(parents=True)  # a folder of the same name elsewhere still travels
    (tmp_path / "proj" / "data" / "home" / "keep.txt").write_text("x")
    recipe = tmp_path / "proj" / "r.py"
    recipe.write_text("print(1)\n")
    built = runtime_env.build(recipe, {})
    assert "/home" in built["excludes"]
    target = tmp_path / "pkg.zip"
    create_package(built["working_dir"], target, include_gitignore=True, excludes=built["excludes"])
    assert sorted(zipfile.ZipFile(target).namelist()) == ["data/home/keep.txt", "r.py"]
    assert runtime_env.package_size(recipe.parent, tuple(built["excludes"]))[0] == len("print(1)\n") + 1
    inside = home / "recipes" / "mine.py"
    inside.parent.mkdir()
    inside.write_text("print(1)\n")
    with pytest.raises(ConfigError) as err:
        runtime_env.build(inside, {})
    assert str(err.value) == (f"recipe {inside} is inside the bridge-ray home {home}, which holds the clusters' auth "
                              "tokens and the jobs' secrets: its folder would be uploaded with it; move the recipe "
                              "into a project folder outside the home")


def test_credentials_in_a_recipes_folder_stay_out_of_the_upload_and_the_home_folder_is_refused(tmp_path, monkeypatch):
    """A recipe in a folder with .ssh/, .aws/, a HF token cache uploaded them all to every node (Ray's working_dir
    cache); a recipe in the user's home folder uploaded the whole home."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "brhome"))
    proj = tmp_path / "proj"
    for rel in (".ssh/id_rsa", ".aws/credentials", ".cache/huggingface/token", ".env", "server.pem", "id_ed25519",
                ".config/gcloud/credentials.db", "data/notes.txt", "sub/.ssh/config"):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text("secret")
    (proj / "r.py").write_text("print(1)\n")
    built = runtime_env.build(proj / "r.py", {})
    target = tmp_path / "pkg.zip"
    create_package(built["working_dir"], target, include_gitignore=True, excludes=built["excludes"])
    assert sorted(zipfile.ZipFile(target).namelist()) == ["data/notes.txt", "r.py"]
    monkeypatch.setenv("HOME", str(proj))
    with pytest.raises(ConfigError) as err:
        runtime_env.build(proj / "r.py", {})
    assert str(err.value) == (f"recipe {proj / 'r.py'} would upload your whole home folder {proj} (its project: no "
                              "pyproject.toml, setup.py or .git nearer): move the recipe into a project folder")


def test_booleans_are_no_numbers_and_a_large_integer_is_one():
    """`sft.trainer.total_steps=true` reached verl as trainer.total_training_steps=True; 10**23 steps was "not an
    integer" (float() had rounded it)."""
    with pytest.raises(ConfigError) as err:
        apply_overrides(_Outer(), ["steps=true", "inner.lr=false"], prefix="x")
    assert err.value.problems == ["steps=true is not an integer", "inner.lr=false is not a number"]
    assert apply_overrides(_Outer(), ["steps=99999999999999999999999"]).steps == 99999999999999999999999
    with pytest.raises(ConfigError) as err:
        apply_overrides(_Outer(), ["steps=null", "inner.lr=~"], prefix="x")
    assert err.value.problems == ["steps=null: this key cannot be unset; give an integer",
                                  "inner.lr=null: this key cannot be unset; give a number"]
    assert apply_overrides(_Outer(), ["path=null"]).path is None  # an Optional key takes it


def test_the_python_api_refuses_arguments_of_the_wrong_type_before_anything(tmp_path, monkeypatch):
    """`bridge_ray.submit(recipe, "sft.optim.lr=1")` sent each character as an argument (the job failed on the
    cluster); an int argument, an env value that is no string or a cluster name that is no string raised a bare
    TypeError. A secret's value never shows in the message."""
    import bridge_ray

    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    cases = [((("recipes/hello_cluster.py", "sft.optim.lr=1"), {}),
              "args='sft.optim.lr=1': give the recipe's arguments as a list of strings, e.g. [\"sft.optim.lr=1e-4\"]"),
             ((("recipes/hello_cluster.py", ["a=1", 5]), {}),
              "args=['a=1', 5]: give the recipe's arguments as a list of strings, e.g. [\"sft.optim.lr=1e-4\"]"),
             ((("recipes/hello_cluster.py",), {"env": {"FOO": 1, "HF_TOKEN": "hf_secret"}}),
              "env={'FOO': 1}: give the job's variables as a dict of strings, e.g. {\"NCCL_DEBUG\": \"INFO\"}")]
    for (args, kwargs), message in cases:
        with pytest.raises(ConfigError) as err:
            bridge_ray.submit(*args, **kwargs)
        assert str(err.value) == message
    with pytest.raises(ConfigError, match="cluster name 123 is not valid"):
        bridge_ray.up(123)
    assert not (tmp_path / "home").exists()


def test_gitignored_paths_do_not_count_toward_the_upload(tmp_path):
    (tmp_path / ".gitignore").write_text("# build outputs\n/.gpu/\n*.tar.xz\n!keep.tar.xz\n")
    (tmp_path / ".gpu").mkdir()
    (tmp_path / ".gpu" / "wheels.bin2").write_bytes(b"0" * 4096)
    (tmp_path / "big.tar.xz").write_bytes(b"0" * 4096)
    (tmp_path / "code.py").write_text("x = 1\n")
    assert runtime_env.gitignore_patterns(tmp_path) == (".gpu", "*.tar.xz")
    recipe = tmp_path / "code.py"
    (tmp_path / "pyproject.toml").write_text("")
    assert runtime_env.build(recipe, {})["working_dir"] == str(tmp_path)
    # code.py (6 bytes) + .gitignore (45) + pyproject.toml (0): the ignored 8 KiB do not count.
    assert runtime_env.check_package_size(tmp_path, runtime_env.DEFAULT_EXCLUDES + (".gpu", "*.tar.xz")) == 51


def test_an_exclude_that_leaves_out_the_recipe_or_bridge_rays_own_files_is_one_line(tmp_path):
    """Ray would upload the project without them and the job would fail on the cluster (a reviewer's
    ``--exclude recipes`` did, with a traceback from bridge-ray's launcher): refused here instead."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "train.py"
    recipe.write_text("print(1)\n")
    for pattern in ("recipes", "*.py", "train*", "recipes/train.py"):
        with pytest.raises(ConfigError) as err:
            runtime_env.build(recipe, {}, excludes=(pattern,))
        assert str(err.value) == (f"--exclude {pattern!r} leaves the recipe recipes/train.py out of the job's upload, "
                                  "so the job could not run it: narrow the pattern")
    assert runtime_env.build(recipe, {}, excludes=("data", "*.parquet"))["working_dir"] == str(tmp_path)
    (tmp_path / ".gitignore").write_text("recipes/\n")
    with pytest.raises(ConfigError, match=r"^.gitignore's 'recipes' leaves the recipe recipes/train.py out .*: "
                                          "narrow that line$"):
        runtime_env.build(recipe, {})
    (tmp_path / ".gitignore").unlink()
    (tmp_path / "bridge_ray" / "jobs").mkdir(parents=True)  # a checkout of bridge-ray: the job imports it from here
    for name in ("__init__.py", "jobs/__init__.py", "jobs/launch.py"):
        (tmp_path / "bridge_ray" / name).write_text("")
    with pytest.raises(ConfigError) as err:
        runtime_env.build(recipe, {}, excludes=("jobs",))
    assert str(err.value) == ("--exclude 'jobs' leaves bridge-ray's own bridge_ray/jobs/__init__.py out of the job's "
                              "upload, so the job could not import bridge-ray: narrow the pattern")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "r.py").write_text("")
    with pytest.raises(ConfigError, match=r"^the default exclude 'outputs' leaves the recipe outputs/r.py out .*: "
                                          "move the file out of that folder$"):
        runtime_env.build(outputs / "r.py", {})


def _check(*args: str, cwd=None):
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, "-m", "bridge_ray.jobs.launch", "--check", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_local_check_builds_and_validates_what_the_recipe_declares(tmp_path):
    """What `submit` runs here first: the recipe's config(argv), validated; nothing else of it runs."""
    bad = _check("recipes/sft_gsm8k.py", "sft.data.global_batch_size=0")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "error: data.global_batch_size=0 must be >= 1")
    assert _check("recipes/grpo_gsm8k.py", "ppo.rollout.n=8").returncode == 0
    (tmp_path / "plain.py").write_text("raise SystemExit('this must not run here')\n")
    assert _check("plain.py", cwd=tmp_path).returncode == 0  # no config(argv): not run at all
    (tmp_path / "connects.py").write_text("import ray\n\n\ndef config(argv):\n    ray.init()\n    return None\n")
    assert _check("connects.py", cwd=tmp_path).returncode == 0  # ray.init ends the check, never starts a Ray


def test_a_config_that_exits_instead_of_returning_is_one_line_naming_it(tmp_path):
    """``sys.exit(3)`` inside config() once read as the check's own "cannot check here" code: an empty
    note, and the run submitted unchecked."""
    from bridge_ray.jobs.submission import check_args

    record = records.ClusterRecord(name="unit", backend="local", gcs_address="127.0.0.1:1",
                                   dashboard_url="http://127.0.0.1:1")
    (tmp_path / "exits.py").write_text("import sys\n\n\ndef config(argv):\n    sys.exit(3)\n")
    with pytest.raises(RecipeError) as err:
        check_args(record, tmp_path, tmp_path / "exits.py", [], {})
    assert str(err.value) == ("exits.py's config() exited (sys.exit(3)) instead of returning its config(s): fix it, "
                              "or submit with --no-check if it only runs on the cluster")
    (tmp_path / "says.py").write_text("import sys\n\n\ndef config(argv):\n    print('no GPU here', file=sys.stderr)\n"
                                      "    sys.exit(1)\n")
    with pytest.raises(RecipeError) as err:
        check_args(record, tmp_path, tmp_path / "says.py", [], {})
    assert str(err.value) == ("says.py's config() exited (sys.exit(1)) instead of returning its config(s) after "
                              "printing 'no GPU here': fix it, or submit with --no-check if it only runs on the cluster")
    (tmp_path / "dies.py").write_text("import os\n\n\ndef config(argv):\n    os._exit(3)\n")
    with pytest.raises(RecipeError) as err:
        check_args(record, tmp_path, tmp_path / "dies.py", ["a=1"], {})
    assert str(err.value) == "dies.py a=1 exited with code 3 when checked here; nothing was submitted"


@pytest.mark.parametrize("returned", ["42", "{'lr': 1e-5}", "(sft.sft_tiny_cpu('/m', '/t', None, '/o'), 'x')"])
def test_a_config_that_returns_no_config_is_one_line(tmp_path, returned):
    """config() returning 42 passed `submit --dry-run` silently: nothing was checked."""
    from bridge_ray.jobs.submission import check_args

    record = records.ClusterRecord(name="unit", backend="local", gcs_address="127.0.0.1:1",
                                   dashboard_url="http://127.0.0.1:1")
    (tmp_path / "odd.py").write_text(f"from bridge_ray import sft\n\n\ndef config(argv):\n    return {returned}\n")
    with pytest.raises(ConfigError) as err:
        check_args(record, tmp_path, tmp_path / "odd.py", [], {})
    assert str(err.value).startswith("config() returned ") and str(err.value).endswith(
        ", not a bridge-ray config (SFTConfig, PPOConfig, TokenizerConfig, PretrainConfig, ChainConfig) or a tuple "
        "of them: return the config(s) the recipe trains, or rename config() to submit it unchecked")


def test_api_calls_with_wrong_types_are_one_line(tmp_path, monkeypatch):
    import bridge_ray

    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match=r"^submission_id=5 is not a run id: give the id \(or its start\) as a "
                                          r"string, or None for the latest run$"):
        bridge_ray.load_run(5)
    with pytest.raises(ConfigError) as err:
        bridge_ray.up("other", num_cpus=-1, num_gpus=1.5)
    assert err.value.problems == ["num_cpus=-1 must be a whole number >= 0 (or None: all of this machine's)",
                                  "num_gpus=1.5 must be a whole number >= 0 (or None: all of this machine's)"]
    assert not (tmp_path / "home").exists()  # nothing started, nothing written


def test_a_recipes_own_argparse_refusal_is_its_message_exit_2(tmp_path):
    """`submit recipes/instruct_tune.py -- --preset nope` said the shipped recipe's config() "exited instead of
    returning" and pointed at --no-check; argparse's own line said what was wrong."""
    from bridge_ray.jobs.submission import check_args
    from conftest import REPO

    record = records.ClusterRecord(name="unit", backend="local", gcs_address="127.0.0.1:1",
                                   dashboard_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError) as err:
        check_args(record, REPO, REPO / "recipes" / "instruct_tune.py", ["--preset", "nope"], {})
    assert str(err.value) == ("recipes/instruct_tune.py: argument --preset: invalid choice: 'nope' (choose from "
                              "'instruct_1b', 'instruct_tiny_cpu') (see `python recipes/instruct_tune.py --help`)")
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError) as again:  # preset=NAME, as the other recipes and its docstring take it
        check_args(record, REPO, REPO / "recipes" / "instruct_tune.py", ["preset=nope"], {})
    assert str(again.value) == str(err.value)


def test_a_config_that_does_not_return_says_so_then_gives_up_and_leaves_nothing_running(tmp_path, monkeypatch, capsys):
    """A blocking config(): a note once it runs long (the submit used to print nothing for 300 s), then one
    line; the check's process is gone (limits shortened here; the recipe blocks until killed)."""
    from bridge_ray.cluster import processes
    from bridge_ray.jobs import submission

    monkeypatch.setattr(submission, "CHECK_NOTE_S", 0.5)
    monkeypatch.setattr(submission, "CHECK_TIMEOUT_S", 4.0)
    record = records.ClusterRecord(name="unit", backend="local", gcs_address="127.0.0.1:1",
                                   dashboard_url="http://127.0.0.1:1")
    (tmp_path / "blocks.py").write_text("import threading\n\n\ndef config(argv):\n    threading.Event().wait()\n")
    with pytest.raises(RecipeError) as err:
        submission.check_args(record, tmp_path, tmp_path / "blocks.py", ["x=1"], {})
    assert str(err.value) == ("blocks.py's config(x=1) did not return within 4 s when checked here: submit with "
                              "--no-check if it must run a long step first")
    assert capsys.readouterr().err == "note: still checking blocks.py's config() here (up to 4 s; --no-check skips it)\n"
    assert processes.find_pids("blocks.py") == []


def test_the_local_check_covers_tokenizer_pretrain_and_chain_recipes():
    """Every recipe's config type is validated here, before anything is uploaded."""
    bad = _check("recipes/train_tokenizer.py", "tokenizer.vocab_size=10")
    assert bad.returncode == 2 and "tokenizer.vocab_size=10 is too small" in bad.stderr
    bad = _check("recipes/pretrain.py", "pretrain.trainer.output_dir=relative")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    bad = _check("recipes/text_to_chat.py", "run_dir=relative")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "error: run_dir='relative' must be an absolute path (relative paths land in Ray's working_dir)")


def test_a_secret_in_env_flags_is_refused():
    with pytest.raises(ConfigError) as err:
        runtime_env.parse_env(["WANDB_API_KEY=abc", "NCCL_DEBUG=INFO"])
    assert err.value.problems == [
        "--env WANDB_API_KEY=...: a secret on the command line is visible to every user of this machine (`ps`): "
        "export WANDB_API_KEY in your shell instead; bridge-ray sends it to the job in a 0600 file"]


def test_secrets_split_from_the_runtime_env():
    from bridge_ray.jobs import credentials

    plain, hidden = credentials.split({"HF_TOKEN": "t", "NCCL_DEBUG": "INFO", "MY_PASSWORD": "p", "X_KEY": "k"})
    assert plain == {"NCCL_DEBUG": "INFO"} and hidden == {"HF_TOKEN": "t", "MY_PASSWORD": "p", "X_KEY": "k"}


def test_secrets_file_is_private_and_loads_over_the_inherited_env(tmp_path, monkeypatch):
    import os
    import stat

    from bridge_ray.jobs import credentials

    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path))
    path = credentials.write("c1", "job-1", {"HF_TOKEN": "hf_new"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    environ = {credentials.ENV_FILE_ENV: str(path), "HF_TOKEN": "hf_inherited_from_the_daemons"}
    assert credentials.load(environ) == ["HF_TOKEN"] and environ["HF_TOKEN"] == "hf_new"
    credentials.remove("c1", "job-1")
    assert not path.exists() and credentials.load(environ) == []  # reported on stderr, the job goes on
    assert os.environ.get(credentials.ENV_FILE_ENV) is None


def test_a_renamed_process_holding_the_clusters_files_is_found_by_a_stop_and_the_caller_never(tmp_path):
    """Like ``ray::RuntimeEnvAgent`` after its raylet died: no temp dir on its command line, no tag
    readable, no parent of the cluster's; only its log file under the temp dir, open to write, marks
    it. A process that only reads there (the user's ``tail -f`` of that log) is not the cluster's."""
    import subprocess
    import sys

    from bridge_ray.cluster import processes

    temp_dir = tmp_path / "cluster-temp"
    (temp_dir / "logs").mkdir(parents=True)
    log = temp_dir / "logs" / "agent.log"
    log.write_text("")

    def holding(mode: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", f"import os, sys; f = open(os.environ['LOG'], {mode!r}); print('open', flush=True); "
                                   "sys.stdin.read()"],
            env={"LOG": str(log)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    holder = holding("a")
    reader = holding("r")
    try:
        assert holder.stdout.readline().strip() == "open" and reader.stdout.readline().strip() == "open"
        with open(temp_dir / "logs" / "driver.log", "w"):  # this process holds one too: never found
            found = processes.find_pids(str(temp_dir), by_open_files=True)
        # Both are this process's children: the caller holding a file there neither is found nor brings its
        # children in (CI once found a cluster an earlier test had started, as this process's descendant).
        assert found == [holder.pid]
        assert processes.find_pids(str(temp_dir)) == []  # open files are read only when asked (a stop)
        assert processes.find_pids(str(tmp_path / "cluster-tem"), by_open_files=True) == []  # a folder, not a prefix
    finally:
        for process in (holder, reader):
            process.kill()
            process.wait()


def test_a_stop_also_stops_what_a_process_starts_while_it_is_being_stopped(tmp_path):
    """Like a raylet that starts a worker before its SIGTERM lands (a wide window on a loaded machine):
    the stop looks again until nothing of the cluster is left, and returns only once all of it is gone."""
    import os
    import subprocess
    import sys

    from bridge_ray.cluster import processes

    tag, spawned = f"test-{tmp_path.name}", tmp_path / "spawned.pid"
    # On SIGTERM: start a tagged child in its own session (not a descendant once its parent exits), then exit.
    code = ("import os, signal, subprocess, sys, time\n"
            "def on_term(*_):\n"
            "    child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'], start_new_session=True)\n"
            "    open(os.environ['SPAWNED'], 'w').write(str(child.pid))\n"
            "    os._exit(0)\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, processes.TAG_ENV: tag, "SPAWNED": str(spawned)})
    try:
        assert parent.stdout.readline().strip() == "ready"
        stopped = processes.stop_all(lambda: processes.find_pids(None, tag=tag), grace_s=5.0)
        child = int(spawned.read_text())
        assert stopped == [parent.pid, child]  # the child ignored SIGTERM: SIGKILL, and waited for
        assert processes.find_pids(None, tag=tag) == [] and not processes._alive(child)
    finally:
        parent.kill()
        parent.wait()
        if spawned.exists():
            try:
                os.kill(int(spawned.read_text()), 9)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("key,secret", [
    ("HF_TOKEN", True), ("HUGGING_FACE_HUB_TOKEN", True), ("WANDB_API_KEY", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("DB_PASSWORD", True), ("SSH_KEY", True), ("GOOGLE_APPLICATION_CREDENTIALS", True), ("ray_auth_token", True),
    ("TOKENIZERS_PARALLELISM", False), ("MAX_TOKENS", False), ("NCCL_IB_HCA", False), ("RAY_AUTH_MODE", False),
    ("KEYBOARD", False), ("GITHUB_PAT", True), ("SESSION_COOKIE", True), ("NCCL_IB_PATH", False), ("PATH", False),
    ("MYSECRETTHING", True), ("DBPASSWORD", True), ("HF_AUTHTOKEN", True), ("OPENAI_APIKEY", True),
    ("AWS_SECRETKEY", True), ("NCCL_SOCKET_IFNAME", False), ("WANDB_PROJECT", False), ("NCCL_IB_PKEY", False),
    ("MY_AUTHKEY", True),
])
def test_secret_names_are_credentials_however_they_are_spelled(key, secret):
    """A setting such as TOKENIZERS_PARALLELISM passes with --env and shows in a dry run; credentials never do, as
    the README's patterns say: `*SECRET*` and `*PASSWORD*` anywhere in the name (MYSECRETTHING once travelled in
    the runtime_env and the run record), a name ending in TOKEN or APIKEY (HF_AUTHTOKEN, allow-listed by HF_), but
    not NCCL_IB_PKEY, an NCCL setting."""
    assert runtime_env.is_secret(key) is secret


def test_submit_waits_for_the_heads_job_agent_and_nothing_else(monkeypatch):
    """Ray answers 500 "No available agent to submit job" while a fresh head's job agent starts (seen on
    a loaded machine right after a node joined); nothing was accepted, so bridge-ray asks again."""
    from bridge_ray.jobs import submission
    from bridge_ray.jobs.runtime_env import SubmitPlan

    calls = []

    class Client:
        def __init__(self, answers):
            self.answers = answers

        def submit_job(self, **kwargs):
            calls.append(kwargs["submission_id"])
            if self.answers:
                raise RuntimeError(self.answers.pop(0))

    monkeypatch.setattr(submission.time, "sleep", lambda s: None)
    record = records.ClusterRecord(name="unit", backend="address", gcs_address="", dashboard_url="http://x:1")
    plan = SubmitPlan("unit", "id-1", "python x.py", {}, {})
    busy = "Request failed with status code 500: No available agent to submit job, please try again later.."
    submission._send(record, Client([busy, busy]), plan)
    assert calls == ["id-1"] * 3
    with pytest.raises(RuntimeError, match="status code 400"):
        submission._send(record, Client(["Request failed with status code 400: bad runtime_env"]), plan)
    assert len(calls) == 4
    monkeypatch.setattr(submission, "AGENT_WAIT_S", -1.0)  # no agent for longer than bridge-ray waits: one line
    with pytest.raises(BridgeRayError) as refused:
        submission._send(record, Client([busy]), plan)
    assert str(refused.value) == ("cluster 'unit' took no job for -1 s (Ray: No available agent to submit job): "
                                  "see `bridge-ray status --name unit`, then submit again")


def test_a_gcs_port_that_refuses_means_the_head_is_gone_and_a_silent_one_proves_nothing():
    """health.gcs_refuses: a closed port refuses (the GCS is gone); a listening one or no address
    say nothing; the follower's watch
    (health.watch_gcs) returns after two refusals in a row."""
    import asyncio
    import socket

    from bridge_ray.cluster import health

    def record(address):
        return records.ClusterRecord(name="x", backend="local", gcs_address=address, dashboard_url="http://127.0.0.1:1")

    listening = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    gone = record(f"127.0.0.1:{closed.getsockname()[1]}")
    closed.close()
    try:
        assert health.gcs_refuses(gone)
        assert not health.gcs_refuses(record(f"127.0.0.1:{listening.getsockname()[1]}"))
        assert not health.gcs_refuses(record(""))
        assert not asyncio.run(health.gcs_answers(gone))
        up = record(f"127.0.0.1:{listening.getsockname()[1]}")
        assert asyncio.run(health.gcs_answers(up))

        async def watch_then_close():
            watching = asyncio.ensure_future(health.watch_gcs(up, every_s=0.01))
            await asyncio.sleep(0.05)
            assert not watching.done()  # still answering
            listening.close()
            await asyncio.wait_for(watching, 10)

        asyncio.run(watch_then_close())
    finally:
        listening.close()


def test_cluster_processes_start_workers_at_niceness_0_unless_the_user_chose_one(monkeypatch):
    """Ray starts workers at nice 15 (``worker_niceness``): beside ordinary processes a nice-15 training
    worker gets ~3 % of a core. ``ray start`` gets ``RAY_worker_niceness=0`` (local and SLURM nodes alike);
    a value in the user's environment is theirs to keep. (The real effect: tests/test_cluster.py, test_slurm.py.)"""
    from bridge_ray.cluster import processes

    monkeypatch.delenv(processes.NICENESS_ENV, raising=False)
    assert processes.child_env("tag")[processes.NICENESS_ENV] == "0"
    assert processes.worker_niceness({}) == {"RAY_worker_niceness": "0"}
    monkeypatch.setenv(processes.NICENESS_ENV, "5")
    assert processes.child_env("tag")[processes.NICENESS_ENV] == "5"
    assert processes.worker_niceness({"RAY_worker_niceness": "10"}) == {"RAY_worker_niceness": "10"}


@pytest.mark.parametrize("own_tmpdir, expected", [(None, "cluster"), ("/tmp", "cluster"), ("/tmp/", "cluster"),
                                                 ("mine", "mine")])
def test_a_clusters_processes_keep_temporary_files_in_its_temp_dir(monkeypatch, tmp_path, own_tmpdir, expected):
    """verl's checkpoint locks, vLLM's sockets and multiprocessing's folders stayed in /tmp after every run
    (dozens a run): the cluster's processes get TMPDIR under its temp dir, which `down` removes. SLURM sets
    TMPDIR=/tmp in every job, so /tmp counts as unset; another TMPDIR is the user's. torch's compile cache
    keeps its own place. (The real effect: tests/test_cluster.py, test_slurm.py.)"""
    import tempfile

    from bridge_ray.cluster import processes

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches what it found first
    if own_tmpdir == "mine":
        own_tmpdir = str(tmp_path / "mine")  # a user's own (it must exist to count)
        Path(own_tmpdir).mkdir()
    if own_tmpdir is None:
        monkeypatch.delenv("TMPDIR", raising=False)
    else:
        monkeypatch.setenv("TMPDIR", own_tmpdir)
    env = processes.temp_env(tmp_path)
    if expected == "cluster":
        assert env["TMPDIR"] == str(tmp_path / "tmp") and (tmp_path / "tmp").stat().st_mode & 0o777 == 0o700
    else:
        assert "TMPDIR" not in env and not (tmp_path / "tmp").exists()
    assert Path(env["TORCHINDUCTOR_CACHE_DIR"]).parent == Path(own_tmpdir or "/tmp")  # where torch would put it
    assert Path(env["TORCHINDUCTOR_CACHE_DIR"]).name.startswith("torchinductor_")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/data/inductor")
    assert "TORCHINDUCTOR_CACHE_DIR" not in processes.temp_env(tmp_path)


@pytest.mark.parametrize("recipe, name", [("sft_gsm8k.py", "sft-gsm8k"), ("_try.py", "try"),
                                          ("my recipe (v2).py", "my-recipe-v2"), ("___.py", "job")])
def test_a_generated_job_id_is_one_the_id_rule_allows_and_never_starts_with_a_dash(recipe, name):
    """A recipe named ``_try.py`` gave ``-try-<time>-<hex>``, which `bridge-ray logs ID` read as an option."""
    from bridge_ray.jobs import submission

    made = submission._submission_id(Path(recipe))
    assert submission._ID_RE.match(made) and made.startswith(f"{name}-20"), made


@pytest.mark.parametrize("args, line", [
    (("up", "--port", "80"), "error: Invalid value for '--port': 80 is not in the range 1024<=x<=65535: "
                             "see `bridge-ray up --help`"),
    (("--bogus",), "error: No such option '--bogus': see `bridge-ray --help`"),
    (("nosuchcmd",), "error: No such command 'nosuchcmd': see `bridge-ray --help`"),
    (("submit",), "error: Missing argument 'RECIPE': see `bridge-ray submit --help`"),
    (("data", "to-messages"), "error: Missing argument 'SOURCE': see `bridge-ray data to-messages --help`"),
    (("runs", "show", "--x"), "error: No such option '--x': see `bridge-ray runs show --help`"),
    (("submit", "r.py", "--exclude"), "error: Option '--exclude' requires an argument: see `bridge-ray submit --help`"),
    # A mistyped option of bridge-ray's used to reach the recipe, and the job was sent (here: unfollowed).
    (("submit", "recipes/hello_cluster.py", "--folow"),
     "error: No such option '--folow' (did you mean --follow?); the recipe's own arguments go after `--`: "
     "bridge-ray submit RECIPE.py [OPTIONS] -- ARGS: see `bridge-ray submit --help`"),
    (("submit", "recipes/hello_cluster.py", "--env", "A=1", "--show=HOME", "--", "--show", "A"),
     "error: No such option '--show'; the recipe's own arguments go after `--`: bridge-ray submit RECIPE.py "
     "[OPTIONS] -- ARGS: see `bridge-ray submit --help`"),
])
def test_a_usage_error_is_one_line_with_where_to_look(args, line, tmp_path):
    """click's own form is four lines (usage, hint, blank, error); bridge-ray's is one, exit 2."""
    from conftest import run_cli

    out = run_cli(*args, env={"BRIDGE_RAY_HOME": str(tmp_path)})
    assert (out.returncode, out.stdout, out.stderr) == (2, "", line + "\n")
    assert not any(tmp_path.iterdir())  # nothing started or recorded


@pytest.mark.parametrize("args", [(), ("data",), ("assets",)])
def test_a_group_given_no_command_shows_its_help_not_a_folded_line(args, tmp_path):
    """click 8.2+ raises its help as a usage error; folded into one line it read as a garbled error."""
    from conftest import run_cli

    out = run_cli(*args, env={"BRIDGE_RAY_HOME": str(tmp_path)})
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.startswith(f"Usage: bridge-ray {' '.join(args)}".replace("  ", " ").rstrip() + " [OPTIONS] COMMAND")
    assert "\nCommands:\n" in out.stderr and "error:" not in out.stderr and ";" not in out.stderr.splitlines()[0]
    assert not any(tmp_path.iterdir())

"""Defaults from the config files (user, then project), overridden by flags; `up --slurm --setup`.

Everything here runs the CLI as a user would (``python -m bridge_ray``) from a project folder;
``up --slurm --dry-run`` renders the batch script without SLURM. That the setup lines really
run on every node before Ray starts is ``test_slurm.py``'s (the real SLURM tier).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from bridge_ray.cluster import records


def cli(project, home, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge_ray", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "BRIDGE_RAY_HOME": str(home), **(env or {})}, timeout=120)


@pytest.fixture
def where(tmp_path):
    project, home = tmp_path / "project", tmp_path / "home"
    (project / "sub").mkdir(parents=True)
    home.mkdir()
    (home / "config.yaml").write_text("slurm:\n  partition: cpu\n  account: acct-user\n  gpus_per_node: 4\n"
                                      "wandb:\n  entity: user-team\n")
    (project / "bridge-ray.yaml").write_text('slurm:\n  partition: gpu\n  time: "04:00:00"\n'
                                             "  setup:\n    - module reset\n    - module load hpcx/2.18.1\n")
    return project, home


def test_config_shows_each_value_and_where_it_came_from(where):
    project, home = where
    out = cli(project / "sub", home, "config")  # the project file is found from a folder below it
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"user file:    {home / 'config.yaml'}"
    assert lines[1] == f"project file: {project / 'bridge-ray.yaml'}"
    shown = {line.split()[0]: line for line in lines[2:]}
    assert shown["slurm.partition"].split() == ["slurm.partition", "gpu", f"({project / 'bridge-ray.yaml'})"]
    assert shown["slurm.account"].split() == ["slurm.account", "acct-user", f"({home / 'config.yaml'})"]
    assert shown["slurm.nodes"].split() == ["slurm.nodes", "1", "(default)"]
    assert "module reset; module load hpcx/2.18.1" in shown["slurm.setup"]


def test_up_slurm_takes_the_config_files_defaults_and_flags_win(where):
    project, home = where
    script = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c").stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=acct-user", "#SBATCH --time=04:00:00",
                 "#SBATCH --gpus-per-node=4"):
        assert line in script.splitlines(), line
    assert "export BRIDGE_RAY_GPUS_PER_NODE=4 " in script
    assert "\nmodule reset\nmodule load hpcx/2.18.1\n" in script
    setup_file = project / "setup.txt"
    setup_file.write_text("source /opt/conda/etc/profile.d/conda.sh\n\nconda activate train\n")
    flagged = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--partition", "debug", "--gpus-per-node",
                  "0", "--setup", "module load nccl/2.21", "--setup-file", str(setup_file)).stdout.splitlines()
    assert "#SBATCH --partition=debug" in flagged and not any(line.startswith("#SBATCH --gpus-per-node") for line in flagged)
    start = flagged.index("set -eE")
    assert flagged[start + 1:start + 5] == ["module load nccl/2.21", "source /opt/conda/etc/profile.d/conda.sh",
                                            "conda activate train", "set +eE"]  # --setup replaces the file's lines


def test_the_join_timeout_comes_from_the_config_file_and_the_flag_wins(where):
    project, home = where
    (home / "config.yaml").write_text("slurm:\n  join_timeout_s: 900\n")
    assert "BRIDGE_RAY_JOIN_TIMEOUT=900\n" in cli(project, home, "up", "--slurm", "--dry-run", "--name", "c").stdout
    flagged = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--join-timeout", "60")
    assert "BRIDGE_RAY_JOIN_TIMEOUT=60\n" in flagged.stdout
    shown = cli(project, home, "config").stdout
    assert f"slurm.join_timeout_s  900  ({home / 'config.yaml'})" in shown
    out = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--join-timeout", "0")
    assert (out.returncode, out.stdout, out.stderr) == (2, "", "error: --join-timeout must be 1 or more, got 0\n")
    out = cli(project, home, "up", "--name", "c", "--join-timeout", "60")
    assert (out.returncode, out.stderr) == (2, "error: --join-timeout needs --slurm: see `bridge-ray up --help`\n")
    assert not records.record_path("c").exists()


def test_every_node_sources_the_setup_before_it_starts_ray(where):
    project, home = where
    lines = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--nodes", "2").stdout.splitlines()
    node = next(line for line in lines if line.startswith("NODE="))
    assert node.startswith("""NODE='source "$1"; exec "$2" -m bridge_ray.cluster.slurm_node "$3"'""")
    steps = [line for line in lines if "srun " in line]
    assert len(steps) == 2 and all('bash -c "$NODE" node "$SETUP" "$PY"' in step for step in steps)


@pytest.mark.parametrize("content,message", [
    ("slurm:\n  partiton: gpu\n", "unknown key 'slurm.partiton': the keys are slurm.partition, slurm.account, "),
    ("slurm:\n  gpus_per_node: eight\n", "slurm.gpus_per_node must be a whole number, got 'eight'"),
    ("slurm: [1, 2]\n", "'slurm' must be a section of keys"),
    ("slurm:\n  partition: [gpu\n", "is not valid YAML at line 3: fix it"),
    ("slurm:\n  join_timeout_s: 0\n", "slurm.join_timeout_s must be 1 or more, got 0"),
    ("slurm:\n  gpus_per_node: -1\n", "slurm.gpus_per_node must be 0 or more, got -1"),
])
def test_a_broken_config_file_is_one_line(where, content, message):
    project, home = where
    (project / "bridge-ray.yaml").write_text(content)
    for args in (("config",), ("up", "--slurm", "--dry-run", "--name", "c")):
        out = cli(project, home, *args)
        assert out.returncode == 2 and out.stdout == "", (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"error: {project / 'bridge-ray.yaml'}") and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_config_file_that_is_no_utf8_text_or_no_file_is_one_line(where):
    """A non-UTF-8 file gave "unexpected UnicodeDecodeError ... a bridge-ray bug"; a folder in its place was read
    as no file at all."""
    project, home = where
    (project / "bridge-ray.yaml").write_bytes(b"\xff\xfeslurm:\n")
    out = cli(project, home, "config")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"error: {project / 'bridge-ray.yaml'} is not UTF-8 text (byte 0): save it as UTF-8 YAML, "
                          "or remove it\n")
    (project / "bridge-ray.yaml").unlink()
    (home / "config.yaml").unlink()
    (home / "config.yaml").mkdir()
    out = cli(project, home, "config")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"error: {home / 'config.yaml'} is not a file (a folder?): bridge-ray reads its settings "
                          "from a YAML file there; move it away\n")
    (home / "config.yaml").rmdir()
    (project / "bridge-ray.yaml").mkdir()  # a project file that is a folder was skipped without a word
    out = cli(project, home, "config")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"error: {project / 'bridge-ray.yaml'} is not a file (a folder?): bridge-ray reads its "
                          "settings from a YAML file there; move it away\n")


def test_a_setup_file_that_is_no_utf8_text_is_one_line(where, tmp_path):
    """`up --slurm --dry-run --setup-file BINARY` gave "unexpected UnicodeDecodeError ... a bridge-ray bug"."""
    project, home = where
    binary = tmp_path / "setup.bin"
    binary.write_bytes(b"\xff\xfemodule load x\n")
    out = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--setup-file", str(binary))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"error: --setup-file {binary} is not UTF-8 text (byte 0): give a file of shell lines\n"


@pytest.mark.parametrize("line,message", [
    ("export WANDB_API_KEY=abc", "error: setup line sets WANDB_API_KEY, a secret: the batch script is kept by SLURM and "
                                 "in the cluster's folder; export WANDB_API_KEY in your shell before `bridge-ray submit` "
                                 "instead (jobs get it in a 0600 file)"),
    ("BRIDGE_RAY_SETUP_END", "error: setup line 'BRIDGE_RAY_SETUP_END' cannot be used: give one shell line each "
                             "(repeat --setup), and never 'BRIDGE_RAY_SETUP_END'"),
])
def test_bad_setup_lines_are_refused(where, line, message):
    project, home = where
    out = cli(project, home, "up", "--slurm", "--dry-run", "--name", "c", "--setup", line)
    assert (out.returncode, out.stdout, out.stderr.strip()) == (2, "", message)


def test_setup_needs_slurm(where):
    project, home = where
    out = cli(project, home, "up", "--setup", "module load x")
    assert out.returncode == 2 and "--setup needs --slurm" in out.stderr
    assert not (home / "clusters").exists()  # nothing started


def test_the_wandb_entity_reaches_submitted_jobs_unless_the_shell_sets_one(where, tmp_path):
    project, home = where
    (project / "recipe.py").write_text("print('hello')\n")
    record = records.ClusterRecord(name="unit", backend="address", gcs_address="", dashboard_url="http://127.0.0.1:9")
    env = {"BRIDGE_RAY_HOME": str(home)}
    subprocess.run([sys.executable, "-c", "import sys, bridge_ray.cluster.records as r, json; "
                    "r.save(r.ClusterRecord(**json.loads(sys.argv[1])))",
                    json.dumps(dataclasses.asdict(record))], env={**os.environ, **env}, check=True)
    base = ("submit", "recipe.py", "--name", "unit", "--dry-run", "--no-check")
    clean = {k: v for k, v in os.environ.items() if k != "WANDB_ENTITY"}
    out = subprocess.run([sys.executable, "-m", "bridge_ray", *base], cwd=project, capture_output=True, text=True,
                         env={**clean, **env})
    assert out.returncode == 0, out.stderr
    assert '"WANDB_ENTITY": "user-team"' in out.stdout
    mine = cli(project, home, *base, env={"WANDB_ENTITY": "mine"})
    assert '"WANDB_ENTITY": "mine"' in mine.stdout

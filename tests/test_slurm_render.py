"""The slurm backend without a SLURM: rendering, dry run, ports, walltime, errors before sbatch."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from bridge_ray.cluster import records, walltime
from bridge_ray.cluster import slurm, slurm_node
from bridge_ray.errors import ConfigError, SlurmError
from conftest import run_cli


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with the venv's bin but no sbatch/squeue."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not (Path(p) / "sbatch").exists())


def _fake_bin(tmp_path: Path, **scripts: str) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{_path_without_slurm(tmp_path)}"


def test_render_defaults_is_short_and_carries_no_secret():
    text = slurm.render("r1")
    assert text.startswith("#!/bin/bash\n")
    assert len(text.splitlines()) <= 40
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\nset -euo pipefail\n" in text
    assert "--partition" not in text and "--gpus-per-node" not in text
    folder = records.cluster_dir("r1")
    assert f"#SBATCH --output={folder}/slurm-%j.out" in text
    assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={folder}/auth_token" in text
    assert "ray start" not in text.replace("`ray start", "")  # Ray is started by the node helper, under srun
    assert text.count("srun ") == 2 and "sleep" not in text and "ssh" not in text
    assert "{{" not in text


def test_render_options_in_order():
    text = slurm.render("r2", nodes=2, gpus_per_node=8, cpus_per_task=16, partition="gpu", nodelist="g[1-2]",
                        time="04:00:00", account="proj", sbatch_args=("--exclusive", "--qos=high"),
                        join_timeout_s=90)
    assert ("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --partition=gpu\n#SBATCH --account=proj\n"
            "#SBATCH --time=04:00:00\n#SBATCH --nodelist=g[1-2]\n#SBATCH --cpus-per-task=16\n"
            "#SBATCH --gpus-per-node=8\n#SBATCH --exclusive\n#SBATCH --qos=high\n") in text
    assert "BRIDGE_RAY_GPUS_PER_NODE=8 BRIDGE_RAY_JOIN_TIMEOUT=90" in text


def test_render_rejects_bad_counts():
    with pytest.raises(ConfigError, match=r"^--nodes must be 1 or more, got 0; --gpus-per-node must be 0 or more, "
                                          r"got -1$"):
        slurm.render("r3", nodes=0, gpus_per_node=-1)


@pytest.mark.parametrize("options, problem", [
    ({"time": "banana"}, "--time 'banana' is not a SLURM time limit: write minutes, HH:MM:SS or D-HH:MM:SS, "
                         "e.g. --time 04:00:00"),
    ({"time": "4:00:00:00"}, "--time '4:00:00:00' is not a SLURM time limit: write minutes, HH:MM:SS or "
                             "D-HH:MM:SS, e.g. --time 04:00:00"),
    ({"partition": "gpu\nrm -rf ~"}, "--partition 'gpu\\nrm -rf ~' must be one word: no spaces or line breaks"),
    ({"account": ""}, "--account '' must be one word: no spaces or line breaks"),
    ({"sbatch_args": ("exclusive",)}, "--sbatch-arg 'exclusive' must be one option on one line, e.g. "
                                      "--sbatch-arg=--exclusive"),
    ({"sbatch_args": ("--output=/tmp/x",)}, "--sbatch-arg --output=/tmp/x: the bootstrap script sets --output itself "
                                            "and relies on it: leave it out"),
    ({"sbatch_args": ("-Jmine",)}, "--sbatch-arg -Jmine: the bootstrap script sets -J itself and relies on it: leave "
                                   "it out"),
    ({"sbatch_args": ("--array=0-3",)}, "--sbatch-arg --array=0-3: the bootstrap script sets --array itself and "
                                        "relies on it: leave it out"),
    ({"nodes": 2, "sbatch_args": ("--nodes=3",)}, "--sbatch-arg --nodes=3: give it as `up --slurm --nodes 3` instead "
                                                  "(bridge-ray uses the value, not only SLURM)"),
    ({"sbatch_args": ("-pdebug",)}, "--sbatch-arg -pdebug: give it as `up --slurm --partition debug` instead "
                                    "(bridge-ray uses the value, not only SLURM)"),
    ({"sbatch_args": ("--export=NONE",)}, "--sbatch-arg --export=NONE: each node starts Ray from the environment "
                                          "`up` runs in (PATH, the Python it uses); keep it with "
                                          "--export=ALL[,VAR=value], or leave the option out"),
    ({"sbatch_args": ("--gres=gpu:a100:4",)}, "--sbatch-arg --gres=gpu:a100:4 asks SLURM for GPUs, but Ray would be "
                                              "told of none: give --gpus-per-node N instead"),
])
def test_render_refuses_what_would_not_be_one_sbatch_line(options, problem):
    """A value with a line break would end its #SBATCH line and run the rest as shell; sbatch reads
    a malformed --time only once the script is written (a dry run printed it as if fine)."""
    with pytest.raises(ConfigError) as err:
        slurm.render("c", **options)
    assert err.value.problems == [problem]


def test_render_keeps_sbatch_args_it_does_not_set_itself():
    text = slurm.render("c", gpus_per_node=2, sbatch_args=("--exclusive", "--qos=high", "--gres=gpu:a100:2",
                                                           "--gres=nvme:1", "--mem=0", "--dependency=afterok:12",
                                                           "--export=ALL,MY_SETTING=1"))
    assert "#SBATCH --exclusive\n#SBATCH --qos=high\n#SBATCH --gres=gpu:a100:2\n#SBATCH --gres=nvme:1\n" in text
    assert slurm.render("c", sbatch_args=("--gres=nvme:1",)).count("#SBATCH --gres=nvme:1\n") == 1


@pytest.mark.parametrize("time", ["90", "90:30", "04:00:00", "2-12", "2-12:30", "2-12:30:00", "UNLIMITED"])
def test_render_takes_every_slurm_time_form(time):
    assert f"#SBATCH --time={time}\n" in slurm.render("c", time=time)


def test_cli_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    out = run_cli("up", "--slurm", "--dry-run", "--name", "dry", "--nodes", "2", "--partition", "debug",
                  "--sbatch-arg=--exclusive", env={"PATH": _path_without_slurm(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == slurm.render("dry", nodes=2, partition="debug", sbatch_args=("--exclusive",))
    assert not records.record_path("dry").exists()


def test_cli_slurm_options_need_slurm():
    out = run_cli("up", "--name", "x", "--nodes", "2")
    assert (out.returncode, out.stderr) == (2, "error: --nodes needs --slurm: see `bridge-ray up --help`\n")


def test_no_slurm_on_path(tmp_path):
    out = run_cli("up", "--slurm", "--name", "nosl", env={"PATH": _path_without_slurm(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: no SLURM on PATH (sbatch not found): run this on a SLURM login node or add SLURM's bin folder "
        "to PATH; for a cluster on this machine use `bridge-ray up` without --slurm")
    assert not records.record_path("nosl").exists()


def test_sbatch_refusals_become_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_bin(
        tmp_path,
        sbatch='echo "sbatch: error: Batch job submission failed: Invalid account or account/partition '
               'combination specified" >&2; exit 1'))
    with pytest.raises(SlurmError, match=r"^SLURM rejected account 'nope' \(Batch job submission failed: Invalid "
                                         r"account or account/partition combination specified\): list yours with "
                                         r"`sacctmgr show assoc user=\$USER format=account,partition`$"):
        slurm.start("acct", account="nope")
    folder = records.cluster_dir("acct")  # nothing was started, nothing is left: no script, no token, no record
    assert not (folder / "bootstrap.sbatch").exists() and not (folder / "auth_token").exists()
    assert not records.record_path("acct").exists()


def test_ports_per_job_and_slot():
    for job in (1, 2, 318, 12345678):
        ports = list(slurm_node.derived_ports(job, 0, head=True).values()) + [
            p for slot in range(1, slurm_node.MAX_SLOTS) for p in slurm_node.derived_ports(job, slot, head=False).values()]
        assert len(set(ports)) == len(ports) and all(20000 <= p < 32768 for p in ports)
        assert max(ports) - min(ports) < slurm_node.BLOCK
    first = {job: slurm_node.derived_ports(job, 0, head=True)["port"] for job in (1, 2, 320)}
    assert first[2] - first[1] == slurm_node.BLOCK and first[320] == first[1]  # blocks wrap after 319 jobs
    assert slurm_node.derived_ports(7, 0, head=False) == {
        k: v for k, v in slurm_node.derived_ports(7, 0, head=True).items() if k in slurm_node.NODE_PORTS}


def test_events_round_trip(tmp_path):
    slurm_node.emit(tmp_path, "head up", "10.0.0.1:20000 on n1", t=1.0)
    (tmp_path / "events.jsonl").open("a").write('{"t": 2, "pha')  # a writer mid-line
    assert slurm_node.read_events(tmp_path) == [{"t": 1.0, "phase": "head up", "detail": "10.0.0.1:20000 on n1"}]


@pytest.mark.parametrize("text,seconds", [("5:00", 300), ("1:02:03", 3723), ("2-00:00:01", 172801),
                                          ("UNLIMITED", None), ("NOT_SET", None), ("", None)])
def test_parse_time_left(text, seconds):
    assert walltime.parse_time_left(text) == seconds


def test_deadline_env_and_checkpoint_rule(monkeypatch):
    assert walltime.deadline_env(None) == {}
    end = time.time() + 1000
    env = walltime.deadline_env(end)
    assert env == {"BRIDGE_RAY_DEADLINE": str(int(end)),
                   "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP": str(int(end) - 60)}
    monkeypatch.setenv("BRIDGE_RAY_DEADLINE", env["BRIDGE_RAY_DEADLINE"])
    assert 990 < walltime.seconds_left() <= 1000
    assert not walltime.should_checkpoint_now(step_s=100)
    assert walltime.should_checkpoint_now(step_s=900)
    monkeypatch.delenv("BRIDGE_RAY_DEADLINE")
    assert walltime.seconds_left() is None and not walltime.should_checkpoint_now(step_s=1e9)


def test_verl_reads_our_deadline_the_same_way(monkeypatch):
    """verl's PPO trainer (should_save_ckpt_esi) and bridge-ray's SFT loop agree on when to save."""
    from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi

    for left, step in ((1000, 100), (1000, 950), (300, 10), (100, 10)):
        env = walltime.deadline_env(time.time() + left)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert should_save_ckpt_esi(max_steps_duration=step) == walltime.should_checkpoint_now(step_s=step), left
    assert [walltime.should_checkpoint_now(step_s=10)] == [True]  # the last case: 100 s left

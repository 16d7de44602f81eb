"""``bridge-ray doctor`` misused: each mistake is one line on stderr, exit 2, and nothing written.

Unit tests need no cluster (a record that points nowhere is enough: every refusal comes before
the doctor connects); the integration ones run the doctor against one real local head (``dxmis``).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_ray.cluster import records
from bridge_ray.errors import ConfigError
from bridge_ray.network import profile as prof
from bridge_ray.network import doctor as doc
from conftest import REPO, run_cli

SECRET = "hf_secret999"
SECRET_FIX = ("a secret has no place in the network profile (saved for every job, shown in Ray's logs) nor on a "
              "command line (`ps` shows it to every user): export {key} in your shell instead; bridge-ray sends it "
              "to each job in a 0600 file")
PROFILE_FILES = ("profile.json", "overrides.env", "profile.env")


@pytest.fixture
def fake_cluster(bridge_home):
    """A record whose head does not exist: any refusal must come before the doctor tries to reach it."""
    name = "dxfake"
    records.save(records.ClusterRecord(name=name, backend="address", gcs_address="127.0.0.1:9", dashboard_url=""))
    yield name
    records.delete(name)
    for file in PROFILE_FILES:
        (records.cluster_dir(name) / file).unlink(missing_ok=True)


def _refused(out, message: str) -> None:
    """Exactly one line, ``error: MESSAGE``, exit 2, nothing on stdout."""
    assert (out.returncode, out.stdout, out.stderr.splitlines()) == (2, "", [f"error: {message}"]), out.stderr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- finding 1: secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("item,key", [(f"HF_TOKEN={SECRET}", "HF_TOKEN"), (f"WANDB_API_KEY={SECRET}", "WANDB_API_KEY"),
                                      ("HF_TOKEN=", "HF_TOKEN")])
def test_secret_env_is_refused_and_nothing_is_written(fake_cluster, item, key):
    out = run_cli("doctor", "--name", fake_cluster, "--env", item)
    _refused(out, f"--env {key}=...: " + SECRET_FIX.format(key=key))
    assert SECRET not in out.stderr
    assert not any((records.cluster_dir(fake_cluster) / f).exists() for f in PROFILE_FILES)


@pytest.mark.parametrize("key", ["LD_PRELOAD", "PATH", "PYTHONPATH"])
def test_env_that_is_no_network_setting_is_refused_and_nothing_is_written(fake_cluster, key):
    """`doctor --env LD_PRELOAD=/x.so` passed, was saved, and every later job carried it (ld.so errors in each job's
    log); `--env PATH=/nonexistent` hung 5 minutes, then blamed busy GPUs."""
    out = run_cli("doctor", "--name", fake_cluster, "--env", f"{key}=/x")
    _refused(out, f"--env {key}=...: the network profile takes only the collectives' settings (NCCL_*, GLOO_*, UCX_*, "
                  "TORCH_NCCL_*, TORCH_GLOO_*, TORCH_DISTRIBUTED_*), and every later job carries it; give "
                  f"{key} to one job with `bridge-ray submit --env {key}=...`")
    assert not any((records.cluster_dir(fake_cluster) / f).exists() for f in PROFILE_FILES)


def test_run_doctor_refuses_secret_env_from_the_api(fake_cluster):
    with pytest.raises(ConfigError) as err:
        doc.run_doctor(fake_cluster, env={"NCCL_IB_TC": "106", "AWS_SECRET_ACCESS_KEY": SECRET})
    assert err.value.problems == ["--env AWS_SECRET_ACCESS_KEY=...: " + SECRET_FIX.format(key="AWS_SECRET_ACCESS_KEY")]


def test_profile_files_are_written_0600_even_over_older_0644_ones(bridge_home):
    folder = records.writable_dir(records.cluster_dir("dxmode"))
    for file in PROFILE_FILES:
        (folder / file).write_text("old\n")
        (folder / file).chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        prof.save_profile("dxmode", prof.ClusterProfile(env={"NCCL_SOCKET_IFNAME": "eth0"},
                                                        overrides={"NCCL_IB_TC": "106"}))
    finally:
        os.umask(old_umask)
    assert {f: _mode(folder / f) for f in PROFILE_FILES} == {f: 0o600 for f in PROFILE_FILES}
    assert prof.profile_env("dxmode") == {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_TC": "106"}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_secret_already_in_overrides_env_never_travels(fake_cluster):
    path = records.writable_dir(records.cluster_dir(fake_cluster)) / "overrides.env"
    text = f"# mine\nNCCL_IB_TC=106\nHF_TOKEN={SECRET}\n"
    path.write_text(text)
    message = (f"{path} sets HF_TOKEN, a secret: a network profile travels in every job's runtime_env (Ray's logs, "
               "worker command lines): remove that line and export HF_TOKEN in your shell instead (bridge-ray sends "
               "it to each job in a 0600 file)")
    for carry in (lambda: prof.profile_env(fake_cluster), lambda: prof.node_env(fake_cluster, "cn1")):
        with pytest.raises(ConfigError) as err:
            carry()
        assert str(err.value) == message
    out = run_cli("doctor", "--name", fake_cluster)  # refused before connecting, the file kept as it was
    _refused(out, message)
    assert path.read_text() == text and not (path.parent / "profile.json").exists()


def test_a_secret_an_older_profile_env_exports_stays_out_of_rays_environment(fake_cluster, monkeypatch, capsys,
                                                                           tmp_path):
    """An older bridge-ray wrote doctor's --env secrets into profile.env, which each SLURM node sources
    before `ray start`: the node leaves them out (the user's own exported value stays).

    ``Node.ray_env`` runs here outside a SLURM step: only its lookup of the allocation's end is stubbed.
    """
    from bridge_ray.cluster import slurm_node

    folder = records.writable_dir(records.cluster_dir(fake_cluster))
    (folder / "profile.env").write_text(f"export NCCL_IB_TC=106\nexport HF_TOKEN={SECRET}\nexport WANDB_API_KEY=mine\n")
    monkeypatch.setenv("WANDB_API_KEY", "mine")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/token")
    monkeypatch.setattr(slurm_node.walltime, "slurm_env", lambda job_id: {})
    node = object.__new__(slurm_node.Node)
    node.cluster, node.job_id = fake_cluster, 1
    env = node.ray_env(tmp_path, {})
    assert (env["NCCL_IB_TC"], env["WANDB_API_KEY"], "HF_TOKEN" in env) == ("106", "mine", False)
    err = capsys.readouterr().err
    assert err == (f"[bridge-ray] {folder / 'profile.env'} sets HF_TOKEN, a secret: left out of Ray's environment; "
                   "run `bridge-ray doctor` to rewrite the profile\n")


def test_secrets_in_profile_json_are_refused_naming_the_rewrite(fake_cluster):
    prof.save_profile(fake_cluster, prof.ClusterProfile(env={"NCCL_SOCKET_IFNAME": "eth0"}))
    path = prof.profile_path(fake_cluster)
    path.write_text(path.read_text().replace('"node_env": {}', f'"node_env": {{"cn1": {{"MY_PASSWORD": "{SECRET}"}}}}'))
    with pytest.raises(ConfigError) as err:
        prof.profile_env(fake_cluster)
    assert str(err.value) == (
        f"{path} sets MY_PASSWORD, a secret: a network profile travels in every job's runtime_env (Ray's logs, worker "
        f"command lines): run `bridge-ray doctor --name {fake_cluster}` to write it again and export MY_PASSWORD in "
        "your shell instead (bridge-ray sends it to each job in a 0600 file)")


def test_malformed_line_in_overrides_env_names_the_file(fake_cluster):
    path = records.writable_dir(records.cluster_dir(fake_cluster)) / "overrides.env"
    path.write_text("NCCL_IB_TC=106\nNOEQUALS\n")
    with pytest.raises(ConfigError) as err:
        prof.profile_env(fake_cluster)
    assert str(err.value) == f"{path}: line 'NOEQUALS' is not KEY=VALUE (e.g. NCCL_IB_GID_INDEX=3): fix or remove it"


# ---- finding 2: --shared-dir ----------------------------------------------------------------


def test_shared_dir_that_is_a_file_is_refused(fake_cluster, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w/x.jsonl").write_text("{}\n")
    out = run_cli("doctor", "--name", fake_cluster, "--shared-dir", str(tmp_path / "w/x.jsonl"))
    _refused(out, f"--shared-dir {tmp_path}/w/x.jsonl is not a folder: give the folder every node must see "
                  "(e.g. the output dir)")


@pytest.mark.parametrize("missing", ["/proc/xx", "/nonexistent-dx/dir"])
def test_missing_shared_dir_is_refused_and_not_created(fake_cluster, missing):
    out = run_cli("doctor", "--name", fake_cluster, "--shared-dir", missing)
    _refused(out, f"--shared-dir {missing} does not exist: give an existing folder every node must see "
                  "(e.g. the output dir), or create it first")
    assert not os.path.exists(missing) and not os.path.exists("/nonexistent-dx")


def test_unwritable_shared_dir_is_refused(fake_cluster):
    assert not os.access("/proc/sys", os.W_OK)  # read-only even for root
    out = run_cli("doctor", "--name", fake_cluster, "--shared-dir", "/proc/sys")
    _refused(out, "--shared-dir /proc/sys is not writable by you: the doctor writes a marker file there; "
                  "give a folder you can write")


def test_every_bad_shared_dir_is_named_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        doc.checked_shared_dirs([str(tmp_path), "/nonexistent-dx/a", "/proc/sys"])
    assert [p.split(" ")[1] for p in err.value.problems] == ["/nonexistent-dx/a", "/proc/sys"]


def test_relative_shared_dir_becomes_absolute_once(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)  # nodes would read a relative path from their own working directory
    assert doc.checked_shared_dirs(["out", "./out", str(tmp_path / "out")]) == [str(tmp_path / "out")]


def test_folder_that_refuses_the_marker_is_a_user_error():
    # root passes os.access on /proc, yet nothing can be created there
    with pytest.raises(ConfigError) as err:
        doc._write_markers(["/proc"], "token")
    assert str(err.value) == ("cannot write a file in /proc (No such file or directory): each shared directory must "
                              "be a folder you can write; give another --shared-dir")


# ---- finding 3: numbers out of range ----------------------------------------------------------


@pytest.mark.parametrize("value,shown", [("-5", "-5"), ("0", "0"), ("nan", "nan"), ("inf", "inf"), ("3601", "3601")])
def test_timeout_out_of_range_is_refused(fake_cluster, value, shown):
    out = run_cli("doctor", "--name", fake_cluster, "--timeout", value)
    _refused(out, f"--timeout {shown} is out of range: give the seconds the all-reduce may take, above 0 and at "
                  "most 3600, e.g. --timeout 60")


def test_all_problems_of_the_options_come_together():
    with pytest.raises(ConfigError) as err:
        doc.check_options(-1, {"HF_TOKEN": SECRET})
    assert [p.split(" ")[0] for p in err.value.problems] == ["--timeout", "--env"]


# ---- other options -----------------------------------------------------------------------------


@pytest.mark.parametrize("item,message", [
    ("=x", "--env '=x' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)"),
    ("KEY", "--env 'KEY' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)"),
    ("1BAD=x", "--env '1BAD=x' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)"),
    (f"NCCL_IB_TC=1\nHF_TOKEN={SECRET}", "--env NCCL_IB_TC=...: a value cannot hold a line break; give one line"),
])
def test_malformed_env_is_refused(fake_cluster, item, message):
    out = run_cli("doctor", "--name", fake_cluster, "--env", item)
    _refused(out, message)
    assert not (records.cluster_dir(fake_cluster) / "overrides.env").exists()


def test_invalid_cluster_name_is_refused():
    out = run_cli("doctor", "--name", "../dx")
    _refused(out, "cluster name '../dx' is not valid: use letters, digits, '.', '_' or '-' (at most 63, "
                  "starting with a letter or digit)")


# ---- integration: one real local head ------------------------------------------------------------


@pytest.fixture(scope="module")
def dx_cluster(bridge_home):
    import bridge_ray

    record = bridge_ray.up("dxmis", num_cpus=1)
    yield record
    bridge_ray.down("dxmis", force=True)


def _ray_logs(record) -> str:
    logs = Path(record.temp_dir or "/nonexistent")
    return "".join(p.read_text(errors="replace") for p in logs.rglob("*.log") if p.is_file())


@pytest.mark.integration
def test_doctor_on_a_real_head_saves_env_privately_and_never_sees_a_secret(dx_cluster, tmp_path):
    refused = run_cli("doctor", "--name", "dxmis", "--env", f"HF_TOKEN={SECRET}")
    _refused(refused, "--env HF_TOKEN=...: " + SECRET_FIX.format(key="HF_TOKEN"))
    out = run_cli("doctor", "--name", "dxmis", "--env", "NCCL_IB_TC=106", "--shared-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"shared filesystem {tmp_path}" in out.stdout and "  NCCL_IB_TC=106" in out.stdout
    folder = records.cluster_dir("dxmis")
    assert {f: _mode(folder / f) for f in PROFILE_FILES} == {f: 0o600 for f in PROFILE_FILES}
    assert prof.load_overrides("dxmis") == {"NCCL_IB_TC": "106"}
    assert list(tmp_path.iterdir()) == []  # the marker is gone
    assert SECRET not in _ray_logs(dx_cluster)


@pytest.mark.integration
def test_empty_value_removes_a_saved_key(dx_cluster):
    out = run_cli("doctor", "--name", "dxmis", "--env", "NCCL_IB_TIMEOUT=22")
    assert out.returncode == 0 and prof.load_overrides("dxmis")["NCCL_IB_TIMEOUT"] == "22", out.stdout + out.stderr
    out = run_cli("doctor", "--name", "dxmis", "--env", "NCCL_IB_TIMEOUT=", "--env", "NCCL_IB_SL=")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "  note: removed from overrides.env: NCCL_IB_TIMEOUT" in out.stdout
    assert "  note: not in overrides.env, nothing to remove: NCCL_IB_SL" in out.stdout
    assert "NCCL_IB_TIMEOUT" not in out.stdout.split("profile (saved to", 1)[1].split("note:", 1)[0]
    saved = prof.load_overrides("dxmis")
    assert "NCCL_IB_TIMEOUT" not in saved and "NCCL_IB_SL" not in saved


@pytest.mark.integration
def test_forced_interface_that_fails_its_check_is_not_saved(dx_cluster):
    out = run_cli("doctor", "--name", "dxmis", "--env", "NCCL_SOCKET_IFNAME=dxnosuch0")
    assert out.returncode == 1, out.stdout + out.stderr
    rows = {ln.split("  ")[0]: ln for ln in out.stdout.splitlines()}
    assert "FAIL    dxnosuch0 is not up with an IPv4 address on" in rows["interface NCCL_SOCKET_IFNAME"]
    assert "PASS" in rows["all-reduce (gloo)"]  # gloo never reads NCCL's variable: the check must decide
    assert "  note: --env not saved: the check interface NCCL_SOCKET_IFNAME failed" in out.stdout
    assert "NCCL_SOCKET_IFNAME" not in prof.load_overrides("dxmis")


@pytest.mark.integration
def test_shared_dir_that_takes_no_marker_is_one_line(dx_cluster):
    out = run_cli("doctor", "--name", "dxmis", "--shared-dir", "/proc")
    _refused(out, "cannot write a file in /proc (No such file or directory): each shared directory must be a "
                  "folder you can write; give another --shared-dir")


# Runs `bridge-ray doctor` with the ranks' first FAILS starts given a package URI that is not in the GCS.
FAULTY_DOCTOR = """
import sys
from bridge_ray.cli import main
from bridge_ray.network import doctor
real, starts, fails = doctor._rank_runtime_env, [], int(sys.argv[1])

def faulty(env):
    starts.append(env)
    missing = ["gcs://_ray_pkg_00000000000000000000000000000000.zip"]
    return {**real(env), "py_modules": missing} if len(starts) <= fails else real(env)

doctor._rank_runtime_env = faulty
sys.argv[1:] = ["doctor", "--name", "dxmis"]
main()
"""


def _doctor_with_failed_runtime_envs(fails: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAULTY_DOCTOR, str(fails)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.integration
def test_a_rank_whose_runtime_env_fails_once_is_started_again(dx_cluster):
    """CI once saw Ray's runtime-env agent give up on a rank under load ("maybe there are some network
    problems, will fail the request") and the doctor FAIL with a wrong fix ("free the GPUs"). That agent
    failure cannot be caused on demand: here the rank's first runtime_env names a package that is not in
    the GCS, which fails the same way (a real RuntimeEnvSetupError from the real head)."""
    out = _doctor_with_failed_runtime_envs(1)
    assert out.returncode == 0, out.stdout + out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("all-reduce (gloo)"))
    assert "  PASS  " in row and "(ranks started on a second try: Ray's runtime env setup failed once: " in row


@pytest.mark.integration
def test_a_rank_whose_runtime_env_fails_twice_names_ray_not_the_gpus(dx_cluster):
    before = prof.load_overrides("dxmis")
    out = _doctor_with_failed_runtime_envs(2)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("all-reduce (gloo)"))
    assert "  FAIL    could not start 1 ranks, twice: Ray could not set up their runtime env (" in lines[at]
    assert lines[at + 1].split("fix:", 1)[1].strip() == doc.RUNTIME_ENV_FIX
    assert "Traceback" not in out.stderr and prof.load_overrides("dxmis") == before


def test_a_head_that_does_not_answer_is_one_line_at_once(fake_cluster):
    """The doctor used to join as a Ray driver and wait minutes for a head that was not there."""
    out = run_cli("doctor", "--name", fake_cluster, timeout=60)
    _refused(out, f"cluster {fake_cluster!r} is recorded but nothing listens at its GCS 127.0.0.1:9 (stale record): "
                  f"run `bridge-ray down --name {fake_cluster}` to clear it, then "
                  f"`bridge-ray up --name {fake_cluster} --address URL --token-file FILE`")  # a registered head

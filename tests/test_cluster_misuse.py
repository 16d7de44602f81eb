"""Misuse of the cluster commands: a hand-edited record, flags that need another, a wrong address, a
dead head, an invalid name, an interrupted ``up``. Each is one line on stderr and exit 2 (130 for an
interrupt), and nothing is started, kept running, overwritten or removed that should not be.

The unit tests start no cluster; the interrupted ``up`` starts a real local head (integration tier).
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge_ray.cluster import processes, records
from conftest import HANG_GUARD_S, REPO, run_cli, wait_for

ROOT = Path("/tmp") / f"bridge-ray-{os.getuid()}"
NAME_ERROR = ("error: cluster name '../x' is not valid: use letters, digits, '.', '_' or '-' "
              "(at most 63, starting with a letter or digit)")


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """A BRIDGE_RAY_HOME of this test's own (``run_cli`` passes it on)."""
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_record(name: str, /, **fields) -> Path:
    """A hand-written record ``name``: a local cluster's fields, with ``fields`` on top."""
    data = {"name": name, "backend": "local", "gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:1",
            **fields}
    path = records.record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def broken(name: str, path: Path, why: str) -> str:
    return (f"error: the record of cluster {name!r} ({path}) is unreadable ({why}): run `bridge-ray down --name "
            f"{name} --force` to stop whatever was started for it and remove the record")


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 1. a record's temp_dir decides what `down` stops and deletes: only one bridge-ray made ---------


def test_a_record_pointing_at_another_folder_is_broken_and_down_force_leaves_that_folder_alone(home, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    # A process of the user's that names the folder on its command line and holds a file there open to
    # write: both marks `down` stops a local cluster's processes by.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1] + '/held.log', 'w'); "
                               "f.write('x'); f.flush(); time.sleep(600)", str(victim)])
    try:
        wait_for(lambda: (victim / "held.log").exists(), "the holder to open its file")
        path = write_record("fxvic", temp_dir=str(victim))
        message = broken("fxvic", path, f"temp_dir {str(victim)!r} is not one bridge-ray makes, a folder of {ROOT}")
        for args in (("status",), ("down",), ("submit", "recipes/hello_cluster.py", "--dry-run")):
            out = run_cli(*args, "--name", "fxvic")
            assert (out.returncode, out.stderr.strip(), out.stdout) == (2, message, ""), args
        down = run_cli("down", "--name", "fxvic", "--force")
        assert (down.returncode, down.stdout.strip()) == (0, "cluster 'fxvic' is down: its unreadable record is "
                                                             "removed and what was started for it stopped")
        assert holder.poll() is None and (victim / "data.txt").read_text() == "precious"
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_record_edited_to_name_another_temp_dir_of_the_pattern_gets_that_folder_kept(home):
    """A record's temp_dir changed by hand to another folder named like one `up` makes (fxdec-000000): `down`
    deleted that folder and what was in it. Only a folder with the owner file `up` writes (or Ray's own
    session_latest) is removed now."""
    assert run_cli("up", "--name", "fxdec", "--num-cpus", "1").returncode == 0
    record = records.load("fxdec")
    decoy = Path(record.temp_dir).with_name("fxdec-000000")
    decoy.mkdir()
    (decoy / "precious").write_text("keep me")
    try:
        data = json.loads(records.record_path("fxdec").read_text())
        records.record_path("fxdec").write_text(json.dumps({**data, "temp_dir": str(decoy)}))
        down = run_cli("down", "--name", "fxdec", "--force")
        assert down.returncode == 0, down.stderr
        assert (decoy / "precious").read_text() == "keep me"
        assert processes.find_pids(record.temp_dir, by_open_files=True) == []  # the real cluster is stopped all the same
    finally:
        shutil.rmtree(decoy, ignore_errors=True)
        shutil.rmtree(record.temp_dir, ignore_errors=True)
    assert run_cli("up", "--name", "fxdec", "--num-cpus", "1").returncode == 0  # and a normal down removes its own
    temp_dir = Path(records.load("fxdec").temp_dir)
    assert (temp_dir / ".bridge-ray-cluster").is_file()
    assert run_cli("down", "--name", "fxdec").returncode == 0 and not temp_dir.exists()


@pytest.mark.parametrize("temp_dir,backend", [
    ("/home", "local"),
    (f"{ROOT}/../../home", "local"),                 # under the root by its text only
    (f"{ROOT}/fxvic-abcdef/../..", "local"),
    (f"{ROOT}/fxother-abcdef", "local"),             # another cluster's temp dir
    (f"{ROOT}/fxvic-abcdef/sub", "local"),           # not a direct child
    (f"{ROOT}", "local"),
    ("fxvic-abcdef", "local"),                        # relative
    (f"{ROOT}/fxvic-abcdef", "slurm"),               # a local name in a SLURM record
    (f"{ROOT}/slurm-12", "address"),                 # a registered cluster has none
])
def test_only_a_temp_dir_bridge_ray_makes_is_accepted(home, temp_dir, backend):
    path = write_record("fxvic", temp_dir=temp_dir, backend=backend)
    out = run_cli("status", "--name", "fxvic")
    assert (out.returncode, out.stderr.strip()) == (2, broken(
        "fxvic", path, f"temp_dir {temp_dir!r} is not one bridge-ray makes, a folder of {ROOT}"))


def test_the_temp_dirs_bridge_ray_makes_are_accepted(home):
    write_record("fxok", temp_dir=f"{ROOT}/fxok-0a1b2c")
    assert records.load("fxok").temp_dir == f"{ROOT}/fxok-0a1b2c"
    for job_dir in ("slurm-4242", "slurm-4242.1"):  # what slurm_node.Node.temp_dir names, slot 0 and 1
        write_record("fxslurm", backend="slurm", temp_dir=f"{ROOT}/{job_dir}", slurm={"job_id": "4242"})
        assert records.load("fxslurm").temp_dir == f"{ROOT}/{job_dir}"
    write_record("fxnone")  # a record without a temp dir (a registered cluster's, a test's)
    assert records.load("fxnone").temp_dir is None


# ---- 2. wrong-typed fields: a broken record, and `down --force` clears it -------------------------


@pytest.mark.parametrize("fields,why", [
    ({"temp_dir": 5}, "temp_dir is 5, not str | None"),
    ({"ports": "x"}, "ports is 'x', not dict[str, int]"),
])
def test_a_record_with_wrong_typed_fields_is_broken_everywhere_and_down_force_clears_it(home, fields, why):
    path = write_record("fxtype", **fields)
    for args in (("status",), ("down",), ("submit", "recipes/hello_cluster.py", "--dry-run"), ("list",)):
        out = run_cli(*args, "--name", "fxtype")
        assert (out.returncode, out.stderr.strip(), out.stdout) == (2, broken("fxtype", path, why), ""), args
    down = run_cli("down", "--name", "fxtype", "--force")
    assert (down.returncode, down.stderr, down.stdout.strip()) == (0, "", "cluster 'fxtype' is down: its unreadable "
                                                                         "record is removed and what was started for it stopped")
    assert not path.exists() and not records.cluster_dir("fxtype").exists()


@pytest.mark.parametrize("fields,why", [
    ({"pids": [1, "2"]}, "pids is [1, '2'], not list[int]"),
    ({"ports": {"port": True}}, "ports is {'port': True}, not dict[str, int]"),
    ({"created_at": "yesterday"}, "created_at is 'yesterday', not float"),
    ({"token_path": ["a"]}, "token_path is ['a'], not str | None"),
    ({"python": None}, "python is None, not str"),
    ({"slurm": []}, "slurm is [], not dict | None"),
    ({"backend": "cloud"}, "backend 'cloud' is none of local, slurm, address"),
    ({"name": "other"}, "name 'other' is not the file's name, or no valid cluster name"),
    ({"backend": "slurm", "slurm": {"job_id": "--me"}}, "SLURM job id '--me' is not a number"),
])
def test_every_field_is_checked_when_a_record_is_read(home, fields, why):
    path = write_record("fxtype", **fields)
    out = run_cli("status", "--name", "fxtype")
    assert (out.returncode, out.stderr.strip()) == (2, broken("fxtype", path, why))
    assert records.list_records() == []  # an unreadable record never hides the others, nor shows itself


# ---- 3. a flag that needs another one ---------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (("--token-file", "/x"), "error: --token-file needs --address (it is for a cluster registered by its Jobs API "
                             "URL): add --address http://HEAD:8265, or leave --token-file out"),
    (("--python", "python3"), "error: --python needs --address (it is for a cluster registered by its Jobs API "
                              "URL): add --address http://HEAD:8265, or leave --python out"),
    (("--slurm", "--python", "python3"), "error: --python needs --address (it is for a cluster registered by its "
                                         "Jobs API URL): add --address http://HEAD:8265, or leave --python out"),
    (("--slurm", "--address", "http://127.0.0.1:8265"),
     "error: --address registers a running cluster and --slurm starts one: give one of them"),
    (("--slurm", "--dry-run", "--address", "http://127.0.0.1:8265"),
     "error: --address registers a running cluster and --slurm starts one: give one of them"),
    (("--slurm", "--num-cpus", "4"),
     "error: --num-cpus is for a cluster started on this machine, not with --slurm: use --cpus-per-task"),
    (("--slurm", "--dry-run", "--num-gpus", "1"),
     "error: --num-gpus is for a cluster started on this machine, not with --slurm: use --gpus-per-node"),
    (("--slurm", "--port", "6390"),
     "error: --port is for a cluster started on this machine, not with --slurm: leave --port out"),
    (("--address", "http://127.0.0.1:8265", "--dashboard-port", "8266"),
     "error: --dashboard-port is for a cluster started on this machine, not with --address (the cluster is "
     "running already): leave --dashboard-port out"),
])
def test_up_refuses_a_flag_without_the_one_it_needs_before_starting_anything(home, args, message):
    out = run_cli("up", "--name", "fxflag", *args)
    assert (out.returncode, out.stderr.strip(), out.stdout) == (2, message, "")
    assert not home.exists()  # nothing started, nothing written


# ---- 4. the address of a cluster to register ---------------------------------------------------


@pytest.mark.parametrize("address", ["not a url", "ftp://x:8265", "http://127.0.0.1", "http://127.0.0.1:99999",
                                     "http://127.0.0.1:port", "http://user:pw@127.0.0.1:8265", "http:///8265"])
def test_up_refuses_an_address_that_is_no_jobs_api_url(home, tmp_path, address):
    token = tmp_path / "token"
    token.write_text("t" * 64)
    out = run_cli("up", "--name", "fxreg", "--address", address, "--token-file", str(token))
    assert (out.returncode, out.stderr.strip()) == (2, f"error: --address {address!r} is not a Jobs API URL: give "
                                                       "http://HOST:PORT (or https://), e.g. http://127.0.0.1:8265")
    assert not home.exists()


class _JobsApi(http.server.BaseHTTPRequestHandler):
    """A stand-in Jobs API: 401 without the right bearer token, ``/api/version`` with it."""

    token = "right"

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"version": "4", "ray_version": "2.60.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def jobs_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JobsApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_registering_says_what_is_wrong_and_leaves_nothing_behind(home, tmp_path, jobs_api):
    token, wrong, passwd, binary = tmp_path / "token", tmp_path / "wrong", tmp_path / "passwd", tmp_path / "bin"
    token.write_text(_JobsApi.token)
    wrong.write_text("0" * 64)
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    binary.write_bytes(b"\xff\xfe\x00token")
    url = f"http://127.0.0.1:{dead_port()}"
    cases = {
        (jobs_api, str(passwd)): f"error: {passwd} does not hold a Ray auth token (one word on one line): pass the "
                                 "cluster's own token file (Ray writes it as ~/.ray/auth_token on its head)",
        (jobs_api, str(binary)): f"error: {binary} does not hold a Ray auth token (one word on one line): pass the "
                                 "cluster's own token file (Ray writes it as ~/.ray/auth_token on its head)",
        (url, str(token)): f"error: nothing answers at {url}: check the Jobs API address, e.g. http://HEAD:8265",
        (jobs_api, None): f"error: the cluster at {jobs_api} requires an auth token: pass its Ray auth token file "
                          "with --token-file FILE",
        (jobs_api, str(wrong)): f"error: the cluster at {jobs_api} refused the token in {wrong}: pass that "
                                "cluster's own Ray auth token file with --token-file FILE",
    }
    for (address, token_file), message in cases.items():
        out = run_cli("up", "--name", "fxreg", "--address", address, *(("--token-file", token_file) if token_file else ()))
        assert (out.returncode, out.stderr.strip()) == (2, message), (address, token_file)
        assert not records.record_path("fxreg").exists() and not records.cluster_dir("fxreg").exists()
    ok = run_cli("up", "--name", "fxreg", "--address", jobs_api + "/", "--token-file", str(token))
    assert (ok.returncode, ok.stderr) == (0, "")
    assert f"cluster 'fxreg' is up (address): Jobs API {jobs_api}\n" in ok.stdout
    (records.cluster_dir("fxreg") / "secrets").mkdir(parents=True)  # as `submit` leaves it once its jobs ended
    down = run_cli("down", "--name", "fxreg")
    assert (down.returncode, down.stdout.strip()) == (0, "cluster 'fxreg' is down")
    assert not records.cluster_dir("fxreg").exists() and token.read_text() == _JobsApi.token  # the user's file stays


def test_a_head_that_answers_but_lists_no_nodes_is_one_line_and_nothing_is_sent(home, tmp_path, jobs_api):
    """``submit`` asks the head for its nodes to check the run against them; a head whose Jobs API answers
    but has no node list (here the stand-in above, as a proxy or another service on that port might) is
    named, not a traceback or a job sent blind."""
    token = tmp_path / "token"
    token.write_text(_JobsApi.token)
    assert run_cli("up", "--name", "fxreg", "--address", jobs_api, "--token-file", str(token)).returncode == 0
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "fxreg")
    assert (out.returncode, out.stdout, out.stderr) == (2, "", (
        f"error: the head of cluster 'fxreg' at {jobs_api} answers but did not list its nodes (/api/v0/nodes): "
        "is it a Ray dashboard? See `bridge-ray status --name fxreg`; `--no-check` sends the job unchecked; "
        "nothing was submitted\n"))
    assert run_cli("runs", "--name", "fxreg").stdout.count("hello_cluster") == 0
    assert not list(records.cluster_dir("fxreg").glob("secrets/*"))  # no job's secrets file was written
    assert run_cli("down", "--name", "fxreg").returncode == 0


def test_a_failed_local_up_leaves_no_token_or_empty_folder(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli("up", "--name", "fxbusy", "--dashboard-port", str(port))
    assert (out.returncode, out.stderr.strip()) == (2, (
        f"error: port {port} (--dashboard-port) is already in use on this machine: choose another with "
        "--dashboard-port PORT, or leave it out and bridge-ray picks a free one"))
    assert not records.cluster_dir("fxbusy").exists() and not records.record_path("fxbusy").exists()
    assert not list((home / "clusters").glob(".*"))  # the start's lock file went with it


def test_one_port_for_two_flags_and_a_folder_for_a_token_file_are_one_line(home, tmp_path):
    """`up --port 8265 --dashboard-port 8265` passed Ray's own words through with no fix; `--token-file DIR` said the
    folder "does not exist"."""
    out = run_cli("up", "--name", "fxsame", "--port", "41234", "--dashboard-port", "41234")
    assert (out.returncode, out.stdout, out.stderr) == (2, "", (
        "error: --port and --dashboard-port are both 41234: each needs a port of its own; leave one out and bridge-ray "
        "picks a free one\n"))
    assert not records.cluster_dir("fxsame").exists() and not records.record_path("fxsame").exists()
    out = run_cli("up", "--name", "fxdir", "--address", "http://127.0.0.1:1", "--token-file", str(tmp_path))
    assert (out.returncode, out.stderr) == (2, f"error: --token-file {tmp_path} is a folder: pass the cluster's Ray "
                                               "auth token file\n")


def test_a_second_up_of_a_name_being_started_is_refused_at_once(home):
    """Two `bridge-ray up --name r` at once both saw no record, both started a head and both said so; the
    record kept the last one. The first one's start is held here (the lock it takes) while the second runs."""
    with records.starting("fxtwice"):
        out = run_cli("up", "--name", "fxtwice")
        assert (out.returncode, out.stdout, out.stderr) == (2, "", (
            f"error: cluster 'fxtwice' is being started right now by another `bridge-ray up --name fxtwice` "
            f"(pid {os.getpid()}): wait for it, then use the cluster (`bridge-ray status --name fxtwice`), or "
            "pick another --name\n"))
        with pytest.raises(records.ClusterExists):  # a second process, or this one again
            with records.starting("fxtwice"):
                pass
    assert not records.cluster_dir("fxtwice").exists() and not list((home / "clusters").iterdir())
    with records.starting("fxtwice"):  # taken again once released
        assert (home / "clusters" / ".fxtwice.starting").read_text() == str(os.getpid())


def test_down_while_up_is_starting_the_cluster_says_so(home):
    """`down` found no record yet and said "not recorded; nothing to do"; then the head came up."""
    with records.starting("fxsoon"):
        assert records.starter("fxsoon") == os.getpid()
        for args in ((), ("--force",)):
            out = run_cli("down", "--name", "fxsoon", *args)
            assert (out.returncode, out.stdout, out.stderr) == (2, "", (
                f"error: cluster 'fxsoon' is being started right now by `bridge-ray up --name fxsoon` (pid "
                f"{os.getpid()}): run `bridge-ray down --name fxsoon` once it is up, or interrupt that `up` (Ctrl-C): "
                "it stops what it started\n"))
    assert records.starter("fxsoon") is None
    assert run_cli("down", "--name", "fxsoon").stdout == "cluster 'fxsoon' is not recorded; nothing to do\n"


def test_the_gpus_a_head_could_use_are_the_drivers_within_cuda_visible_devices(tmp_path):
    from bridge_ray.cluster.local import visible_gpus

    for n in range(4):
        (tmp_path / "proc" / "driver" / "nvidia" / "gpus" / f"0000:0{n}:00.0").mkdir(parents=True)
    assert visible_gpus(tmp_path, {"PATH": ""}) == 4
    assert visible_gpus(tmp_path, {"PATH": "", "CUDA_VISIBLE_DEVICES": "0,2"}) == 2
    assert visible_gpus(tmp_path, {"PATH": "", "CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_gpus(tmp_path / "none", {"PATH": ""}) == 0  # no driver, no nvidia-smi
    hung = tmp_path / "bin" / "nvidia-smi"  # a broken driver's nvidia-smi: unknown, and no warning
    hung.parent.mkdir()
    hung.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    hung.chmod(0o755)
    assert visible_gpus(tmp_path / "none", {"PATH": str(hung.parent)}) is None


def test_no_gpu_warning_when_the_machine_has_enough_or_its_count_is_unknown(monkeypatch):
    from bridge_ray.cluster import local

    for shown, asked, warned in ((2, 2, False), (2, 3, True), (None, 8, False)):
        monkeypatch.setattr(local, "visible_gpus", lambda shown=shown: shown)
        assert (local.missing_gpus_warning(asked) is not None) is warned


@pytest.mark.integration
def test_up_warns_when_it_offers_gpus_the_machine_does_not_show(home, tmp_path):
    """Ray offers whatever --num-gpus says; a job placed on a GPU that is not there fails only when it starts.
    The head is asked for one GPU more than the machine shows (CI has none), says so, and starts as asked."""
    from bridge_ray.cluster.local import visible_gpus

    found = visible_gpus()
    out = run_cli("up", "--name", "fxgpu", "--num-cpus", "1", "--num-gpus", str(found + 1))
    try:
        assert out.returncode == 0, out.stderr
        assert out.stderr == (f"warning: --num-gpus {found + 1}, but this machine shows {found} NVIDIA GPU(s) (its "
                              "driver's list, within CUDA_VISIBLE_DEVICES): Ray will offer GPUs that are not there "
                              "and GPU jobs will fail when they start; leave --num-gpus out to offer what the machine "
                              "has\n")
    finally:
        assert run_cli("down", "--name", "fxgpu", "--force").returncode == 0


# ---- 5. a dead head: its status, then the failure's one line on stderr ---------------------------


def test_status_of_a_dead_head_prints_it_and_says_why_it_failed_on_stderr(home):
    url = f"http://127.0.0.1:{dead_port()}"
    write_record("fxdead", dashboard_url=url, gcs_address="")
    out = run_cli("status", "--name", "fxdead")
    assert out.returncode == 2
    assert out.stdout.splitlines()[1:] == [f"  Jobs API: {url}", "  STALE: the head does not answer; fix: "
                                           "`bridge-ray down --name fxdead` then `bridge-ray up --name fxdead`"]
    assert out.stderr == (f"error: cluster 'fxdead' is recorded but its head at {url} does not answer (stale record): "
                          "run `bridge-ray down --name fxdead` to clear it, then `bridge-ray up --name fxdead`\n")
    write_record("fxdead", dashboard_url=url, gcs_address="", backend="address", token_path=None)
    out = run_cli("status", "--name", "fxdead")
    assert out.stderr.strip().endswith(f"then `bridge-ray up --name fxdead --address {url} --token-file FILE`")


# ---- 7. an invalid --name is the name's error everywhere -----------------------------------------


@pytest.mark.parametrize("args", [("status",), ("logs", "x"), ("down",), ("down", "--force"), ("up",), ("list",),
                                  ("stop", "x"), ("status", "x"), ("submit", "recipes/hello_cluster.py", "--dry-run")])
def test_an_invalid_name_is_the_name_error_everywhere(home, args):
    out = run_cli(*args, "--name", "../x")
    assert (out.returncode, out.stderr.strip(), out.stdout) == (2, NAME_ERROR, "")
    assert not home.exists()


def test_a_name_ending_in_json_is_refused(home):
    """`up --name a.json` beside cluster `a` ran into a.json, the record file, and blamed the home's permissions."""
    out = run_cli("up", "--name", "a.json")
    assert (out.returncode, out.stderr.strip(), out.stdout) == (2, (
        "error: cluster name 'a.json' is not valid: it may not end in '.json' (that is how records are named); use "
        "e.g. a-json"), "")
    assert not home.exists()


# ---- 6. Ctrl-C or SIGTERM during `up`: everything it started is stopped --------------------------


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_up_stops_everything_it_started(home, sig):
    name = "fxint"
    tag = str(records.cluster_dir(name))
    up = subprocess.Popen([sys.executable, "-m", "bridge_ray", "up", "--name", name, "--num-cpus", "1"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        gcs = wait_for(lambda: [p for p in processes.find_pids(None, tag=tag) if b"gcs_server" in processes.cmdline(p)]
                       or up.poll() is not None, "the head's GCS to start")
        assert up.poll() is None, up.communicate()
        temp_dir = processes.env_value(gcs[0], processes.TEMP_DIR_ENV)
        assert temp_dir and Path(temp_dir).parent == ROOT
        up.send_signal(sig)
        stdout, stderr = up.communicate(timeout=HANG_GUARD_S)
    finally:
        if up.poll() is None:
            up.kill()
    assert (up.returncode, stderr) == (130, f"interrupted: stopped what `bridge-ray up --name {name}` had started; "
                                            f"nothing of cluster {name!r} is left\n"), stdout
    assert processes.find_pids(None, tag=tag) == [] and processes.find_pids(temp_dir, by_open_files=True) == []
    assert not Path(temp_dir).exists()
    assert not records.record_path(name).exists() and not records.cluster_dir(name).exists()
    assert run_cli("down", "--name", name).stdout.strip() == f"cluster {name!r} is not recorded; nothing to do"


# ---- 9. a network profile left by an earlier cluster of the same name ---------------------------------------


def test_the_saved_profile_note_names_its_keys_date_and_how_to_derive_it_again(home):
    from bridge_ray.network import profile as prof

    assert prof.saved_profile_note("fxprof") is None
    saved = prof.ClusterProfile(env={"NCCL_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "WARN"},
                                node_env={"n1": {"NCCL_IB_HCA": "mlx5_0"}}, created_at=1_800_000_000)
    prof.save_profile("fxprof", saved)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(1_800_000_000))
    assert prof.saved_profile_note("fxprof") == (
        f"jobs get the network profile saved by `bridge-ray doctor` on {when} (NCCL_SOCKET_IFNAME, per-node "
        "settings): run `bridge-ray doctor --name fxprof` to derive it for this cluster again")
    prof.profile_path("fxprof").write_text("{not json")
    assert prof.saved_profile_note("fxprof").startswith(
        f"warning: the network profile {prof.profile_path('fxprof')} is unreadable (")


def test_up_says_which_saved_profile_its_jobs_get(home):
    """`down` keeps the cluster's network profile (the user's overrides.env among it); the next `up` of that name
    says so, so that a profile from other nodes or an old doctor run is no surprise."""
    folder = records.writable_dir(records.cluster_dir("fxprof"))
    (folder / "overrides.env").write_text("NCCL_IB_TC=106\n")
    try:
        out = run_cli("up", "--name", "fxprof", "--num-cpus", "1")
        assert out.returncode == 0, out.stdout + out.stderr
        assert (f"note: jobs get the network profile from {folder / 'overrides.env'} (NCCL_IB_TC): run "
                "`bridge-ray doctor --name fxprof` to derive it for this cluster again") in out.stdout.splitlines()
    finally:
        run_cli("down", "--name", "fxprof", "--force")


def test_status_lists_the_last_ten_jobs_with_what_each_runs():
    """A driver that `submit` did not start (`bridge-ray doctor`'s) shows its command, not a bare id."""
    from bridge_ray import cluster as lib
    from bridge_ray.cli.cluster import format_status
    from bridge_ray.cluster.records import ClusterRecord

    record = ClusterRecord(name="fxst", backend="local", gcs_address="127.0.0.1:1",
                           dashboard_url="http://127.0.0.1:2", created_at=1_800_000_000)
    jobs = [{"submission_id": f"run-{i:02d}", "status": "SUCCEEDED", "entrypoint": f"python -m bridge_ray.jobs.driver {i}",
             "start_time": i} for i in range(12)]
    jobs.append({"submission_id": None, "job_id": "0d000000", "status": "RUNNING", "start_time": 12,
                 "entrypoint": "/venv/bin/python -m bridge_ray doctor " + "--shared-dir /a/very/long/path " * 4})
    text = format_status(lib.ClusterStatus(record=record, alive=True, jobs=jobs))
    lines = text.splitlines()
    at = lines.index("  jobs: 13 (the last 10; `bridge-ray list` shows all)")
    assert lines[at + 1] == "    run-03    SUCCEEDED  python -m bridge_ray.jobs.driver 3"
    assert lines[at + 10].startswith("    0d000000  RUNNING    /venv/bin/python -m bridge_ray doctor --shared-dir /a/")
    assert lines[at + 10].endswith("...") and len(lines[at + 10]) == 4 + 8 + 2 + 9 + 2 + 80

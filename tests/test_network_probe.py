"""Unit tests: recorded sysfs + ``ip -j addr`` layouts of real machine types -> the expected env.

Layouts live in tests/data/network/<scenario>/<host>/ (``sys/``, ``proc/``, ``ip-addr.json``,
``node.json``): an InfiniBand DGX-like pair, a RoCE v2 pair with several GIDs per port, a pair
of cloud VMs without RDMA, and three hosts with NICs on different subnets.
"""
from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge_ray.errors import ConfigError
from bridge_ray.network import checks, profile as prof
from bridge_ray.network.probe import NodeProbe, parse_ip_addr, probe_node, read_gpus, read_ib_ports

DATA = Path(__file__).parent / "data" / "network"


def load_node(folder: Path) -> NodeProbe:
    meta = json.loads((folder / "node.json").read_text())
    found = NodeProbe.from_dict(
        probe_node(root=folder, ip_json=(folder / "ip-addr.json").read_text(), hostname=meta["hostname"])
    )
    found.node_ip = meta["node_ip"]
    return found


def load(scenario: str) -> list[NodeProbe]:
    return [load_node(d) for d in sorted((DATA / scenario).iterdir())]


# ---- parsing ------------------------------------------------------------------------------


def test_parse_ip_addr_keeps_ipv4_and_link_state():
    ifaces = {i.name: i for i in parse_ip_addr((DATA / "ib-hca/gpu-a001/ip-addr.json").read_text())}
    assert ifaces["lo"].loopback and ifaces["lo"].up
    assert ifaces["enp170s0f0np0"].ipv4 == ["10.10.0.11/16"] and ifaces["enp170s0f0np0"].up
    assert not ifaces["enp170s0f1np1"].up  # NO-CARRIER: no LOWER_UP flag
    assert ifaces["ibp26s0"].ipv4 == ["192.168.200.11/24"]


def test_read_ib_ports_roce_gids():
    ports = {p.name: p for p in read_ib_ports(DATA / "roce-v2/node01")}
    assert sorted(ports) == ["mlx5_0:1", "mlx5_1:1", "mlx5_2:1"]
    mlx5_0 = ports["mlx5_0:1"]
    assert mlx5_0.active and mlx5_0.link_layer == "Ethernet" and mlx5_0.rate_gbps == 200
    assert [g.index for g in mlx5_0.gids] == [0, 1, 2, 3, 4, 5]  # zero GIDs are left out
    assert [g.type for g in mlx5_0.gids][:4] == ["IB/RoCE v1", "RoCE v2", "IB/RoCE v1", "RoCE v2"]
    assert mlx5_0.gids[3].ipv4 == "10.0.1.11" and mlx5_0.gids[3].netdev == "enp25s0np0"
    assert mlx5_0.gids[5].ipv4 is None


def test_read_ib_ports_infiniband_and_down_port():
    ports = {p.name: p for p in read_ib_ports(DATA / "ib-hca/gpu-a001")}
    assert ports["mlx5_0:1"].link_layer == "InfiniBand" and ports["mlx5_0:1"].rate_gbps == 400
    assert not ports["mlx5_5:1"].active and ports["mlx5_5:1"].state == "1: DOWN"


def test_read_gpus_and_missing_sysfs():
    assert read_gpus(DATA / "ib-hca/gpu-a001") == ["NVIDIA H100 80GB HBM3"] * 8
    assert read_gpus(DATA / "no-ib/ip-172-31-5-10") == []
    assert read_ib_ports(DATA / "no-ib/ip-172-31-5-10") == []


def test_probe_node_markers_and_versions(tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    from bridge_ray.network.probe import marker_path

    marker_path(shared, "tok").write_text("tok")
    found = probe_node(root=DATA / "no-ib/ip-172-31-5-10", ip_json="[]", shm_path=str(tmp_path),
                       markers={str(shared): "tok", str(private): "tok"}, hostname="h")
    assert found["shared_dirs"] == {str(shared): True, str(private): False}
    assert found["versions"]["ray"] and found["versions"]["python"]
    assert found["shm_bytes"] > 0
    assert NodeProbe.from_dict(json.loads(json.dumps(found))).hostname == "h"  # survives JSON


# ---- the derived env, per machine type ----------------------------------------------------


def test_infiniband_hcas_exclude_ethernet_front_end_and_down_port():
    profile = prof.derive_profile(load("ib-hca"))
    assert profile.env == {
        "GLOO_SOCKET_IFNAME": "enp170s0f0np0",
        "NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1",
        "NCCL_SOCKET_IFNAME": "enp170s0f0np0",  # the subnet holding Ray's node addresses
    }
    assert profile.node_env == {} and profile.notes == []


def test_roce_v2_picks_ipv4_v2_gid_and_fast_rails():
    profile = prof.derive_profile(load("roce-v2"))
    assert profile.env == {
        "GLOO_SOCKET_IFNAME": "eno1",
        "NCCL_IB_GID_INDEX": "3",
        "NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1",  # the 25G management port is left out
        "NCCL_SOCKET_IFNAME": "eno1",
    }


def test_no_ib_box_gets_socket_interface_only():
    assert prof.derive_profile(load("no-ib")).env == {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}


def test_single_node_picks_ray_subnet():
    assert prof.derive_profile(load("roce-v2")[:1]).env["NCCL_SOCKET_IFNAME"] == "eno1"


def test_multi_nic_only_shared_subnet_and_per_node_names():
    probes = load("multi-nic")
    subnets = prof.shared_subnets(probes)
    assert [s.network for s in subnets] == ["10.50.0.0/22"]  # not eth0's, not docker0's duplicate
    profile = prof.derive_profile(probes)
    assert profile.env == {}
    assert profile.node_env == {
        "cn1": {"GLOO_SOCKET_IFNAME": "ens5", "NCCL_SOCKET_IFNAME": "ens5"},
        "cn2": {"GLOO_SOCKET_IFNAME": "ens5", "NCCL_SOCKET_IFNAME": "ens5"},
        "cn3": {"GLOO_SOCKET_IFNAME": "ens6", "NCCL_SOCKET_IFNAME": "ens6"},
    }
    assert profile.node_start_env("cn3")["NCCL_SOCKET_IFNAME"] == "ens6"
    assert prof.derive_profile(probes[:2]).env == {"GLOO_SOCKET_IFNAME": "ens5", "NCCL_SOCKET_IFNAME": "ens5"}


def test_ray_nodes_sharing_one_host_count_once():
    probes = load("no-ib")[:1] * 2  # e.g. ray.cluster_utils nodes: same host, same addresses
    assert prof.derive_profile(probes).env == {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
    assert checks.check_subnet(probes, prof.shared_subnets(probes)).status == "PASS"


def test_gid_index_differing_across_nodes_goes_to_node_env():
    probes = load("roce-v2")
    for port in probes[1].ib_ports:  # node02's IPv4 RoCE v2 GID sits at index 7 instead
        for gid in port.gids:
            gid.index = 7 if gid.index == 3 else gid.index
    profile = prof.derive_profile(probes)
    assert "NCCL_IB_GID_INDEX" not in profile.env
    assert profile.node_env == {"node01": {"NCCL_IB_GID_INDEX": "3"}, "node02": {"NCCL_IB_GID_INDEX": "7"}}


def test_no_common_subnet_leaves_socket_unset_with_note():
    probes = [load("multi-nic")[0], load("no-ib")[0]]
    profile = prof.derive_profile(probes)
    assert "NCCL_SOCKET_IFNAME" not in profile.env and not profile.node_env
    assert profile.notes == ["no IPv4 subnet is shared by every node: NCCL/GLOO_SOCKET_IFNAME not set"]


# ---- checks --------------------------------------------------------------------------------


def _by_name(rows):
    return {c.name: c for c in rows}


def test_clean_layouts_pass_every_check():
    for scenario in ("ib-hca", "roce-v2", "no-ib", "multi-nic"):
        probes = load(scenario)
        for p in probes:
            p.shm_bytes = 8 << 30
        rows = checks.static_checks(probes, {}, "/home")
        assert [c.status for c in rows] == ["PASS"] * len(rows), (scenario, rows)


def test_ib_port_down_on_one_node_fails_with_fix(tmp_path):
    shutil.copytree(DATA / "ib-hca", tmp_path / "ib-hca")
    (tmp_path / "ib-hca/gpu-a002/sys/class/infiniband/mlx5_2/ports/1/state").write_text("1: DOWN\n")
    probes = [load_node(d) for d in sorted((tmp_path / "ib-hca").iterdir())]
    row = checks.check_ib_ports(probes)
    assert row.status == "FAIL"
    assert row.detail == "gpu-a002: mlx5_2:1 is 1: DOWN"
    assert "check the cable and switch port (`ibstat`)" in row.fix
    # gpu-a002 then uses three HCAs: the key becomes per node
    assert prof.derive_profile(probes).node_env["gpu-a002"]["NCCL_IB_HCA"] == "=mlx5_0:1,mlx5_1:1,mlx5_3:1"


def test_ib_port_without_subnet_manager_fails(tmp_path):
    shutil.copytree(DATA / "ib-hca/gpu-a001", tmp_path / "n")
    (tmp_path / "n/sys/class/infiniband/mlx5_0/ports/1/state").write_text("2: INIT\n")
    row = checks.check_ib_ports([load_node(tmp_path / "n")])
    assert row.status == "FAIL" and "mlx5_0:1 is 2: INIT (no subnet manager)" in row.detail
    assert "opensm" in row.fix


def test_version_skew_fails_naming_nodes_and_fix():
    probes = load("no-ib")
    probes[0].versions = {"python": "3.11.7", "torch": "2.13.0", "ray": "2.60.0"}
    probes[1].versions = {"python": "3.11.7", "torch": "2.11.0", "ray": "2.60.0"}
    row = checks.check_versions(probes)
    assert row.status == "FAIL"
    assert row.detail == "torch: 2.13.0 on ip-172-31-5-10, 2.11.0 on ip-172-31-9-77"
    assert row.fix.startswith("install the same versions on every node (torch==2.13.0)")


def test_unshared_home_fails_with_fix():
    probes = load("no-ib")
    probes[0].shared_dirs = {"/home/u/.bridge-ray": True}
    probes[1].shared_dirs = {"/home/u/.bridge-ray": False}
    (row,) = checks.check_shared_dirs(probes, "/home/u/.bridge-ray")
    assert (row.status, row.detail) == ("FAIL", "not visible on ip-172-31-9-77")
    assert "export BRIDGE_RAY_HOME=/shared/" in row.fix


def test_no_common_subnet_fails_with_fix():
    probes = [load("multi-nic")[0], load("no-ib")[0]]
    row = checks.check_subnet(probes, prof.shared_subnets(probes))
    assert row.status == "FAIL" and "no IPv4 subnet is shared by all nodes" in row.detail
    assert "--env NCCL_SOCKET_IFNAME=<if>" in row.fix


def test_forced_interface_on_unshared_subnet_fails():
    probes = load("multi-nic")
    subnets = prof.shared_subnets(probes)
    rows = _by_name(checks.check_socket_overrides(probes, {"GLOO_SOCKET_IFNAME": "eth0"}, subnets))
    row = rows["interface GLOO_SOCKET_IFNAME"]
    assert row.status == "FAIL" and "no subnet all nodes share" in row.detail
    assert "--env GLOO_SOCKET_IFNAME=ens5, subnet 10.50.0.0/22" in row.fix
    missing = checks.check_socket_overrides(probes, {"NCCL_SOCKET_IFNAME": "=ens5"}, subnets)[0]
    assert missing.status == "FAIL" and "ens5 is not up with an IPv4 address on cn3" in missing.detail
    ok = checks.check_socket_overrides(load("no-ib"), {"NCCL_SOCKET_IFNAME": "eth0"}, prof.shared_subnets(load("no-ib")))
    assert ok[0].status == "PASS"


def test_nccl_reads_an_interface_name_as_a_prefix_and_gloo_does_not():
    """NCCL_SOCKET_IFNAME=eth takes eth0 (``=eth`` only an interface called eth); gloo's names are exact."""
    probes = load("no-ib")
    subnets = prof.shared_subnets(probes)
    status = lambda key, value: checks.check_socket_overrides(probes, {key: value}, subnets)[0].status  # noqa: E731
    assert status("NCCL_SOCKET_IFNAME", "eth") == "PASS"
    assert status("NCCL_SOCKET_IFNAME", "=eth") == "FAIL" and status("GLOO_SOCKET_IFNAME", "eth") == "FAIL"
    assert status("NCCL_SOCKET_IFNAME", "=eth0") == "PASS" and status("NCCL_SOCKET_IFNAME", "ens") == "FAIL"


def test_small_shm_fails():
    probes = load("no-ib")
    probes[0].shm_bytes, probes[1].shm_bytes = 64 << 20, 8 << 30
    row = checks.check_shm(probes)
    assert (row.status, row.detail) == ("FAIL", "ip-172-31-5-10: 64 MiB")
    assert "--shm-size" in row.fix


# ---- verl's reserved keys ----------------------------------------------------------------


def test_reserved_keys_cover_what_verl_ppo_sets(monkeypatch):
    constants = pytest.importorskip("verl.trainer.constants_ppo")
    set_by_verl = set(constants.PPO_RAY_RUNTIME_ENV["env_vars"]) | set(constants.get_ppo_ray_runtime_env()["env_vars"])
    for key in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "FLASH_ATTENTION_DETERMINISTIC", "NCCL_DETERMINISTIC", "NCCL_ALGO"):
        monkeypatch.setenv(key, "1")
    set_by_verl |= set(constants.get_ppo_ray_runtime_env()["env_vars"])
    # every env-var-like literal in the module, so a key added by a verl upgrade fails here
    literals = set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', inspect.getsource(constants)))
    read_only = {"TLLM_DISABLE_NVLS_MNNVL", "VERL_KEEP_NVTX_INJECTION"}  # switches verl reads, never sets
    assert set_by_verl | (literals - read_only) <= prof.VERL_PPO_RESERVED_KEYS


def test_profile_never_carries_reserved_keys():
    profile = prof.ClusterProfile(env={"NCCL_SOCKET_IFNAME": "eth0"},
                                  overrides={"NCCL_DEBUG": "INFO", "NCCL_IB_TC": "106"})
    assert profile.job_env() == {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_TC": "106"}
    assert "NCCL_DEBUG" not in prof.render_env_file(profile)


# ---- files, overrides, profile_env ----------------------------------------------------------


def test_parse_env_assignments_collects_errors():
    assert prof.parse_env_assignments(["NCCL_A=1", "export NCCL_B='x y'", "GLOO_C="]) == {
        "NCCL_A": "1", "NCCL_B": "x y", "GLOO_C": ""}
    with pytest.raises(ConfigError) as err:
        prof.parse_env_assignments(["NOEQUALS", "1BAD=x"])
    assert err.value.problems == [
        "--env 'NOEQUALS' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)",
        "--env '1BAD=x' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)",
    ]


def test_save_load_and_profile_env_precedence(bridge_home):
    assert prof.profile_env("p1") == {}  # doctor never ran: nothing to add
    derived = prof.derive_profile(load("multi-nic"))
    derived.env["NCCL_IB_HCA"] = "=mlx5_0:1"
    derived.overrides = {"NCCL_IB_HCA": "=mlx5_1:1", "NCCL_DEBUG": "INFO"}
    path = prof.save_profile("p1", derived)
    assert path == bridge_home / "clusters" / "p1" / "profile.json"
    assert "overrides" not in json.loads(path.read_text())
    loaded = prof.load_profile("p1")
    assert loaded.node_env == derived.node_env and loaded.overrides == {"NCCL_IB_HCA": "=mlx5_1:1", "NCCL_DEBUG": "INFO"}
    assert prof.profile_env("p1") == {"NCCL_IB_HCA": "=mlx5_1:1"}  # user wins, verl's key dropped
    (bridge_home / "clusters/p1/overrides.env").write_text("# mine\nNCCL_IB_TC=106\n")
    assert prof.profile_env("p1") == {"NCCL_IB_HCA": "=mlx5_0:1", "NCCL_IB_TC": "106"}
    assert prof.node_env("p1", "cn3") == {"GLOO_SOCKET_IFNAME": "ens6", "NCCL_SOCKET_IFNAME": "ens6",
                                          "NCCL_IB_HCA": "=mlx5_0:1", "NCCL_IB_TC": "106"}


@pytest.mark.parametrize("host,expected", [("cn1", "ens5 =mlx5_1:1"), ("cn3", "ens6 =mlx5_1:1"), ("other", " =mlx5_1:1")])
def test_profile_env_file_is_sourced_per_host(bridge_home, host, expected):
    derived = prof.derive_profile(load("multi-nic"))
    derived.overrides = {"NCCL_IB_HCA": "=mlx5_1:1"}
    prof.save_profile("p2", derived)
    script = f'hostname() {{ echo {host}; }}; . "$1"; echo "$NCCL_SOCKET_IFNAME $NCCL_IB_HCA"'
    out = subprocess.run(["bash", "-c", script, "_", str(prof.env_file_path("p2"))],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == expected.strip()

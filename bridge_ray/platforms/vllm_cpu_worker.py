"""vLLM worker extension for verl's rollout on vLLM's CPU build: weight sync keeps working.

After loading weights, vLLM 0.28's CPU build packs each linear layer's weight for its GEMM
kernels (oneDNN or SGL) and replaces ``layer.weight`` with an empty Parameter
(``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`` in
``vllm/model_executor/layers/linear.py``). verl syncs the actor's weights into the running
engine with ``model.load_weights``, which needs that Parameter and its ``weight_loader``
("'Parameter' object has no attribute 'weight_loader'"). This extension makes vLLM keep the
weights (``remove_weight=False``); verl already calls ``process_weights_after_loading``
after each sync, which packs the new weights again. Cost: the rollout holds each linear
weight twice (plain and packed), fine for the small models a CPU run trains.

verl passes the class to vLLM by name (``engine_kwargs.vllm.worker_extension_cls``, set by
``bridge_ray.ppo.overrides`` on CPU); vLLM imports it in its worker process, before the model
loads. Drop this when vLLM's CPU build keeps reloadable weights.
"""
from __future__ import annotations

import functools

from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension


def keep_linear_weights() -> None:
    """Make vLLM's CPU GEMM dispatch keep ``layer.weight`` (once per process)."""
    from vllm.model_executor.layers import utils

    dispatch = utils.dispatch_cpu_unquantized_gemm
    if getattr(dispatch, "_bridge_ray_keeps_weights", False):
        return

    @functools.wraps(dispatch)
    def dispatch_keeping_weights(layer, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)

    dispatch_keeping_weights._bridge_ray_keeps_weights = True
    # linear.py imports the function from this module at call time, so the module attribute is enough.
    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weights


class CPUWorkerExtension(vLLMColocateWorkerExtension):
    """verl's colocated-worker extension, with vLLM CPU's linear weights kept for weight sync."""

    def __new__(cls, **kwargs):
        keep_linear_weights()
        return super().__new__(cls, **kwargs)

"""``sft.model.compile_layers``: each decoder layer's forward through ``torch.compile``, in the worker.

verl 0.9.1's FSDP engine compiles only its entropy function (``engine.use_torch_compile``), never
the model, and an SFT step of the 1B shape leaves the GPU idle a quarter of the time while the host
launches kernels (RESULTS.md, 2026-12-06). Compiling a decoder layer fuses its normalisations,
rotary embedding, activation and residual additions into a few kernels.

Only the layer's own ``forward`` is compiled, after verl has built and sharded the model: FSDP's
hooks (which gather and free each layer's parameters) stay outside the compiled code, as they run
in ``Module.__call__`` around ``forward``. Shapes are dynamic (a packed row has as many tokens as its
samples), so one graph serves every step; torch's inlining of built-in modules lets all layers share
it. bridge-ray's ``torch_varlen`` attention works out sample boundaries on the host (a sync), so it
runs outside the compiled graph (``torch.compiler.disable``); the layer compiles as two graphs
around it.
"""
from __future__ import annotations

import types

import torch


def decoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's stack of decoder layers: its longest ``ModuleList`` whose items are all of one class
    (``model.layers`` in Llama, Qwen, Mistral); None if it has none."""
    stacks = [m for m in module.modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and len({type(item) for item in m}) == 1]
    return max(stacks, key=len, default=None)


def compile_decoder_layers(module: torch.nn.Module, backend: str = "inductor") -> int:
    """Replace each decoder layer's ``forward`` by a compiled one (dynamic shapes); return how many.

    Raises:
        ValueError: the model has no stack of decoder layers to compile.
    """
    layers = decoder_layers(module)
    if layers is None:
        raise ValueError(f"{type(module).__name__} has no stack of decoder layers to compile: set "
                         "sft.model.compile_layers=false")
    _keep_attention_eager()
    compiled = torch.compile(type(layers[0]).forward, dynamic=True, backend=backend)  # one function, all layers
    for layer in layers:
        layer.forward = types.MethodType(compiled, layer)
    return len(layers)


def _keep_attention_eager() -> None:
    """bridge-ray's varlen attention reads sample boundaries on the host: leave it out of the graph."""
    import sys

    attention = sys.modules.get("bridge_ray.platforms.attention")
    if attention is None or getattr(attention.varlen_attention_forward, "_bridge_ray_eager", False):
        return
    eager = torch.compiler.disable(attention.varlen_attention_forward)
    eager._bridge_ray_eager = True
    attention.varlen_attention_forward = eager
    attention.register()

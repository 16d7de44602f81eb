"""``torch_varlen``: a transformers attention function on torch's own variable-length kernel.

With ``model.use_remove_padding=True`` verl 0.9.1 packs a micro batch into one ``(1, T)`` row
of whole samples, passes no attention mask, and hands the model ``position_ids`` that restart
at 0 where each sample starts. ``flash_attention_2`` reads the sample boundaries from those
position ids, but flash-attn is often not installed (no wheel for the GPU host's torch);
``sdpa`` builds a dense ``T x T`` block-diagonal mask, which caps useful row lengths.
torch >= 2.10 ships ``torch.nn.attention.varlen.varlen_attn``: flash kernels inside torch,
differentiable, on CUDA GPUs of compute capability 8.0 or newer (there is no CPU kernel).
This module registers it with transformers as ``torch_varlen``.

verl imports this module in every worker (``model.external_lib``, which its model config
imports before building the Hugging Face config), so the name exists before transformers
looks it up. transformers builds no mask for an attention name it has no mask function for,
which is what a varlen kernel wants. verl writes the name into each checkpoint's
``huggingface/config.json`` (``model.override_config``); ``checkpoints.merge_to_hf`` merges
without it, so merged models load anywhere with the default attention.
"""
from __future__ import annotations

import functools
import inspect
import math
import weakref

import torch

ATTENTION_NAME = "torch_varlen"


@functools.cache
def _kernel():
    """torch's ``varlen_attn`` and the keyword arguments this torch version takes."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def varlen_kernel(query, key, value, cu_seqlens, max_len: int, scale: float):
    """Causal attention over packed ``(T, H, D)`` tensors, across torch's signature changes.

    torch 2.10 takes ``is_causal``; 2.11 ``window_size=(-1, 0)`` and ``scale``; 2.12 adds
    ``enable_gqa``. Without it, key/value heads are repeated to the query's head count
    (transformers' ``repeat_kv`` order); without ``scale``, the query is pre-scaled.
    """
    kernel, params = _kernel()
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, query.shape[-1] ** -0.5):
        query = query * (scale * math.sqrt(query.shape[-1]))
    return kernel(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


class _Boundaries:
    """Sample boundaries of the packed row, worked out once per forward and shared by all layers.

    Every decoder layer gets the same ``position_ids`` tensor; finding where samples start is a
    host sync, so it happens once per tensor, not once a layer.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def __call__(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        key = (position_ids._version, position_ids.shape)
        if self._key is not None and self._key[0]() is position_ids and self._key[1] == key:
            return self._value
        flat = position_ids.reshape(-1)
        starts = torch.nonzero(flat == 0).reshape(-1).tolist()
        if not starts or starts[0] != 0:
            raise ValueError(f"attention {ATTENTION_NAME!r} needs position_ids that start each sample at 0 "
                             "(verl's packed rows); to generate, load the model with attn_implementation=sdpa")
        bounds = starts + [flat.numel()]
        cu_seqlens = torch.tensor(bounds, dtype=torch.int32, device=flat.device)
        self._key = (weakref.ref(position_ids), key)
        self._value = (cu_seqlens, max(b - a for a, b in zip(bounds, bounds[1:])))
        return self._value


boundaries = _Boundaries()


_announced = False


def _announce(module, cu_seqlens: torch.Tensor, query: torch.Tensor) -> None:
    """One line per process, at the first call: the kernel really runs, and on what (speed checks read it)."""
    global _announced
    if _announced:
        return
    _announced = True
    print(f"[bridge-ray] attention {ATTENTION_NAME}: first packed row of {cu_seqlens.numel() - 1} samples, "
          f"{query.shape[2]} tokens ({type(module).__name__}, {query.device}, {query.dtype})", flush=True)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, position_ids: torch.Tensor | None = None, **kwargs):
    """transformers attention interface: ``(B, H, S, D)`` in, ``(B, S, H, D)`` and no weights out.

    Raises:
        ValueError: for input that is not one packed row with position ids (padded batches and
            generation with a KV cache need ``sdpa``), attention dropout during training, or a
            model that needs sliding windows, logit soft-capping or attention sinks.
    """
    if query.shape[0] != 1 or position_ids is None or key.shape[2] != query.shape[2]:
        raise ValueError(f"attention {ATTENTION_NAME!r} takes one packed row with position_ids and no KV cache, got "
                         f"a batch of {query.shape[0]}: set sft.model.use_remove_padding=true for training, or "
                         "attn_implementation=sdpa")
    if dropout and module.training:
        raise ValueError(f"attention {ATTENTION_NAME!r} has no attention dropout: set the model's attention_dropout=0")
    unsupported = [name for name in ("sliding_window", "softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:
        raise ValueError(f"attention {ATTENTION_NAME!r} does not do {', '.join(unsupported)} (this model uses it): "
                         "set sft.model.attn_implementation=sdpa or flash_attention_2")
    cu_seqlens, max_len = boundaries(position_ids)
    _announce(module, cu_seqlens, query)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    packed = [t[0].transpose(0, 1).contiguous() for t in (query, key, value)]  # (T, H, D); no copy from q/k/v_proj
    out = varlen_kernel(*packed, cu_seqlens, max_len, scale)
    return out.unsqueeze(0), None


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers in this process."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)


register()

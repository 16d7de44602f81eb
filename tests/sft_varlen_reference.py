"""A CPU stand-in for torch's varlen attention kernel, for tests of ``bridge_ray.platforms.attention``.

torch has no CPU kernel behind ``torch.nn.attention.varlen.varlen_attn`` (it raises
NotImplementedError for ``aten::_flash_attention_forward`` on CPU), so on this machine the
plugin's own logic (sample boundaries from position ids, head layout, GQA, scale, causal flag,
torch's changing signature) is exercised against this reference: sdpa on each sample in turn.
The real kernel is tested on a GPU (``tests/test_sft_fast_path.py``, marked ``gpu``).

Importing this module (``VERL_USE_EXTERNAL_MODULES=sft_varlen_reference`` with ``tests/`` on
``PYTHONPATH``) makes the plugin use the reference in that process, e.g. in verl's torchrun ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bridge_ray.platforms.attention as attention

# Keyword parameters of varlen_attn across torch versions (see attention.varlen_kernel).
SIGNATURES = {
    "2.10": frozenset({"is_causal", "return_aux"}),
    "2.11": frozenset({"return_aux", "scale", "window_size"}),
    "2.12": frozenset({"return_aux", "scale", "window_size", "enable_gqa"}),
}


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, window_size=(-1, -1),
                     scale=None, enable_gqa=False, return_aux=None):
    """``varlen_attn`` semantics with sdpa, one sample at a time: ``(T, H, D)`` in and out."""
    assert cu_seq_q.dtype == torch.int32 and int((cu_seq_q[1:] - cu_seq_q[:-1]).max()) == max_q
    causal = is_causal or tuple(window_size) == (-1, 0)
    outs = []
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                   enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(outs)


def use_reference(signature: str = "2.11") -> None:
    """Make the plugin call ``reference_varlen`` as if torch had that version's signature."""
    params = SIGNATURES[signature]

    def kernel(*args, **kwargs):
        assert set(kwargs) <= params, f"torch {signature} has no {set(kwargs) - params}"
        return reference_varlen(*args, **kwargs)

    attention._kernel = lambda: (kernel, params)


use_reference()

"""``PackedTextDataset``: fixed-length sequences cut from token shards, for verl's SFT trainer.

verl 0.9.1's ``SFTTrainer`` builds its dataset from ``data.custom_cls`` (``pkg://`` module + class
name) with ``(parquet_files, tokenizer, config, processor, max_samples)``; bridge-ray passes the
token shards (``bridge_ray.pretrain.tokens``) as ``data.train_files`` and the sequence length as
``data.max_length``. The shards are read as one concatenated token stream through ``numpy.memmap``
(opened lazily in each process, so data loader workers and resumes cost no copy); sequence ``i`` is
tokens ``[i·(L−1), i·(L−1)+L)``: consecutive sequences share one token, so every token except the
very first is a prediction target exactly once.

Each item is what verl's ``no_padding`` path expects: ``input_ids`` and ``position_ids`` of length
L and a ``loss_mask`` of ones except position 0. verl's SFT loss rolls the mask left by one to line
it up with the next-token log-probs, so the zero at position 0 is what keeps the last position of
each sequence from being scored against the first token of the next one in the packed batch.
All sequences have the same length: the batch is dense, attention is plain causal (sdpa picks its
flash kernel on GPUs), and no varlen kernel is needed.
"""
from __future__ import annotations

import bisect

import numpy as np
import torch
from torch.utils.data import Dataset


class PackedTextDataset(Dataset):
    """Fixed-length windows over the concatenation of token shards (see the module docstring)."""

    def __init__(self, parquet_files, tokenizer=None, config=None, processor=None, max_samples: int = -1):
        from bridge_ray.pretrain.tokens import read_shard

        files = [parquet_files] if isinstance(parquet_files, str) else list(parquet_files)
        self.shards = [read_shard(path) for path in files]
        self.seq_len = int(config["max_length"])
        self.starts = np.cumsum([0] + [s.num_tokens for s in self.shards]).tolist()
        stride = self.seq_len - 1
        count = max(0, (self.starts[-1] - 1) // stride)
        self.length = min(count, max_samples) if max_samples and max_samples > 0 else count
        self._arrays = None

    def __len__(self) -> int:
        return self.length

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.memmap(s.path, dtype=s.dtype, mode="r") for s in self.shards]
        return self._arrays

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the concatenated shards."""
        arrays, parts = self._open(), []
        shard = bisect.bisect_right(self.starts, start) - 1
        while start < stop:
            offset = start - self.starts[shard]
            take = min(stop, self.starts[shard + 1]) - start
            parts.append(arrays[shard][offset:offset + take])
            start += take
            shard += 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * (self.seq_len - 1)
        input_ids = torch.from_numpy(self.tokens(start, start + self.seq_len).astype(np.int64))
        loss_mask = torch.ones(self.seq_len, dtype=torch.long)
        loss_mask[0] = 0
        return {"input_ids": input_ids, "position_ids": torch.arange(self.seq_len), "loss_mask": loss_mask}

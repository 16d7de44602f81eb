"""What runs in each Ray Train worker for pretraining: SFT's worker loop, plus the device's name.

The training itself is ``bridge_ray.sft.worker.train_loop_per_worker`` unchanged (verl's
``SFTTrainer`` on the worker's process group, bridge-ray's per-step hook, the test kill switch);
only the dataset differs, and that is in the verl overrides. Rank 0 first writes which device it
trains on, so the driver can turn tokens/s into model-FLOPs utilisation against that device's peak.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

DEVICE_FILE = "device.json"


def device_name() -> str:
    """``torch.cuda.get_device_name()`` on a GPU worker, else ``"CPU"``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry: note the device (rank 0), then SFT's worker loop with the pretraining overrides."""
    loop_config = {**loop_config, "entered_at": time.time()}
    import ray.train

    from bridge_ray.sft.worker import train_loop_per_worker as sft_loop

    if ray.train.get_context().get_world_rank() == 0:
        Path(loop_config["output_dir"], DEVICE_FILE).write_text(json.dumps(
            {"device": device_name(), "world_size": ray.train.get_context().get_world_size(), "pid": os.getpid()}))
    sft_loop(loop_config)

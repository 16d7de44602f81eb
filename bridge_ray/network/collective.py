"""One rank of the doctor's all-reduce, run as a Ray actor (one per node on CPU, per GPU on GPU).

Like ``probe``, this module needs only the standard library, torch and ray on the node, so
the doctor can ship it by value. The environment under test (``GLOO_SOCKET_IFNAME``,
``NCCL_*``) arrives through the actor's runtime_env, the same way a job's does.
"""
from __future__ import annotations

import datetime
import glob
import os
import re
import shutil
import socket
import time
import traceback



class AllReduceRank:
    """A process that joins a torch.distributed group and times an all-reduce."""

    def endpoint(self) -> tuple[str, int]:
        """This node's Ray address and a free port (rank 0's becomes the rendezvous).

        torch is imported here, in the start-up stage, so the collective's timeout never pays for it.
        """
        import ray
        import torch.distributed  # noqa: F401

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def run(self, rank: int, world_size: int, master: str, backend: str, nbytes: int,
            iters: int, timeout_s: float) -> dict:
        """Join the group at ``tcp://master``, all-reduce ``nbytes`` ``iters`` times.

        Returns:
            ``{"ok": True, "seconds": per-iteration time, "transport": ...}`` or
            ``{"ok": False, "error": last lines of the traceback}``.
        """
        import torch
        import torch.distributed as dist

        if backend == "nccl":  # NCCL_DEBUG_FILE is this rank's own folder, set by the doctor
            os.makedirs(os.path.dirname(os.environ["NCCL_DEBUG_FILE"]), exist_ok=True)
        try:
            dist.init_process_group(
                backend, init_method=f"tcp://{master}", rank=rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
            device = "cuda" if backend == "nccl" else "cpu"
            tensor = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
            dist.all_reduce(tensor)  # warm-up: connections are made here
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(tensor)
            _sync(device)
            seconds = (time.perf_counter() - start) / iters
            dist.destroy_process_group()
            return {"ok": True, "seconds": seconds, "transport": _transport(backend)}
        except Exception:  # the driver reports any failure of the collective as a FAIL row
            return {"ok": False, "error": traceback.format_exc()[-800:]}


def bus_bandwidth_gbps(nbytes: int, seconds: float, world: int) -> float | None:
    """nccl-tests' all-reduce bus bandwidth in GB/s; None for one rank (nothing crosses a link)."""
    return None if world == 1 else nbytes / seconds / 1e9 * 2 * (world - 1) / world


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _transport(backend: str) -> str:
    if backend == "gloo":
        return f"gloo/tcp via {os.environ.get('GLOO_SOCKET_IFNAME') or 'the hostname address'}"
    return nccl_transport(_read_nccl_logs())


def _read_nccl_logs() -> str:
    folder = os.path.dirname(os.environ["NCCL_DEBUG_FILE"])
    text = "".join(open(p).read() for p in glob.glob(f"{folder}/*"))
    shutil.rmtree(folder, ignore_errors=True)
    return text


def nccl_transport(log: str) -> str:
    """Summarise an ``NCCL_DEBUG=INFO`` log: the network NCCL chose and the channel transports.

    Example:
        ``"network IB; channels P2P/CUMEM, NET/IB/0/GDRDMA"``
    """
    network = re.findall(r"Using network (\S+)", log)
    channels = sorted(set(re.findall(r"Channel \d+/\d+ : .* via (\S+)", log)))
    parts = [f"network {network[0]}"] if network else []
    if channels:
        parts.append("channels " + ", ".join(channels))
    return "; ".join(parts) or "single rank (no inter-rank transport)"

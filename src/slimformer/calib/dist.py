"""Data-parallel calibration under ``torchrun``: one shard of the calibration windows per rank.

Every statistic the methods read goes through :class:`~slimformer.calib.stats.Covariance`
(or :func:`all_reduce_sum`), which sums over ranks in float64, so every rank then solves the
*same* problem deterministically and applies the same transform; no method has distributed
code of its own. Rank 0 writes the output. Backend: ``nccl`` for CUDA, ``gloo`` on CPU.

    torchrun --nproc-per-node 4 -m slimformer.cli compress MODEL --method slicegpt ... --device cuda
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger("slimformer.calib.dist")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group ``torchrun`` set up (no-op for a single process).

    Returns the rank/world and the device this rank computes on (``cuda`` -> ``cuda:LOCAL_RANK``).
    """
    dev = torch.device(device)
    if not launched_distributed():
        return DistInfo(), dev
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(dist.get_rank(), dist.get_world_size()), dev


def current() -> DistInfo:
    """Rank and world size of the running process group (0 / 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def shard(ids: torch.Tensor) -> torch.Tensor:
    """This rank's calibration windows ``ids[rank::world]`` (``[N, T]`` -> ``[~N/world, T]``)."""
    info = current()
    if info.world == 1:
        return ids
    if ids.shape[0] < info.world:
        raise ValueError(f"{ids.shape[0]} calibration windows cannot be split over {info.world} ranks; "
                         "use at least one window per rank")
    return ids[info.rank::info.world]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place; float64 recommended); ``t`` itself without a group."""
    if current().world > 1:
        dist.all_reduce(t)
    return t


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

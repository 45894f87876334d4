"""The few torch.distributed calls prior training needs, and a single-process fallback.

`torchrun` sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (and LOCAL_RANK); without them training
runs in one process and every call here is a no-op. Shared weights are kept identical on all ranks
by a weighted average after every visit (each rank trains different videos in between).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.errors import UserError

log = logging.getLogger(__name__)


class RankLost(UserError):
    """Another training process stopped (crashed, killed, or lost its network)."""


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str, timeout_s: float) -> tuple[int, int]:
    """Joins the process group when launched by torchrun (NCCL for CUDA, gloo for CPU); returns
    (rank, world size)."""
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise UserError(f"could not join the other training processes ({backend}): {e}") from e
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _guard(fn, *args):
    try:
        return fn(*args)
    except RuntimeError as e:  # DistBackendError is one; a dead peer closes its connections
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        first = first.split(". This is typically")[0].split("] ", 1)[-1][:160]
        raise RankLost(f"another training process stopped ({first})") from e


def average_(tensors: list[torch.Tensor], weight: float) -> None:
    """In place: every rank ends with sum(w_r * t_r) / sum(w_r) (weight 0: this rank trained nothing
    since the last average). One all-reduce of one flat buffer; the result is the same bytes on all ranks."""
    if not dist.is_initialized() or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float() * weight for t in tensors]
                     + [torch.tensor([float(weight)], device=tensors[0].device)])
    _guard(dist.all_reduce, flat)
    total = float(flat[-1])
    if total <= 0:
        return
    flat = flat[:-1] / total
    k = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[k : k + n].view_as(t).to(t.dtype))
            k += n


def maximum_(t: torch.Tensor) -> None:
    if dist.is_initialized():
        _guard(dist.all_reduce, t.data, dist.ReduceOp.MAX)


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    if dist.is_initialized():
        for t in tensors:
            _guard(dist.broadcast, t.data, src)


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    _guard(dist.all_gather_object, out, obj)
    return out

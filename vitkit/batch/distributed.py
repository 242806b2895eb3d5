"""torch.distributed for batch jobs: `torchrun --nproc-per-node N -m vitkit embed ...` starts N processes;
each joins the group from torchrun's environment (gloo on CPU, nccl on GPU) and takes its share of chunks.
On several machines, run the same torchrun command on each with --nnodes, --node-rank and
--rdzv-endpoint, with the inputs and the output folder on storage that every node sees.

Try it:  torchrun --nproc-per-node 2 -m vitkit embed images/ --arch vit_tiny_patch16_224 -o emb.npy
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: str | None) -> torch.device | None:
    """Join the process group torchrun describes; returns this rank's device (None when not distributed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available() and (device or "auto") != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: list, dtype: torch.dtype) -> list:
    """Element-wise sums over ranks (every rank gets them); the values themselves when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    totals = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def sum_over_ranks(counts: list[int]) -> list[int]:
    """Element-wise sums of per-rank counts (every rank gets the totals)."""
    return _all_reduce_sum(counts, torch.int64)


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank float (every rank gets it); the value itself when not distributed."""
    return _all_reduce_sum([value], torch.float64)[0] / rank_and_world()[1]


def broadcast_from_rank0(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's values of `tensors` on every rank (in place; the tensors themselves when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)
    return tensors


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

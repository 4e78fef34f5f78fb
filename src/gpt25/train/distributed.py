"""Process-group setup, model wrapping (FSDP2 or DDP) and the trainer's collective helpers, for runs under torchrun.

The model knows nothing of parallelism; at world size 1 every helper is a no-op, so the loop runs unchanged in one
process. Manual: docs/training.md ("Parallelism and precision")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gpt25.device import is_fsdp, resolve_device
from gpt25.model import ModelConfig, TransformerLM


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedContext:
    """Join the process group torchrun's environment describes (NCCL on cuda, gloo on cpu); none at WORLD_SIZE 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        on_gpu = resolved.type == "cuda"
        if on_gpu:
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if on_gpu else "gloo", device_id=resolved if on_gpu else None)
    return DistributedContext(rank=rank, world_size=world_size, device=resolved)


def build_model(model_config: ModelConfig, context: DistributedContext, parallel: str,
                dtype: torch.dtype) -> torch.nn.Module:
    """The model ready to train: built, initialised, placed and wrapped as `parallel` says ("none" in one process)."""
    # GPUs: built on the meta device, sharded, then materialised, so no rank ever holds the full fp32 model. CPU: built
    # for real from the same seed on every rank, which keeps the weights identical to a single-process run.
    on_meta = parallel == "fsdp" and context.device.type == "cuda"
    model = TransformerLM(model_config, device=torch.device("meta") if on_meta else context.device)
    model = parallelize(model, context, parallel, dtype)
    if on_meta:
        model.to_empty(device=context.device)
        model.init_weights()
    return model


def parallelize(model: TransformerLM, context: DistributedContext, parallel: str,
                dtype: torch.dtype) -> torch.nn.Module:
    """`model` (on the context's device, or meta) sharded in place with FSDP2, wrapped in DDP, or itself ("none")."""
    if parallel == "none":
        return model
    if parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[context.device] if context.device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # here: pulls in DTensor, takes seconds

    # Each TransformerBlock is one all-gather unit, so only one block's full weights exist at a time; the root
    # holds the rest. Gradients are reduced in float32: summed in bfloat16 across ranks, small ones are lost.
    mixed_precision = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=mixed_precision)
    fully_shard(model, mp_policy=mixed_precision)
    return model


def unwrap(model: torch.nn.Module) -> TransformerLM:
    """The TransformerLM inside a DDP wrapper (FSDP2 modifies the model in place, so it is itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on inner accumulation micro-steps."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.is_distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= context.world_size
    return value


def all_finite(tensors: Iterable[torch.Tensor], context: DistributedContext) -> bool:
    """Whether every element of every tensor is finite on every rank (FSDP: each rank checks its shards)."""
    local = [tensor.to_local() if hasattr(tensor, "to_local") else tensor for tensor in tensors]
    finite = torch.stack([tensor.isfinite().all() for tensor in local]).all().float()
    return all_reduce_mean(finite, context).item() == 1.0


def gather_objects(obj: object, context: DistributedContext) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not context.is_distributed:
        return [obj]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()

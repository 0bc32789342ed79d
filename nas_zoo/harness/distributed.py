"""Several processes: the ranks that ``torchrun`` starts, one per device, on one machine or several.

torchrun (PyTorch's elastic launcher) starts the processes and tells each its place in environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). ``start`` joins them into one process
group, NCCL between GPUs and gloo between CPUs. In a process started without torchrun every helper here is a
no-op (rank 0 of 1), so the loops call them unconditionally.

The rules the loops follow with these helpers: rank 0 alone reads and writes the run's folder (``on_main``;
the others receive what it read and wait for what it writes, so the folder need not be shared between
machines); gradients are averaged over the ranks; sums that a metric is made of are added up over them.
"""
import atexit
import datetime
import json
import os
import time
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


class Stopped(RuntimeError):
    """Raised on the other ranks when rank 0 failed at something they waited for; rank 0 reports the cause."""


def launched() -> bool:
    """Whether this process was started by torchrun (or any launcher that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device) -> torch.device:
    """This rank's device: under torchrun a CUDA run takes GPU ``LOCAL_RANK`` (one process per GPU), a CPU run
    stays on the CPU; joins the process group."""
    if not launched():
        return device
    if device.type == "cuda":
        if device.index not in (None, local_rank()):
            raise ValueError(f"--device {device}: under torchrun each process takes the GPU of its local rank; "
                             "pass --device cuda")
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank()} has no GPU: {torch.cuda.device_count()} are visible; "
                             "start at most that many processes per machine (--nproc-per-node)")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    _joined()
    return device


def _joined() -> bool:
    """Whether collectives are needed (several ranks); joins the process group on first use, so that any helper
    can come first: gloo for CPU tensors, and NCCL for GPU tensors where there are GPUs."""
    if world_size() == 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(minutes=30))
        atexit.register(dist.destroy_process_group)
    return True


def barrier() -> None:
    if _joined():
        dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (pickled; tensors inside travel too)."""
    if not _joined():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not _joined():
        return [value]
    values: List[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def on_main(task: Callable[[], T]) -> T:
    """Run ``task`` on rank 0 while the others wait; every rank returns its result. When it fails, rank 0
    raises its error and the others raise ``Stopped`` naming it, so no rank is left waiting."""
    outcome = None
    if is_main():
        try:
            outcome = ("done", task())
        except BaseException as e:  # noqa: BLE001 - told to the others, then raised here as it was
            broadcast_object(("failed", f"{type(e).__name__}: {e}"))
            raise
    kind, value = broadcast_object(outcome)
    if kind == "failed":
        raise Stopped(f"rank 0 stopped ({value})")
    return value


def _flat_reduce(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum over ranks of ``tensors``, flattened into one vector: one collective, not one per tensor."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return flat


def average(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The mean over ranks of each tensor (new tensors). Each rank's gradient is the mean over its share of the
    batch, and every share is the same size, so their mean is the gradient of the whole (global) batch."""
    if not _joined():
        return list(tensors)
    flat = _flat_reduce(tensors) / world_size()
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average ``p.grad`` over the ranks, in place. A parameter that no rank used keeps ``grad`` None (so the
    optimizer leaves it alone, as in one process); one used on some ranks only counts zero on the others."""
    if not _joined():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    used = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = _flat_reduce([*grads, used])
    total, used = flat[:-len(params)] / world_size(), flat[-len(params):]
    for p, g, count in zip(params, total.split([p.numel() for p in params]), used.tolist()):
        p.grad = g.view_as(p).clone() if count else None


def sum_values(values: Sequence[float], device: torch.device) -> List[float]:
    """The sums over ranks of ``values`` (a metric's parts: loss sum, correct, count), in float64."""
    if not _joined():
        return list(values)
    flat = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return flat.tolist()


def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every rank, in place (weights at the start of a stage, BN statistics)."""
    if not _joined():
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.broadcast(flat, src=0)
    with torch.no_grad():
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))


def lost(error: BaseException) -> Optional[str]:
    """Why the process group broke, when ``error`` says that another rank is gone (it died, or torchrun stopped
    it): c10d's errors, or gloo's, which are plain RuntimeErrors naming its transport; else None."""
    text = str(error)
    if not (launched() and (isinstance(error, dist.DistError) or "gloo" in text and "peer" in text)):
        return None
    return text.split("] ", 1)[-1].split(". ", 1)[0]  # "Read error [HOST]:PORT: Connection reset by peer"


def report(message: str) -> None:
    """Leave ``message`` where torchrun's agent reads why a process failed (``TORCHELASTIC_ERROR_FILE``): its
    summary of the failure shows it beside the rank, instead of a pointer to its documentation."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)


def one_process(what: str) -> None:
    """Refuse to run ``what`` under torchrun, which it does not support."""
    if world_size() > 1:
        raise ValueError(f"{what} runs in one process; start it without torchrun")


def split_batch(batch_size: int, flag: str = "--batch-size") -> int:
    """Each rank's share of the global ``batch_size``; one that the ranks cannot share equally is refused."""
    if batch_size % world_size():
        raise ValueError(f"{flag} {batch_size} cannot be split equally over {world_size()} processes; pass a "
                         f"multiple of {world_size()} (it is the global batch, as in one process)")
    return batch_size // world_size()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: every rank's output depends on every rank's input, so the gradient
    of an input is the sum of the output gradients over the ranks (``torch.distributed.nn``'s, without its
    deprecation)."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _SumOverRanks.apply(grad)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the whole (global) batch on the CPU, where torch's ``SyncBatchNorm`` has no kernels (and
    ``DistributedDataParallel`` refuses it): the statistics come from two all-reduces (the mean, then the squared
    deviations from it), which autograd differentiates through every rank. With the same data it computes what
    one process computes on the whole batch, up to the order of summation."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _joined():
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = _SumOverRanks.apply(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)).detach()
        mean = _SumOverRanks.apply(x.sum(dims)) / n
        centred = x - mean.reshape(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n
        if self.track_running_stats:  # as F.batch_norm: the unbiased variance goes into the running estimate
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1), momentum)
        y = centred * (var + self.eps).rsqrt().reshape(shape)
        return y if self.weight is None else y * self.weight.reshape(shape) + self.bias.reshape(shape)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch norm normalising the whole (global) batch: torch's ``SyncBatchNorm`` on GPUs,
    ``CpuSyncBatchNorm`` on the CPU. A no-op in one process, where every batch norm sees the whole batch."""
    if world_size() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.__class__ = CpuSyncBatchNorm  # the same parameters and buffers: only forward differs
    return model

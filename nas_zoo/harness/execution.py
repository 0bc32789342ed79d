"""How a training step runs on its device: mixed precision, channels-last memory and compiled modules.

None of these is in the papers' scripts (fp32, NCHW, eager); each changes speed, and the low precisions the
rounding. ``precision`` ``auto`` is bf16 on a GPU that computes it natively (compute capability 8.0 on: A100,
H100, RTX 30xx on), fp16 with a loss scaler (``GradScaler``) on older GPUs, and fp32 on the CPU; ``fp32``,
``bf16`` and ``fp16`` ask for one. bf16 has fp32's exponent range, so it needs no scaler. Channels-last is
the default on GPUs; on the CPU it is used only on request and only where torch computes it correctly
(``channels_last_safe``).

``compile`` compiles the parts of the network between the cells' drop paths (the stem, every cell's
preprocessing and operations, the heads), each by ``nn.Module.compile``. A graph around a whole network would
hold the drop-path probability as a constant, and the DARTS recipe ramps it every epoch: torch.compile would
recompile every epoch. The parts never see it and compile once (DARTS_V2 at C=8, 8 cells: 22 graphs for
training, a partial last batch and evaluation, then none in later epochs; measured with the eager backend);
the weights keep their names, so checkpoints are the same as eager runs'.
"""
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from ..models.cells import Cell, FixedReductionCell
from ..models.ops import channels_last_safe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32, no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return DTYPES[precision]


def parts_to_compile(module: nn.Module) -> Iterator[nn.Module]:
    """The largest submodules of ``module`` that hold no cell (cells take the drop-path probability, which
    changes every epoch), but for pooling and identity alone (no graph to gain)."""
    if any(isinstance(m, (Cell, FixedReductionCell)) for m in module.modules()):
        for child in module.children():
            yield from parts_to_compile(child)
    elif list(module.parameters()) or list(module.buffers()):
        yield module


def compile_parts(module: nn.Module, backend: str = "inductor") -> int:
    """Compile ``parts_to_compile(module)`` in place; returns how many.

    Every operation of one kind runs the same ``forward`` code, and torch.compile keeps 8 graphs per code by
    default (then runs it eagerly, with a warning): a network's many widths and strides, training and
    evaluation, and a partial last batch need more (GDAS_V1 at C=8, 8 cells needs 32 graphs in all, 8 of one
    code already in its first epoch), so the limit is raised to 4 per compiled part."""
    parts = list(parts_to_compile(module))
    for part in parts:
        part.compile(backend=backend)
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, 4 * len(parts))
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4 * len(parts))
    return len(parts)


class Execution:
    """The settings of one run's training steps on ``device``, and its loss scaler (state for checkpoints)."""

    def __init__(self, device: torch.device, precision: str = "auto", channels_last: Optional[bool] = None,
                 compile: bool = False):
        self.device, self.dtype, self.compile = device, autocast_dtype(precision, device), compile
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    @property
    def precision(self) -> str:
        return next(name for name, dtype in DTYPES.items() if dtype == self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, channels-last (where safe) and compiled as asked; returns it."""
        model.to(self.device)
        if self.channels_last and self.device.type == "cpu" and not channels_last_safe(model):
            self.channels_last = False  # narrow reductions: torch's CPU kernel would corrupt memory
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            compile_parts(model)
        return model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def train_step(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   optimizer: torch.optim.Optimizer, criterion: nn.Module, auxiliary_weight: float,
                   grad_clip: float, forward: Optional[Callable] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of DARTS's ``train.py``: the loss with the auxiliary head's (weighted), backward, gradient
        clipping, SGD; scaled and unscaled around the clipping in fp16. ``images`` and ``targets`` are on the
        device; ``forward`` computes (logits, auxiliary logits): ``model.forward_train``, or under torchrun its
        ``DistributedDataParallel`` replica (``train.replicate``). Returns the loss and the logits."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            logits, auxiliary = (forward or model.forward_train)(images)
            loss = criterion(logits, targets)
            if auxiliary is not None:
                loss = loss + auxiliary_weight * criterion(auxiliary, targets)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()

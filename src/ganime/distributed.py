"""Distributed data parallel training under ``torchrun``.

    torchrun --standalone --nproc_per_node=N -m ganime train pix2pix --data CACHE --out RUN ...

:func:`from_env` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins
the process group (NCCL on CUDA, Gloo on CPU) and returns a :class:`Distributed` object, the ``dist=``
hook of :class:`ganime.train.Trainer`:

- ``wrap(method)`` converts every BatchNorm of the method's networks to a synchronised one and wraps
  each network in :class:`DDP` (a DistributedDataParallel whose ``state_dict`` is the plain module's,
  so checkpoints written under DDP load in single-process code and in ``colorize`` unchanged);
- ``any_flag(bool)`` is true on every process when it is true on any (non-finite losses stop all);
- ``agree_stop(bool, bool)`` turns each process's own Ctrl-C flag and time limit into one decision shared by all (below);
- ``close()`` waits for every process and leaves the process group.

Ctrl-C: in a terminal SIGINT reaches torchrun and every worker; torchrun then forwards SIGINT to
the workers again and SIGKILLs them 30 s later (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``). Each worker's
handler only sets its own flag (a second signal does not abort under DDP: it is torchrun's echo),
and after every step every process contributes its flag to a small all-reduce (MAX) on a Gloo
group of CPU tensors, started asynchronously and read one step later, so it costs no GPU
synchronisation and no wait. All processes read the same vote at the same step, so they save and
stop at the same step (rank 0 writes ``last.pt``) and leave cleanly, whichever of them got the
signal (a terminal's Ctrl-C, or ``kill -INT`` of one rank; SIGTERM, a scheduler's warning, likewise).

Each process trains on its own share of each epoch's seeded permutation (``PairLoader`` takes
``rank``/``world_size``), with ``--batch-size`` images per process; only rank 0 logs, writes samples
and checkpoints; on ``--resume`` every process loads ``last.pt``.

Synchronised BatchNorm: with plain BatchNorm each process would normalise with the statistics of its
own B images, so N processes x B would not train like one process with N*B images (the paper's batch
of 32 is a BatchNorm batch). On CUDA we use :class:`torch.nn.SyncBatchNorm`. That class refuses CPU
tensors (torch 2.13 raises "SyncBatchNorm expected input tensor to be on GPU"), so under Gloo on CPU
we convert to :class:`CPUSyncBatchNorm` below: the same algorithm (global mean/variance from
all-reduced sums, gradients through the global statistics) in plain all-reduces. With either, one
step of N processes x B equals one single-process step of N*B (tests/test_distributed.py).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def launched_by_torchrun() -> bool:
    """True when the torchrun environment asks for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def from_env(device: str = "auto", timeout_s: float = 1800.0) -> "Distributed | None":
    """Join the process group described by torchrun's environment; ``None`` for a single process."""
    if not launched_by_torchrun():
        return None
    from ganime.errors import InputError

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: lower --nproc_per_node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        kw = {"device_id": dev} if backend == "nccl" else {}
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    return Distributed(rank, world, dev)


class Distributed:
    """The ``dist=`` hook of the Trainer, over an initialised default process group."""

    def __init__(self, rank: int, world_size: int, device: torch.device, sync_bn: bool = True):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.sync_bn = sync_bn
        self._vote_group = None  # a Gloo group for the stop votes (created collectively on first use)
        self._vote = None  # (work, tensor) of the vote in flight

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, method) -> None:
        """Synchronise BatchNorm and wrap each trainable network of ``method`` in :class:`DDP`, in place."""
        for key, model in list(method.models.items()):
            if isinstance(model, DistributedDataParallel):
                continue
            if not any(p.requires_grad for p in model.parameters()):
                continue  # frozen helpers (e.g. a feature extractor) need no gradient sync
            if self.sync_bn:
                model = convert_sync_batchnorm(model, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            method.models[key] = DDP(model, device_ids=ids)

    def any_flag(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def agree_stop(self, requested: bool, out_of_time: bool = False) -> int:
        """One call per training step on every process: the shared stop decision.

        Starts this step's vote (MAX of every process's 2 for ``requested`` (Ctrl-C), 1 for
        ``out_of_time`` (--time-limit), else 0) without waiting for it and returns the result of the
        previous step's vote, so every process gets the same answer at the same step: 0 (go on), 1 (time
        limit), 2 (interrupted). The first call returns 0.
        """
        if self._vote_group is None:
            backend = tdist.get_backend()
            self._vote_group = tdist.group.WORLD if backend == "gloo" else tdist.new_group(backend="gloo")
        previous = self._finish_vote()
        t = torch.tensor([2.0 if requested else 1.0 if out_of_time else 0.0])
        self._vote = (tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=self._vote_group, async_op=True), t)
        return previous

    def _finish_vote(self) -> int:
        if self._vote is None:
            return 0
        work, t = self._vote
        self._vote = None
        work.wait()
        return int(t.item())

    def barrier(self) -> None:
        if self.device.type == "cuda":
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()

    def close(self, wait: bool = True) -> None:
        """Wait for every process (unless ``wait`` is false, after an error), then leave the process group."""
        if tdist.is_initialized():
            try:
                if wait:
                    self._finish_vote()  # every process started the same votes: the last one completes
                    self.barrier()
            finally:
                tdist.destroy_process_group()


class DDP(DistributedDataParallel):
    """DistributedDataParallel that behaves like its module where the wrapper would get in the way.

    - ``state_dict``/``load_state_dict`` are the module's (no ``module.`` prefix), so a method's
      ``state()`` and checkpoints are the same with and without DDP;
    - a forward pass that cannot produce parameter gradients (``no_grad``, eval mode, or parameters
      frozen as Pix2Pix freezes D during the generator step) goes straight to the module: DDP would
      otherwise expect a gradient reduction for it that never comes ("Expected to have finished
      reduction in the prior iteration"), and it would broadcast buffers, a collective that deadlocks
      when only rank 0 runs it (sample grids, evaluation hooks).
    """

    def forward(self, *args, **kwargs):
        if not (torch.is_grad_enabled() and self.training and self._any_trainable()):
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)

    def _any_trainable(self) -> bool:
        for p in self.module.parameters():
            if p.requires_grad:
                return True
        return False

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> torch's SyncBatchNorm on CUDA, -> :class:`CPUSyncBatchNorm` elsewhere.

    Parameters and running statistics are shared with the old layers (optimizers built on the model's
    parameters stay valid).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the union of every process's batch, with plain all-reduces (works under Gloo).

    The state dict is a BatchNorm2d's, so checkpoints are unchanged. Outside training, or without an
    initialised process group, it is an ordinary BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return _SyncBN.apply(x, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
                             self.running_var if self.track_running_stats else None, self.eps, momentum or 0.0)


class _SyncBN(torch.autograd.Function):
    """Forward and backward of synchronised BatchNorm (the algorithm of torch's CUDA SyncBatchNorm).

    Forward: global mean and biased variance from all-reduced (sum x, sum x^2, count) per channel;
    running variance gets the unbiased estimate. Backward: sum dy and sum dy*xhat are all-reduced for
    the input gradient; weight and bias gradients stay local (DDP averages them like any other).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        c = x.shape[1]
        xd = x.double()
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // c
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([float(count)])])
        tdist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * n / (n - 1).clamp_min(1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = (var + eps).rsqrt().to(x.dtype).view(shape)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = n
        y = xhat
        if weight is not None:
            y = xhat * weight.view(shape) + bias.view(shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        xhat, invstd, weight = ctx.saved_tensors
        c = dy.shape[1]
        dims = [d for d in range(dy.dim()) if d != 1]
        shape = [1, c] + [1] * (dy.dim() - 2)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_w = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_b = sum_dy if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat]).double()
            tdist.all_reduce(both)
            mean_dy = (both[:c] / ctx.n).to(dy.dtype).view(shape)
            mean_dy_xhat = (both[c:] / ctx.n).to(dy.dtype).view(shape)
            scale = invstd if weight is None else invstd * weight.view(shape)
            grad_x = (dy - mean_dy - xhat * mean_dy_xhat) * scale
        return grad_x, grad_w, grad_b, None, None, None, None

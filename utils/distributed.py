"""Multi-process data-parallel training with ``torchrun`` (``--distributed ddp``).

The design keeps methods unaware of distribution:

* every rank holds a full replica; the train loader of each rank sees a disjoint shard;
* gradients are averaged across ranks by a pre-step hook on the method's own optimizer
  (:func:`average_gradients_before_step`), so any ``observe`` that calls ``self.opt.step()``
  is data-parallel without changes;
* statistics that are sums over data (Fisher, example counts, class features) are reduced
  with :func:`all_reduce_sum` / :func:`all_gather_cat` by the methods that compute them;
* evaluation shards the test set without padding and sums correct/total counts, so the
  metrics equal a single-process evaluation;
* only rank 0 writes results and checkpoints.

Every collective has a timeout (``--dist_timeout``): a rank that dies makes the others fail
instead of hanging, and ``torchrun`` then stops the whole job.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterator, Optional, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from utils import accelerator
from utils.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(timeout_seconds: float, device_name: Optional[str] = None) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; returns this rank's device."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"--distributed ddp must be launched with torchrun (missing {', '.join(missing)}), e.g. "
                        f"torchrun --nproc_per_node 2 main.py ... --distributed ddp")
    local_rank = int(os.environ["LOCAL_RANK"])
    kind = torch.device(device_name).type if device_name else (accelerator.current_type() or "cpu")
    device, count = torch.device("cpu"), accelerator.device_count(kind)
    if count and local_rank >= count:
        raise UserError(f"local rank {local_rank} has no {kind} device (this machine has {count}); start at most "
                        f"{count} processes per node (torchrun --nproc_per_node {count})")
    if count:
        device = torch.device(kind, local_rank)  # one device per local rank
        accelerator.set_current(device)
    if not is_distributed():
        dist.init_process_group(backend=accelerator.process_group_backend(device),
                                timeout=datetime.timedelta(seconds=timeout_seconds))
    return device


def check_launch(mode: str) -> None:
    """Refuse a multi-process launch (``torchrun``: ``WORLD_SIZE`` > 1) without ``--distributed ddp``, where
    every process would train a complete copy of the run and all of them would write the same files."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if mode != "ddp" and world > 1:
        raise UserError(f"launched as {world} processes (WORLD_SIZE={world}, e.g. by torchrun) without "
                        f"--distributed ddp; add --distributed ddp, or run a single process (python main.py ...)")


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (``flag`` itself in a single process)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=collective_device())).item() > 0)


def collective_device() -> torch.device:
    """Where a tensor must live for a collective of this process group (the CPU under gloo, else this rank's
    device)."""
    if not is_distributed() or dist.get_backend() == "gloo":
        return torch.device("cpu")
    return accelerator.default_device()


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` over the ranks (``value`` itself in a single process): a choice every rank must agree
    on, e.g. a batch size sized from each rank's free memory."""
    if not is_distributed():
        return int(value)
    box = torch.tensor([int(value)], dtype=torch.int64, device=collective_device())
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return int(box.item())


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (first dimensions may differ) from every rank, in rank order."""
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def gather_batches(parts: list[torch.Tensor]) -> torch.Tensor:
    """Every rank's per-batch ``parts`` in the order of the global batches: batch 0 of rank 0, of rank 1, ..., then
    batch 1 ... (a rank's share of a global batch is consecutive rows of it, :class:`ShardedBatchSampler`), i.e.
    the rows of a single-process pass; ``torch.cat(parts)`` in a single process. Every rank holds as many batches
    (the sharded sampler gives each rank a share of every batch)."""
    local = torch.cat(parts)
    if not is_distributed():
        return local
    counts = all_gather_cat(torch.tensor([len(p) for p in parts], device=local.device)).view(world_size(), -1)
    rows = all_gather_cat(local)
    starts = torch.cat([counts.new_zeros(1), counts.sum(1).cumsum(0)[:-1]])  # each rank's first row in ``rows``
    offsets = torch.cat([counts.new_zeros(world_size(), 1), counts.cumsum(1)[:, :-1]], 1) + starts[:, None]
    order = [torch.arange(int(o), int(o) + int(c)) for o, c in zip(offsets.t().flatten().tolist(),
                                                                     counts.t().flatten().tolist())]
    return rows[torch.cat(order).to(rows.device)] if order else rows


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op in a single process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer.step()`` first average the gradients of its parameters over ranks.

    Gradients are flattened into one buffer per dtype/device, so each step costs one all-reduce.
    """
    if optimizer is None or not is_distributed() or getattr(optimizer, "_cl_grad_sync", False):
        return

    def hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for grad in grads:
            buckets.setdefault((grad.dtype, grad.device), []).append(grad)
        for bucket in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world_size()
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    optimizer.register_step_pre_hook(hook)
    optimizer._cl_grad_sync = True


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of a seeded permutation, each split evenly across the ranks.

    Batch ``i`` of the epoch is ``order[i*B:(i+1)*B]`` for every world size; rank ``r`` gets
    the ``r``-th of ``w`` near-equal slices. Averaging the ranks' gradients therefore gives
    the gradient of the same global batch as a single-process run (exactly when ``w`` divides
    the batch size). A new order is drawn at each pass.

    The final incomplete batch: with ``drop_last`` it is dropped (Mammoth's ``--drop_last``);
    otherwise (the default) it is kept, except that one too small to give every rank at least
    two samples (a single sample in one process) is merged into the previous batch, so that
    BatchNorm in training mode never sees a batch of one. If it is the only batch of the pass
    it is kept when every rank gets a sample and dropped otherwise (every rank must take part
    in every step); a pass of a single sample in one process serves it twice in one batch.

    ``sample_seeds``: items are ``(index, seed)`` pairs, the seed a function of (``seed``, pass, index)
    only, for datasets that seed each sample's augmentation (:class:`datasets.utils.sources.TaskDataset`).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 sample_seeds: bool = False, sized: Optional[Sized] = None):
        self._n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.sample_seeds = sample_seeds
        self.sized = sized
        self.passes = 0

    @property
    def n(self) -> int:
        """Samples per pass: the current length of ``sized`` when given (a model may replace a task's samples)."""
        return len(self.sized) if self.sized is not None else self._n

    def _slices(self, order: list[int]) -> Iterator[list[int]]:
        for batch, lo, hi in self._cuts(order):
            yield batch[lo:hi]

    def layout(self) -> list[tuple[int, int]]:
        """(global batch size, this rank's first row in it) of every batch of a pass, in order (the same for every
        pass): what device-side augmentation needs to draw per global image index."""
        return [(len(batch), lo) for batch, lo, _ in self._cuts(list(range(self.n)))]

    def _cuts(self, order: list[int]) -> Iterator[tuple[list[int], int, int]]:
        """Each global batch of ``order`` and this rank's rows ``[lo, hi)`` of it."""
        w, r = world_size(), rank()
        batches = [order[start:start + self.batch_size] for start in range(0, self.n, self.batch_size)]
        if batches and len(batches[-1]) < self.batch_size:
            if self.drop_last:
                batches.pop()
            elif len(batches[-1]) < 2 * w and len(batches) > 1:
                last = batches.pop()
                batches[-1] = batches[-1] + last
            elif len(batches[-1]) < w:
                batches.pop()
            elif self.n == 1 and w == 1:  # a one-sample task: served twice (same mean loss and gradient)
                batches[-1] = batches[-1] * 2
        for batch in batches:
            size, extra = divmod(len(batch), w)
            lo = r * size + min(r, extra)
            yield batch, lo, lo + size + (1 if r < extra else 0)

    def _batches(self, order: list[int], pass_index: int) -> Iterator[list]:
        from utils.seeding import derive_seed  # (utils.seeding imports this module)
        for mine in self._slices(order):
            yield [(i, derive_seed(self.seed, pass_index, f"sample{i}")) for i in mine] if self.sample_seeds else mine

    def __iter__(self) -> Iterator[list]:
        # a generator: the pass counts only once iteration starts (a multi-worker DataLoader makes and
        # discards one iterator before the one it uses, which must not skip a pass)
        pass_index = self.passes
        self.passes += 1
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + pass_index)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        yield from self._batches(order, pass_index)

    def __len__(self) -> int:
        return sum(1 for _ in self._slices(list(range(self.n))))


class ShardSampler(Sampler[int]):
    """Evaluation shards: rank ``r`` of ``w`` takes items ``r, r+w, ...`` in order, without padding.

    Unlike ``DistributedSampler`` no sample is repeated, so summed evaluation counts equal a
    single-process evaluation exactly.
    """

    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(rank(), self.n, world_size()))

    def __len__(self) -> int:
        return len(range(rank(), self.n, world_size()))


# Mammoth's data-parallel helpers, for model files written for Mammoth (see mammoth_compat.dp)
from mammoth_compat.dp import CustomDP, make_dp  # noqa: E402,F401

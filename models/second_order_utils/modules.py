"""Per-task weight modules (LoRA, full, (IA)^3) injected into timm's own layers by wrapping.

Each adapted layer keeps its pre-trained weight W0 untouched and holds one small module per
task. A *composition* decides what the layer computes:

* a fixed, detached dense term ``fixed`` (e.g. ``sum_s w_s dW_s``) folded into the weight once
  (merge for evaluation: the forward is then a single matmul with ``W0 + fixed``), and
* optionally one trainable task module ``train_task`` scaled by ``train_coef``.

Because W0 itself is never modified, switching compositions is exact (no merge/unmerge drift).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TUNING_STYLES = ("lora", "full", "ia3")
VIT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class TaskDelta(nn.Module):
    """One task's module on one layer: a parametrisation of the dense update dW (d_out x d_in)."""

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        """The dense dW of this module (differentiable in the module's parameters)."""
        raise NotImplementedError

    def grads_from_dense(self, grad_dw: torch.Tensor, w0: torch.Tensor) -> list[torch.Tensor]:
        """Chain rule: the gradient of each parameter (``self.parameters()`` order) given dR/d(dW)."""
        raise NotImplementedError


class LoraDelta(TaskDelta):
    """dW = B A (no alpha/r scaling); A Kaiming-uniform with fan-in r*d_in, B = 0."""

    def __init__(self, d_out: int, d_in: int, rank: int):
        super().__init__()
        bound = 1.0 / math.sqrt(rank * d_in)  # kaiming_uniform(a=sqrt(5)) on a (1, r, d_in) tensor
        self.A = nn.Parameter(torch.empty(rank, d_in).uniform_(-bound, bound))
        self.B = nn.Parameter(torch.zeros(d_out, rank))

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        return self.B @ self.A

    def grads_from_dense(self, grad_dw: torch.Tensor, w0: torch.Tensor) -> list[torch.Tensor]:
        return [self.B.detach().t() @ grad_dw, grad_dw @ self.A.detach().t()]


class FullDelta(TaskDelta):
    """A dense dW, initialised to zero."""

    def __init__(self, d_out: int, d_in: int):
        super().__init__()
        self.D = nn.Parameter(torch.zeros(d_out, d_in))

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        return self.D

    def grads_from_dense(self, grad_dw: torch.Tensor, w0: torch.Tensor) -> list[torch.Tensor]:
        return [grad_dw.clone()]  # fresh storage: the parameter is only changed by an explicit step


class IA3Delta(TaskDelta):
    """Output-row scaling: dW = diag(l - 1) W0, l initialised to one."""

    def __init__(self, d_out: int):
        super().__init__()
        self.l = nn.Parameter(torch.ones(d_out))

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        return (self.l - 1.0)[:, None] * w0

    def grads_from_dense(self, grad_dw: torch.Tensor, w0: torch.Tensor) -> list[torch.Tensor]:
        return [(grad_dw * w0).sum(dim=1)]


def make_delta(style: str, d_out: int, d_in: int, rank: int) -> TaskDelta:
    if style == "lora":
        return LoraDelta(d_out, d_in, rank)
    if style == "full":
        return FullDelta(d_out, d_in)
    if style == "ia3":
        return IA3Delta(d_out)
    raise ValueError(f"unknown tuning style {style!r}; choose from {', '.join(TUNING_STYLES)}")


def is_pointwise_conv(module: nn.Module) -> bool:
    """A 1x1, ungrouped, unpadded convolution (a per-pixel linear map)."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), 0) and module.dilation == (1, 1))


class AdaptedLayer(nn.Module):
    """A frozen ``nn.Linear`` or pointwise ``nn.Conv2d`` plus a growing list of per-task modules."""

    def __init__(self, base: nn.Module, style: str, rank: int):
        super().__init__()
        if not (isinstance(base, nn.Linear) or is_pointwise_conv(base)):
            raise TypeError(f"cannot adapt {type(base).__name__}: only Linear and 1x1 Conv2d")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.style, self.rank = style, rank
        self.is_conv = isinstance(base, nn.Conv2d)
        self.d_out, self.d_in = base.weight.shape[0], base.weight.shape[1]
        self.deltas = nn.ModuleList()
        self._weight: Optional[torch.Tensor] = None  # W0 + fixed, as a (d_out, d_in) matrix; None = W0
        self.train_task: Optional[int] = None
        self.train_coef = 1.0
        # the training composition as tensors: (weight, coefficient (0-d), the task module's parameters...); the
        # forward reads only these, so a compiled forward is guarded on their shapes, not on the task index
        self._active: Optional[tuple[torch.Tensor, ...]] = None

    @property
    def w0(self) -> torch.Tensor:
        """The frozen pre-trained weight as a (d_out, d_in) matrix (a view, never modified)."""
        return self.base.weight.view(self.d_out, self.d_in)

    def add_task(self) -> TaskDelta:
        delta = make_delta(self.style, self.d_out, self.d_in, self.rank).to(self.base.weight.device)
        self.deltas.append(delta)
        return delta

    def dense_delta(self, task: int) -> torch.Tensor:
        """Detached dense dW of one task."""
        with torch.no_grad():
            return self.deltas[task].delta(self.w0).detach()

    def set_composition(self, fixed: Optional[torch.Tensor], train_task: Optional[int] = None,
                        train_coef: float = 1.0) -> None:
        """Compute with ``W0 + fixed`` (detached) plus ``train_coef * dW_{train_task}`` (trainable)."""
        self._weight = None if fixed is None else (self.w0 + fixed).detach()
        self.train_task, self.train_coef = train_task, float(train_coef)
        self._activate()

    def _activate(self) -> None:
        """Build ``_active`` from ``_weight``, ``train_task`` and ``train_coef`` (None when nothing trains)."""
        self._active = None
        if self.train_task is not None:
            coef = torch.tensor(self.train_coef, dtype=torch.float32, device=self.base.weight.device)
            weight = self.w0 if self._weight is None else self._weight
            self._active = (weight, coef, *self.deltas[self.train_task].parameters())

    def _apply(self, fn, recurse=True):  # keep the merged weight on the module's device/dtype
        out = super()._apply(fn, recurse)
        if self._weight is not None:
            self._weight = fn(self._weight)
        self._activate()
        return out

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.is_conv:
            return F.conv2d(x, weight.view(self.d_out, self.d_in, 1, 1), bias, self.base.stride)
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._active is None:
            return self._op(x, self.w0 if self._weight is None else self._weight, self.base.bias)
        weight, coef, *params = self._active
        if self.style == "lora":  # low-rank path: never materialise B A in the forward
            a, b = params
            low = self._op(x, a, None) if not self.is_conv else F.conv2d(x, a[:, :, None, None], None, self.base.stride)
            up = F.linear(low, b) if not self.is_conv else F.conv2d(low, b[:, :, None, None])
            return self._op(x, weight, self.base.bias) + coef * up
        delta = params[0] if self.style == "full" else (params[0] - 1.0)[:, None] * self.w0  # ia3: diag(l - 1) W0
        return self._op(x, weight + coef * delta, self.base.bias)


def _target_names(body: nn.Module) -> list[str]:
    """ViT: qkv/proj/fc1/fc2 of every block. Otherwise: every Linear and pointwise Conv2d."""
    names = [n for n, _ in body.named_modules()]
    if hasattr(body, "blocks") and any(n.endswith(VIT_TARGETS[0]) for n in names):
        return [n for n in names if n.startswith("blocks.") and n.endswith(VIT_TARGETS)
                and isinstance(body.get_submodule(n), nn.Linear)]
    return [n for n, m in body.named_modules() if isinstance(m, nn.Linear) or is_pointwise_conv(m)]


def inject_adapters(body: nn.Module, style: str, rank: int) -> dict[str, AdaptedLayer]:
    """Replace the target layers of ``body`` in place by :class:`AdaptedLayer` wrappers.

    LoRA on a ``qkv`` layer gets rank ``3 * rank`` (one rank-r update per projection).
    """
    layers: dict[str, AdaptedLayer] = {}
    for name in _target_names(body):
        base = body.get_submodule(name)
        layer = AdaptedLayer(base, style, 3 * rank if name.endswith("qkv") else rank)
        # every reference (a backbone may hold a layer twice, e.g. as ``fc1`` and in a ``Sequential``)
        holders = [(parent, child) for parent in body.modules() for child, m in parent.named_children() if m is base]
        for parent, child in holders:
            setattr(parent, child, layer)
        layers[name] = layer
    if not layers:
        raise ValueError("the backbone has no Linear or pointwise Conv2d layer to adapt")
    return layers


class ModulePool:
    """The per-task modules of all adapted layers, and how they are composed (not an ``nn.Module``:
    the parameters live in the layers, so they are saved with the backbone's state dict)."""

    def __init__(self, layers: dict[str, AdaptedLayer]):
        self.layers = layers

    @property
    def n_tasks(self) -> int:
        return len(next(iter(self.layers.values())).deltas)

    def add_task(self) -> None:
        for layer in self.layers.values():
            layer.add_task()

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.deltas[task].parameters()]

    def set_trainable(self, task: Optional[int]) -> None:
        """Only the module of ``task`` requires gradients (None: nothing)."""
        for layer in self.layers.values():
            for s, delta in enumerate(layer.deltas):
                for p in delta.parameters():
                    p.requires_grad_(s == task)

    def weighted_sum(self, name: str, weights: Sequence[float]) -> Optional[torch.Tensor]:
        """``sum_s weights[s] * dW_s`` of one layer (detached), None when all weights are zero."""
        layer, total = self.layers[name], None
        for s, w in enumerate(weights):
            if w != 0:
                term = w * layer.dense_delta(s)
                total = term if total is None else total + term
        return total

    def compose(self, weights: Sequence[float]) -> None:
        """Evaluate ``theta0 + sum_s weights[s] tau_s``, merged into the weights (one matmul per layer)."""
        if len(weights) > self.n_tasks:
            raise ValueError(f"{len(weights)} weights for {self.n_tasks} task modules")
        for name, layer in self.layers.items():
            layer.set_composition(self.weighted_sum(name, weights))

    def use_base(self) -> None:
        """Plain theta0 (no module)."""
        for layer in self.layers.values():
            layer.set_composition(None)

    def train_individual(self, task: int) -> None:
        """ITA: ``theta0 + tau_t`` with tau_t trainable."""
        for layer in self.layers.values():
            layer.set_composition(None, task, 1.0)

    def train_ensemble(self, task: int, past_sums: dict[str, Optional[torch.Tensor]]) -> None:
        """IEL: ``theta0 + w (sum_{s<t} tau_s + tau_t)`` with w = 1/(t+1) and only tau_t trainable."""
        w = 1.0 / (task + 1)
        for name, layer in self.layers.items():
            past = past_sums.get(name)
            layer.set_composition(None if past is None else w * past, task, w)


def uniform_weights(n_tasks: int) -> list[float]:
    return [1.0 / n_tasks] * n_tasks


def frozen_batchnorms(net: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``net``: their statistics stay those of pre-training."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_eval(modules: Iterable[nn.Module]) -> None:
    for m in modules:
        m.eval()

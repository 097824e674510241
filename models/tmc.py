"""``tmc``: Tangent Model Composition (Liu & Soatto, ICCV 2023)."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.utils.continual_model import ContinualModel

Tangent = dict[str, torch.Tensor]


def linearized(body: nn.Module, x: torch.Tensor, tangent: Tangent) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x; theta0), J_theta f(x; theta0) . tangent)`` in one forward-mode pass (``torch.func.jvp``).

    ``tangent`` maps some of ``body``'s parameter names to directions; the others are held fixed.
    The tangent's gradient flows through the returned JVP (it is linear in the tangent). Scaled
    dot-product attention runs on its math kernel: the fused kernels have no forward-mode derivative.
    """
    theta0 = {n: p.detach() for n, p in body.named_parameters() if n in tangent}
    fixed = {n: p for n, p in body.named_parameters() if n not in tangent}
    fixed.update(dict(body.named_buffers()))

    def f(params: Tangent) -> torch.Tensor:
        return functional_call(body, {**fixed, **params}, (x,))

    with sdpa_kernel([SDPBackend.MATH]), warnings.catch_warnings():
        # torch loads its own forward-mode decompositions through the deprecated torch.jit.script on first use:
        # a warning about torch's internals that a user of this method cannot act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        return jvp(f, (theta0,), ({n: tangent[n] for n in theta0},))


class TangentPool:
    """The tangent vector of every finished task (detached), composed with per-task weights."""

    def __init__(self) -> None:
        self.tangents: list[Tangent] = []

    @property
    def n_tasks(self) -> int:
        return len(self.tangents)

    def add(self, tangent: Tangent) -> None:
        self.tangents.append({n: t.detach().clone() for n, t in tangent.items()})

    def compose(self, weights: Sequence[float]) -> Tangent:
        """``sum_t weights[t] * tangent_t``."""
        if len(weights) != self.n_tasks:
            raise ValueError(f"{len(weights)} weights for {self.n_tasks} tangent vectors")
        return {n: sum(w * t[n] for w, t in zip(weights, self.tangents)) for n in self.tangents[0]}


class TMC(ContinualModel):
    """Each task trains a tangent vector ``d_t`` of the backbone body, linearised around the
    pre-trained weights theta0 (features ``f(x; theta0) + J f(x; theta0) d_t``, by a
    Jacobian-vector product), plus its own head rows, with CE on its classes. theta0 never changes
    and the body runs in eval mode (BatchNorm statistics and dropout of theta0). Evaluation composes
    ``d = sum_t w_t d_t`` with ``w_t = 1/T`` (the mean: the composite's features are the mean of the
    components' features, exactly, since they are linear in d); editing (``python -m app.edit``)
    sets other weights: ``--keep`` specialises on some tasks, ``--drop`` removes some."""

    NAME = "tmc"
    COMPATIBILITY = ["class-il", "task-il"]

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.net.body.requires_grad_(False)
        self.tangent_names = [n for n, p in self.net.body.named_parameters() if p.is_floating_point()]
        self.tangent = nn.ParameterList([nn.Parameter(torch.zeros_like(p)) for _, p in self._named_body_params()])
        self.pool = TangentPool()
        self.eval_task_weights: Optional[list[float]] = None  # editing: weights of the composition
        self.merged_head = {k: v.detach().clone() for k, v in self.net.classifier.state_dict().items()}
        self._composed: Optional[Tangent] = None
        self._composed_weights: Optional[tuple[float, ...]] = None

    def _named_body_params(self) -> list[tuple[str, nn.Parameter]]:
        params = dict(self.net.body.named_parameters())
        return [(n, params[n]) for n in self.tangent_names]

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.body.eval()  # the linearisation point: theta0 with its own statistics
        return self

    def get_parameters(self):
        return [*self.tangent, *self.net.classifier.parameters()]

    def current_tangent(self) -> Tangent:
        return dict(zip(self.tangent_names, self.tangent))

    def begin_task(self, dataset) -> None:
        with torch.no_grad():
            for p in self.tangent:
                p.zero_()
        self.net.classifier.load_state_dict(self.merged_head)

    def features_with(self, x: torch.Tensor, tangent: Tangent) -> torch.Tensor:
        self.net.body.eval()  # also after the loop's net.train(): BatchNorm of theta0, never updated
        base, direction = linearized(self.net.body, x, tangent)
        return base + direction

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        feats = self.features_with(inputs, self.current_tangent())
        logits = self.net.classifier(feats)[:, self.n_past_classes:self.n_seen_classes]
        loss = self.loss(logits, labels - self.n_past_classes)
        loss.backward()
        self.opt.step()
        return loss.item()

    def end_task(self, dataset) -> None:
        self.pool.add(self.current_tangent())
        with torch.no_grad():
            rows = slice(self.n_past_classes, self.n_seen_classes)
            for key, value in self.net.classifier.state_dict().items():
                self.merged_head[key][rows] = value[rows]
            for p in self.tangent:
                p.zero_()
        self.net.classifier.load_state_dict(self.merged_head)
        self.compose_eval()

    def composition_weights(self) -> list[float]:
        n = self.pool.n_tasks
        return list(self.eval_task_weights) if self.eval_task_weights is not None else [1.0 / n] * n

    def compose_eval(self) -> None:
        """Recompute the composed tangent from ``eval_task_weights`` (uniform 1/T when None)."""
        if self.pool.n_tasks == 0:
            self._composed, self._composed_weights = None, None
            return
        weights = self.composition_weights()
        self._composed, self._composed_weights = self.pool.compose(weights), tuple(weights)

    def task_feature_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(f(x; theta0), [J f(x; theta0) d_t for each task t])``. The features of the composition with
        weights ``w`` are ``base + sum_t w_t term_t`` (linear in the tangent), so an editing protocol computes
        these once per test batch and any number of compositions from them (``benchmarks.editing``)."""
        self.net.body.eval()
        base, terms = None, []
        with torch.no_grad():
            for tangent in self.pool.tangents:
                base, term = linearized(self.net.body, x, tangent)
                terms.append(term)
        return base, terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool.n_tasks == 0:
            return self.net(x)
        if self._composed is None or self._composed_weights != tuple(self.composition_weights()):
            self.compose_eval()
        with torch.no_grad():
            return self.net.classifier(self.features_with(x, self._composed))

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "tangents": self.pool.tangents, "merged_head": self.merged_head}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.pool.tangents = [{n: t.to(self.device) for n, t in tangent.items()} for tangent in state["tangents"]]
        self.merged_head = {k: v.to(self.device) for k, v in state["merged_head"].items()}
        self.compose_eval()

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.pool.tangents = [{n: t.to(self.device) for n, t in tangent.items()} for tangent in self.pool.tangents]
        self.merged_head = {k: v.to(self.device) for k, v in self.merged_head.items()}
        self._composed = None
        return out

"""``inflora``: Interference-free LoRA (Liang & Li, CVPR 2024) on any timm ViT backbone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from timm.models.vision_transformer import VisionTransformer

from models.feature_utils.features import task_features
from models.inflora_utils.subspace import SubspaceMemory, designed_down_projection, input_gram
from models.prompt_utils.vit_prompting import require_vit
from models.second_order_utils.modules import AdaptedLayer, ModulePool
from models.utils.continual_model import ContinualModel
from utils import distributed
from utils.args import positive_int, unit_interval
from utils.errors import UserError
from utils.modes import eval_mode
from utils.settings import setting


@dataclass(frozen=True)
class InfLoRASettings:
    inflora_rank: int = setting(10, positive_int, "rank of each task's branch")
    inflora_lamb: float = setting(0.95, unit_interval, "GPM energy threshold after the first task")
    inflora_lame: float = setting(1.0, float, "GPM energy threshold the schedule reaches after the last task")


class InfLoRA(ContinualModel):
    """A LoRA branch ``dW_t = B_t A_t`` per task on the key and value projections of every ViT block
    (the ``qkv`` layer, query rows kept at zero). Before task t, A_t (rank x d, frozen) is designed
    from the Gram matrix C of the task's inputs to the layer (non-augmented images through the
    current model): the top-``rank`` eigenvectors of ``(I - M M^T) C (I - M M^T)``, so the branch
    reads only input directions outside the subspace M of old tasks; only B_t (zero-initialised)
    and the head are trained, with CE on the task's classes. After the task, M grows with GPM's
    rule at threshold ``lamb + (lame - lamb) * t / T`` from the inputs of the trained model (stored
    as M or its complement, whichever is smaller: DualGPM). The model is ``W0 + sum_t B_t A_t``."""

    NAME = "inflora"
    COMPATIBILITY = ["class-il", "task-il"]
    DEFAULTS = {"optimizer": "adam"}
    SETTINGS = InfLoRASettings
    settings: InfLoRASettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        if not isinstance(getattr(backbone, "body", None), VisionTransformer):
            raise UserError(f"inflora adds LoRA branches to a timm VisionTransformer's attention; backbone body is "
                            f"{type(getattr(backbone, 'body', None)).__name__}: use --backbone vit_tiny (or vit)")
        self.vit = require_vit(backbone, self.NAME)
        self.vit.requires_grad_(False)
        self.layers: dict[str, AdaptedLayer] = {}
        for i, block in enumerate(self.vit.blocks):
            block.attn.qkv = AdaptedLayer(block.attn.qkv, "lora", self.settings.inflora_rank)
            self.layers[f"blocks.{i}.attn.qkv"] = block.attn.qkv
        self.pool = ModulePool(self.layers)
        self.memories = {name: SubspaceMemory(layer.d_in) for name, layer in self.layers.items()}
        self.n_tasks_total = dataset.n_tasks if dataset is not None else 1

    def get_parameters(self):
        params = list(self.net.classifier.parameters())
        if 0 <= self.current_task < self.pool.n_tasks:
            params += [layer.deltas[self.current_task].B for layer in self.layers.values()]
        return params

    def use_tasks(self, n_fixed: int, train_task: Optional[int] = None) -> None:
        """Compute with ``W0 + sum_{s < n_fixed} B_s A_s`` (+ the trainable branch of ``train_task``)."""
        for name, layer in self.layers.items():
            layer.set_composition(self.pool.weighted_sum(name, [1.0] * n_fixed) if n_fixed else None, train_task)

    @torch.no_grad()
    def input_grams(self, dataset) -> dict[str, torch.Tensor]:
        """``sum x x^T`` of the inputs of every adapted layer over the task's non-augmented images."""
        grams: dict[str, Optional[torch.Tensor]] = {name: None for name in self.layers}
        hooks = [layer.register_forward_pre_hook(
            lambda mod, inp, name=name: grams.__setitem__(name, input_gram(inp[0], grams[name])))
            for name, layer in self.layers.items()]
        try:
            with eval_mode(self.net):
                task_features(self.net.features, dataset, self.current_task, self.device)
        finally:
            for hook in hooks:
                hook.remove()
        return {name: distributed.all_reduce_sum(g) for name, g in grams.items()}

    def begin_task(self, dataset) -> None:
        t = self.current_task
        self.use_tasks(t)
        grams = self.input_grams(dataset)
        self.pool.add_task()
        self.pool.set_trainable(None)
        for name, layer in self.layers.items():
            delta = layer.deltas[t]
            with torch.no_grad():
                delta.A.copy_(designed_down_projection(grams[name], self.memories[name], layer.rank))
            delta.B.requires_grad_(True)
            mask = torch.ones_like(delta.B)
            mask[:layer.d_out // 3] = 0  # no branch on the query projection
            delta.B.register_hook(lambda grad, mask=mask: grad * mask)
        self.use_tasks(t, train_task=t)
        self.opt = self.get_optimizer()

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        return self.current_task_step(inputs, labels)

    def end_task(self, dataset) -> None:
        t = self.current_task
        self.pool.set_trainable(None)
        self.use_tasks(t + 1)
        s = self.settings
        threshold = s.inflora_lamb + (s.inflora_lame - s.inflora_lamb) * t / self.n_tasks_total
        grams = self.input_grams(dataset)
        for name, memory in self.memories.items():
            memory.update(grams[name], min(threshold, 1.0))

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "n_branches": self.pool.n_tasks,
                "memories": {n: m.state() for n, m in self.memories.items()}}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        while self.pool.n_tasks < int(state["n_branches"]):
            self.pool.add_task()
        self.pool.set_trainable(None)
        super().load_checkpoint_state(state, dataset)
        for name, memory in self.memories.items():
            memory.load({k: v.to(self.device) if torch.is_tensor(v) else v for k, v in state["memories"][name].items()})
        self.use_tasks(self.pool.n_tasks)

"""Mammoth's ``utils.buffer`` helpers of iCaRL-style methods: ``fill_buffer`` (class-balanced, optionally by
herding) and ``icarl_replay`` (the buffer merged into the current task's training samples)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch


def _seen_and_past(dataset: Any, t_idx: int) -> tuple[int, int]:
    cpt = dataset.N_CLASSES_PER_TASK
    if isinstance(cpt, (int, np.integer)):
        return int(cpt) * (t_idx + 1), int(cpt) * t_idx
    return int(sum(cpt[:t_idx + 1])), int(sum(cpt[:t_idx]))


def _herding(feats: torch.Tensor, k: int) -> list[int]:
    """Indices of ``k`` rows whose running mean best tracks the mean of ``feats`` (iCaRL's herding)."""
    target = feats.mean(0, keepdim=True)
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(feats), dtype=torch.bool)
    for i in range(min(k, len(feats))):
        cost = (target - (feats + running) / (i + 1)).norm(dim=1)
        cost[~available] = float("inf")
        pick = int(cost.argmin())
        chosen.append(pick)
        running += feats[pick:pick + 1]
        available[pick] = False
    return chosen


@torch.no_grad()
def fill_buffer(buffer: Any, dataset: Any, t_idx: int, net: Optional[torch.nn.Module] = None,
                use_herding: bool = False, required_attributes: Optional[Sequence[str]] = None,
                normalize_features: bool = False, extend_equalize_buffer: bool = False) -> None:
    """Rebuild ``buffer`` with ``buffer_size // seen classes`` samples per class: the first of each past class
    already stored, then the current task's not-augmented images (chosen at random, or by herding on ``net``'s
    features). ``logits`` (sigmoid outputs of ``net``) and ``task_labels`` are stored when required."""
    if use_herding and net is None:
        raise ValueError("fill_buffer: herding needs the network (net=...)")
    attrs = list(required_attributes or ("examples", "labels"))
    n_seen, n_past = _seen_and_past(dataset, t_idx)
    train = dataset.train_loader.dataset
    keep = np.asarray(train.targets) >= n_past
    train.targets, train.data = np.asarray(train.targets)[keep], train.data[keep]
    size = int(dataset.args.buffer_size)
    per_class = int(np.ceil(size / n_seen)) if extend_equalize_buffer else size // n_seen
    buffer.buffer_size = per_class * n_seen if extend_equalize_buffer else size
    device = next(net.parameters()).device if net is not None else buffer.device
    if t_idx > 0 and not buffer.is_empty():
        stored = dict(zip(attrs, buffer.get_all_data()))
        buffer.empty()
        for label in stored["labels"].unique():
            mask = stored["labels"] == label
            buffer.add_data(**{k: v[mask][:per_class] for k, v in stored.items()})
    mode = net.training if net is not None else False
    if net is not None:
        net.eval()
    normalize = dataset.get_normalization_transform()
    xs, ys, feats, probs = [], [], [], []
    for batch in dataset.train_loader:
        x, y, not_aug = batch[0], batch[1], batch[2]
        if not len(x):
            continue
        xs.append(not_aug.cpu())
        ys.append(y.cpu())
        if net is not None:
            f = net(normalize(not_aug.to(device)), returnt="features")
            probs.append(torch.sigmoid(net.classifier(f)).cpu())
            feats.append((f / f.norm(dim=1, keepdim=True) if normalize_features else f).cpu())
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    for label in y_all.unique():
        idx = torch.nonzero(y_all == label).flatten()
        if use_herding:
            pick = idx[_herding(torch.cat(feats)[idx], per_class)]
        else:
            pick = idx[torch.randperm(len(idx))[:per_class]]
        buffer.add_data(examples=x_all[pick], labels=y_all[pick],
                        logits=torch.cat(probs)[pick] if "logits" in attrs else None,
                        task_labels=torch.full((len(pick),), t_idx) if "task_labels" in attrs else None)
    if net is not None:
        net.train(mode)


def icarl_replay(model: Any, dataset: Any, val_set_split: float = 0) -> None:
    """From the second task on, append the buffer's samples to the current task's training samples; with
    ``val_set_split`` > 0, that fraction of the buffer (at least one sample, and as many task samples) becomes
    ``model.val_loader``."""
    if model.current_task == 0 or model.buffer.is_empty():
        return
    from mammoth_compat.conf import create_seeded_dataloader
    train = dataset.train_loader.dataset
    n = len(model.buffer)
    buf_val = torch.rand(n) < val_set_split
    if val_set_split > 0 and not bool(buf_val.any()):  # a tiny buffer (debug mode) still gets a validation sample
        buf_val[torch.randint(n, (1,))] = True
    train_val = np.zeros(len(train.targets), dtype=bool)
    train_val[torch.randperm(len(train.targets))[:int(buf_val.sum())].numpy()] = True
    examples = model.buffer.examples[:n].cpu()
    images = (examples * 255).round().clamp(0, 255).to(torch.uint8)
    images = images.permute(0, 2, 3, 1).numpy() if images.dim() == 4 else images.numpy()
    if isinstance(train.data, np.ndarray) and train.data.ndim == 4 and train.data.shape[-1] == 1 and images.ndim == 4:
        images = images[..., :1]
    labels = model.buffer.labels[:n].cpu().numpy()
    data, targets = train.data, np.asarray(train.targets)
    if val_set_split > 0:
        import copy
        model.val_dataset = copy.deepcopy(train)
        model.val_dataset.targets = np.concatenate([targets[train_val], labels[buf_val.numpy()]])
        model.val_dataset.data = np.concatenate([data[train_val], images[buf_val.numpy()]])
        model.val_loader = create_seeded_dataloader(model.args, model.val_dataset, batch_size=model.args.batch_size,
                                                    shuffle=True)
    train.targets = np.concatenate([targets[~train_val], labels[~buf_val.numpy()]])
    train.data = np.concatenate([data[~train_val], images[~buf_val.numpy()]])

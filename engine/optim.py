"""The optimizer and the learning-rate schedule of a run.

Parameter groups, in order:

* the network: one group at ``optim.lr`` (the original's), or, with ``optim.fc_lr``, the backbone at
  ``optim.lr`` and the embedding head at ``optim.fc_lr``;
* the loss's own parameters (proxies, class weights, margins' beta), each at the lr the loss asks for
  (``criterion.param_groups``: ``optim.lr`` times the loss's ``lrmulti``, or its own ``lr``).

The ViT recipe options split the network's groups further, with timm's rules:

* ``optim.decay_exclude``: biases, norm weights and every other 1-d parameter, and what the backbone's
  ``no_weight_decay()`` names (position embeddings, class and register tokens), get weight decay 0
  (``timm.optim.param_groups_weight_decay``); the head's bias too;
* ``optim.layer_decay``: layer-wise lr decay of a timm backbone (``timm.optim.param_groups_layer_decay``):
  the stem and block i of L get ``lr · layer_decay^(L - i)``; the backbone's last layer group keeps ``lr``.

Schedules: ``step`` and ``cosine`` are stepped per epoch, as in the original; ``warmup_cosine`` is stepped per
iteration (what ViT recipes use): a linear warmup to each group's lr, then a half cosine down to
``min_lr_ratio`` of it at the last iteration. It is a LambdaLR whose factor is a plain object, so that its
state (the iteration reached) goes into the checkpoint and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def build_optimizer(cfg, model: nn.Module, criterion) -> torch.optim.Optimizer:
    """The run's optimizer (``cfg`` is the config's ``optim`` section)."""
    if cfg.decay_exclude or cfg.layer_decay is not None:
        groups = recipe_groups(cfg, model)
    else:
        groups = network_groups(cfg, model)
    groups += criterion.param_groups(cfg.lr)
    if cfg.name == "adam":
        return torch.optim.Adam(groups)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def network_groups(cfg, model: nn.Module) -> list[dict[str, Any]]:
    """The original's groups: the whole network, or backbone and head apart when ``fc_lr`` is set."""
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    if cfg.fc_lr is None:
        return [{"params": body + head, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "network"}]
    return [
        {"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "backbone"},
        {"params": head, "lr": cfg.fc_lr, "weight_decay": cfg.weight_decay, "name": "head"},
    ]


def _no_weight_decay(module: nn.Module) -> set[str]:
    """The parameter names a timm model keeps out of weight decay (pos_embed, cls_token, ...)."""
    names = module.no_weight_decay() if hasattr(module, "no_weight_decay") else ()
    return set(names)


def recipe_groups(cfg, model: nn.Module) -> list[dict[str, Any]]:
    """Backbone and head groups with the weight-decay exclusions and layer-wise lr decay of ViT recipes."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay  # deferred: timm is slow to import

    exclude = cfg.decay_exclude
    no_decay = _no_weight_decay(model.trunk) if exclude else set()
    if cfg.layer_decay is not None:
        if not hasattr(model.trunk, "group_matcher"):
            raise ValueError(f"optim.layer_decay needs a timm backbone (with layer groups); {model.spec.backbone!r} has none")
        trunk_groups = param_groups_layer_decay(model.trunk, weight_decay=cfg.weight_decay, no_weight_decay_list=no_decay,
                                                weight_decay_exclude_1d=exclude, layer_decay=cfg.layer_decay)
        names = [f"backbone.{_layer_name(group)}" for group in trunk_groups]
    else:
        trunk_groups = param_groups_weight_decay(model.trunk, weight_decay=cfg.weight_decay,
                                                 weight_decay_exclude_1d=exclude, no_weight_decay_list=no_decay)
        names = [f"backbone.{'decay' if group['weight_decay'] else 'no_decay'}" for group in trunk_groups]
    head_groups = param_groups_weight_decay(model.head, weight_decay=cfg.weight_decay, weight_decay_exclude_1d=exclude)
    groups = []
    for name, group in zip(names, trunk_groups, strict=True):
        groups.append({**group, "lr": cfg.lr * group.get("lr_scale", 1.0), "name": name})
    head_lr = cfg.fc_lr if cfg.fc_lr is not None else cfg.lr
    for group in head_groups:
        groups.append({**group, "lr": head_lr, "name": f"head.{'decay' if group['weight_decay'] else 'no_decay'}"})
    return [group for group in groups if group["params"]]


def _layer_name(group: dict[str, Any]) -> str:
    """``lr_scale_0.59.decay``: a layer-decay group named by its lr scale and weight decay (timm keeps its own
    names, ``layer_<i>_decay``, in a dict it does not return)."""
    return f"lr_scale_{group['lr_scale']:.4g}.{'decay' if group['weight_decay'] else 'no_decay'}"


class WarmupCosine:
    """The factor of each group's lr at iteration t: (t+1)/W during the W warmup iterations, then a half
    cosine from 1 to ``min_ratio`` over the remaining ones (``min_ratio`` from then on)."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup:
            return (iteration + 1) / self.warmup
        progress = min(1.0, (iteration - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def per_iteration(cfg) -> bool:
    """Whether the schedule steps after every optimizer step (else after every epoch)."""
    return cfg.scheduler == "warmup_cosine"


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, iterations_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "warmup_cosine":
        total = cfg.epochs * iterations_per_epoch
        warmup = cfg.warmup_iterations or round(cfg.warmup_epochs * iterations_per_epoch)
        if warmup >= total:
            raise ValueError(f"the warmup ({warmup} iterations) covers the whole run ({cfg.epochs} epochs of "
                             f"{iterations_per_epoch} iterations); lower optim.warmup_epochs/warmup_iterations")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, cfg.min_lr_ratio))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    milestones = cfg.tau if cfg.scheduler == "step" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)

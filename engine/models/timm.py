"""timm backbones: ``timm:<any timm model name>``, and short aliases for the common ones.

A timm model is built headless (``num_classes=0``): it pools its own features (a ViT's class token,
a CNN's global average) and the embedding model adds the head (``model.head``). The modifiers keep
their meaning: ``double`` asks timm for ``global_pool="avgmax"`` (the mean of average and max
pooling, where the built-in backbones sum them: the same up to a factor of 2 that the linear head
absorbs), ``frozen`` keeps BatchNorm statistics frozen (an error for a model without BatchNorm, such
as a ViT), ``normalize`` and ``he`` act on the embedding and the head as for every backbone.

Input size, mean, std, crop_pct and interpolation come from the model's pretrained config.

Weights, without a download where none is possible:

* ``model.weights_path``: a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file of timm's key layout (or the
  original layout where timm's own ``checkpoint_filter_fn`` converts it: DINO, DINOv2, ConvNeXt...), the
  state dict possibly wrapped in ``state_dict`` or ``model``; the classifier is dropped, every other
  tensor must fit (position embeddings are resampled to ``data.image_size`` by that filter);
* ``model.pretrained=true``: timm's own loader, from the Hugging Face cache; with ``HF_HUB_OFFLINE=1`` and no
  cached copy, :class:`WeightsError` names the repository and the command that fetches it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from torch import nn

from engine import timm_hub
from engine.catalog import ArchSpec
from engine.models import ARCHITECTURES, Trunk, TrunkOptions
from engine.models.weights import WeightsError, load_strict, read_state_dict


@dataclass(frozen=True)
class TimmBackbone:
    """A timm model used as a trunk; what it expects as input is read from its pretrained config on first use."""

    name: str  # a timm model name, with or without a pretrained tag

    @property
    def description(self) -> str:
        return f"timm {self.name}"

    @cached_property
    def pretrained_cfg(self) -> dict:
        from timm.models import get_pretrained_cfg

        return get_pretrained_cfg(self.resolved.name).to_dict()

    @cached_property
    def resolved(self) -> timm_hub.TimmName:
        return timm_hub.resolve(self.name)

    @property
    def input_size(self) -> int:
        return int(self.pretrained_cfg["input_size"][-1])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.pretrained_cfg["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.pretrained_cfg["std"])

    @property
    def crop_pct(self) -> float:
        return float(self.pretrained_cfg.get("crop_pct") or 0.875)

    @property
    def interpolation(self) -> str:
        return self.pretrained_cfg.get("interpolation") or "bilinear"

    def create_trunk(self, spec: ArchSpec, options: TrunkOptions) -> Trunk:
        kwargs = dict(options.backbone_kwargs or {})
        kwargs["num_classes"] = 0
        if "double" in spec.modifiers:
            kwargs["global_pool"] = "avgmax"
        if (options.image_size and self.pretrained_cfg.get("fixed_input_size")
                and options.image_size != self.input_size):
            kwargs.setdefault("img_size", options.image_size)  # a ViT's position embeddings are sized by it
        from_hub = options.pretrained and not options.weights_path
        model = self._create(kwargs, from_hub)
        if options.weights_path:
            load_weights(model, options.weights_path, self.resolved.name)
        if "frozen" in spec.modifiers and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError(f"the _frozen modifier freezes BatchNorm statistics, and timm {self.name} has no BatchNorm "
                             "layers; drop _frozen from model.arch")
        if options.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return Trunk(model, model.num_features, pooled=True)

    def _create(self, kwargs: dict, from_hub: bool) -> nn.Module:
        import timm  # deferred: seconds to import, paid only by runs that use it

        name = self.resolved.name
        if not from_hub:
            return timm.create_model(name, pretrained=False, **kwargs)
        if timm_hub.offline() and timm_hub.cached_weights(self.resolved) is None:
            raise WeightsError(f"the weights of timm {name} are not cached and HF_HUB_OFFLINE=1 forbids downloading "
                               f"them: {timm_hub.fetch_hint(self.resolved)}")
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except TypeError:  # a model.timm_kwargs entry the model does not take: not a weights problem
            raise
        except Exception as error:  # offline, network and hub errors come as many exception types
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise WeightsError(f"could not get the weights of timm {name} ({type(error).__name__}: {message}); "
                               f"{timm_hub.fetch_hint(self.resolved)}") from error


def timm_backbone(name: str) -> TimmBackbone:
    return TimmBackbone(name)


def _checkpoint_filter(model: nn.Module):
    """The model family's own converter of checkpoints into its layout (timm's ``checkpoint_filter_fn``), if any."""
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def load_weights(model: nn.Module, weights_path: str, name: str) -> None:
    """Load a weight file into a headless timm model: every tensor but the classifier must fit."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in read_state_dict(weights_path).items()}
    convert = _checkpoint_filter(model)
    if convert is not None:
        state = convert(state, model)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    for classifier in (classifiers,) if isinstance(classifiers, str) else classifiers:
        for key in (f"{classifier}.weight", f"{classifier}.bias"):
            if key not in model.state_dict():
                state.pop(key, None)
    load_strict(model, state, source=str(Path(weights_path).expanduser()), what=f"timm {name}")


for _alias, _name in timm_hub.ALIASES.items():
    ARCHITECTURES.register(_alias)(TimmBackbone(_name))


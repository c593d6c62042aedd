"""GoogLeNet (Inception v1) from torchvision as a trunk: conv1 … inception5b, 1024 channels.

Weights: torchvision's ``GoogLeNet_Weights.IMAGENET1K_V1`` (``googlenet-1378be20.pth``, the
weights the original got from ``torchvision.models.googlenet(pretrained=True)``), fetched
through the weights API, or read from ``model.weights_path`` (a torchvision GoogLeNet state
dict; its ``aux1``/``aux2``/``fc`` classifier keys are ignored, every trunk key must match).

Input: ImageNet mean/std normalisation, like the other torchvision backbones. These weights
expect torchvision's ``transform_input=True`` re-normalisation to (x − 0.5)/0.5 per channel,
which the trunk applies first (always, pretrained or not, so one state dict fits both).

Departures from the original:

* It crashed: the model returned a single tensor where ``main.py`` expected
  ``(embedding, features)``. Here the trunk feeds the shared pooling and head like every
  backbone, so googlenet trains.
* Input size 224, not 227. torchvision's weights were trained and are evaluated at 224 (their
  transforms crop 224), and 227 (a Caffe habit) gives the same 7x7 final map. Set
  ``data.image_size=227`` to reproduce the original.
* The auxiliary classifiers are off and torchvision's dropout (0.2) before the classifier is
  gone: the embedding head sits on the shared global pooling (average; + max with ``_double``).
* ``_frozen`` applies (BatchNorm statistics frozen); the original ignored it for googlenet.
* ``model.pretrained=false`` gives torchvision's random initialisation (the original was
  always pretrained).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from engine.models import ARCHITECTURES, Backbone
from engine.models.weights import HOW_TO, WeightsError, load_strict, read_state_dict

STAGES = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2",
    "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
    "inception5a", "inception5b",
)  # fmt: skip
CLASSIFIER_PREFIXES = ("aux1.", "aux2.", "fc.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GoogLeNetTrunk(nn.Module):
    """torchvision's GoogLeNet up to inception5b; the state dict keys are torchvision's."""

    def __init__(self, net: tvm.GoogLeNet):
        super().__init__()
        for name in STAGES:
            self.add_module(name, getattr(net, name))
        # ImageNet-normalised x → (x·std + mean − 0.5) / 0.5, torchvision's transform_input.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("input_scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.input_scale + self.input_shift
        for name in STAGES:
            x = getattr(self, name)(x)
        return x


def _trunk_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}


def build(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    trunk = GoogLeNetTrunk(tvm.GoogLeNet(aux_logits=False, transform_input=False, init_weights=True))
    if weights_path:
        load_strict(trunk, _trunk_state(read_state_dict(weights_path)), source=weights_path, what="GoogLeNet (torchvision)")
    elif pretrained:
        weights = tvm.GoogLeNet_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as error:  # network errors come as several exception types
            raise WeightsError(
                f"could not get the ImageNet weights of googlenet ({type(error).__name__}: {error}); "
                f"download {weights.url} elsewhere and {HOW_TO}"
            ) from error
        load_strict(trunk, _trunk_state(state), source=weights.url, what="GoogLeNet (torchvision)")
    return trunk, 1024


ARCHITECTURES.register("googlenet")(
    Backbone(build=build, input_size=224, description="GoogLeNet (torchvision, ImageNet IMAGENET1K_V1 weights)")
)

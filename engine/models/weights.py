"""Reading pretrained weights from a local file, and the error every backbone raises when it cannot.

No backbone downloads anything except through torchvision's weights API (which caches in
``$TORCH_HOME``); where that fails, or where no maintained download exists (BN-Inception),
:class:`WeightsError` says how to pass a local file (``model.weights_path=<file>``) or turn
pretraining off (``model.pretrained=false``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HOW_TO = "set model.weights_path=<file>, or set model.pretrained=false"


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be found or loaded; the message says how to proceed."""


def read_state_dict(weights_path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``torch.save``-d state dict (possibly wrapped as
    ``{"state_dict": ...}`` or ``{"model": ...}``) loaded with ``weights_only``."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise WeightsError(f"model.weights_path={str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file, a pickle with code in it, ...
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch state dict"
        raise WeightsError(f"could not read {path} as a {kind} ({type(error).__name__}: {error})") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str) -> None:
    """``load_state_dict(strict=True)``, with BatchNorm's ``num_batches_tracked`` filled in where a
    checkpoint predates it, and a :class:`WeightsError` naming the mismatching keys."""
    state = dict(state)
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{source} is not a {what} state dict: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape mismatches {wrong[:3]}"
        )
    module.load_state_dict(state, strict=True)

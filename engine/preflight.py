"""Checks of a resolved config that can fail a run before it trains, done before anything is written.

``problems(config, run_dir)`` lists, one line each, what would make the run fail early: a
dataset folder without the layout its loader reads, a missing ``model.weights_path`` (or, with
``HF_HUB_OFFLINE=1``, timm weights missing from the Hugging Face cache), a run
directory that cannot be created, a CUDA device that this machine does not have. Each line
names the key, path or value and what would be accepted. ``python -m engine`` refuses to
start (exit code 2) when there is any; the run manager asks before it prepares a run.

The module imports no torch, and ``problems`` imports it only when the config (or a
launcher's ``CUDA_VISIBLE_DEVICES``) asks for CUDA, so that the run manager stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine import catalog, timm_hub
from engine.config.schema import Config, RunConfig
from engine.data import DatasetError, check_layout

_DEFAULT_GPUS = RunConfig.model_fields["gpus"].get_default(call_default_factory=True)


def problems(config: Config, run_dir: Path | None = None, *, check_device: bool = True) -> list[str]:
    """One line per problem found; empty when the run can start.

    Without ``run_dir`` the run would go under ``<log.save_path>/<dataset>/``, which is checked instead.
    ``check_device=False`` leaves out the device, for a caller that checks on another machine than the run's.
    """
    found = [_dataset_problem(config), _weights_problem(config), _output_problem(config, run_dir)]
    if check_device:
        found += device_problems(config.run)
    return [line for line in found if line]


def cuda_requested(run: RunConfig) -> bool:
    """Whether the run asks for CUDA explicitly, which rules out falling back to the CPU.

    Explicit: ``run.device='cuda'``; or, under ``run.device='auto'``, a launcher that set
    ``CUDA_VISIBLE_DEVICES`` to chosen GPUs, or (without a launcher's choice) GPUs other than
    the default ``run.gpus``.
    """
    if run.device != "auto":
        return run.device == "cuda"
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # a launcher's choice of GPUs, or of none (the CPU), beats run.gpus
        return bool(os.environ["CUDA_VISIBLE_DEVICES"])
    return run.gpus != _DEFAULT_GPUS


def device_problems(run: RunConfig) -> list[str]:
    """The CUDA device the run asks for explicitly, when this machine lacks it."""
    if not cuda_requested(run):
        return []
    import torch  # deferred: only a run that asks for CUDA pays for it

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = "set run.device='cpu' to train on the CPU"
    if count == 0:
        if run.device == "cuda":
            asked = "run.device='cuda'"
        elif visible:
            asked = f"CUDA_VISIBLE_DEVICES={visible!r}"
        else:
            asked = f"run.gpus={run.gpus}"
        where = "no CUDA GPU is visible" if visible is not None else "this machine has no CUDA GPUs"
        return [f"{asked} asks for a GPU, but {where}; {hint}"]
    if visible:  # the launcher picked the GPUs: the run takes the first visible one, whatever run.gpus says
        return []
    missing = [index for index in run.gpus if not 0 <= index < count]
    if missing:
        present = "only GPU 0 exists" if count == 1 else f"GPUs 0-{count - 1} exist"
        named = f"GPU {missing[0]}, which does" if len(missing) == 1 else f"GPUs {', '.join(map(str, missing))}, which do"
        return [f"run.gpus={run.gpus} names {named} not exist ({present}); list GPUs that exist, or {hint}"]
    return []


def _dataset_problem(config: Config) -> str | None:
    try:
        check_layout(config.data.dataset, config.data.source_path)
    except DatasetError as error:
        return str(error)
    return None


def _weights_problem(config: Config) -> str | None:
    if not config.model.weights_path:
        return _timm_cache_problem(config)
    path = Path(config.model.weights_path).expanduser()
    if path.is_file():
        return None
    what = "is a folder" if path.is_dir() else "does not exist"
    return (f"model.weights_path={config.model.weights_path!r} {what}; set it to a file of pretrained weights "
            "(a torch state dict or .safetensors), or leave it unset")


def _timm_cache_problem(config: Config) -> str | None:
    """Pretrained timm weights that HF_HUB_OFFLINE=1 forbids downloading and that no cache holds."""
    if not timm_hub.offline() or not config.model.pretrained:
        return None
    name = timm_hub.timm_name_of(catalog.parse_arch(config.model.arch).backbone)
    if name is None:
        return None
    model = timm_hub.resolve(name)
    if timm_hub.cached_weights(model) is not None:
        return None
    return (f"model.arch={config.model.arch!r}: the weights of timm {model.name} are not cached and HF_HUB_OFFLINE=1 "
            f"forbids downloading them; {timm_hub.fetch_hint(model)}")


def _output_problem(config: Config, run_dir: Path | None) -> str | None:
    if run_dir is None:
        target = (Path(config.log.save_path) / config.data.dataset).absolute()
        what = f"the results folder {target} (log.save_path={config.log.save_path!r})"
    else:
        target = Path(run_dir).absolute()
        what = f"the run directory {target}"
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {what}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write to {what}: no write permission in {existing}"
    return None

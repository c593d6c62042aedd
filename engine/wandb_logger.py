"""Weights & Biases logging (``log.online = true``).

Project, group, name, id and tags come from ``log.project``, ``log.group``, ``log.name``,
``log.id`` and ``log.tags``. Without a name the run is named ``<group>_s<seed>``, as the
original's were; a run that dmltui launches has its name, id, seedless group and tags
(``dmltui.runs``), so it reads the same in W&B (LEET, or after ``wandb sync``). With an
id, a resumed run continues its W&B run. The API key is never read from or written to
the config: wandb itself takes it from ``WANDB_API_KEY`` or netrc, and
``WANDB_MODE=offline`` works without an account (the run is written under
``<run dir>/wandb``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WandbLogger:
    def __init__(self, config, run_dir: Path):
        try:
            import wandb
        except ImportError:  # pragma: no cover - wandb is a dependency; this guards broken installs
            raise RuntimeError("log.online=true needs the wandb package (pip install wandb)") from None
        self._wandb = wandb
        self.run = wandb.init(
            project=config.log.project,
            group=config.log.group,
            name=config.log.name or f"{config.log.group}_s{config.run.seed}",
            id=config.log.id,
            tags=config.log.tags or None,
            dir=str(run_dir),
            config=config.to_dict(),
            reinit="finish_previous",
            resume="allow" if config.log.id else None,
        )

    def log(self, epoch: int, split: str, metrics: dict[str, Any]) -> None:
        scalars = {f"{split}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        arrays = {f"{split}/{k}": self._wandb.Histogram(v) for k, v in metrics.items() if isinstance(v, list)}
        self.run.log({**scalars, **arrays, "epoch": epoch}, step=epoch)

    def finish(self, state: str) -> None:
        self.run.summary["state"] = state
        self.run.finish(exit_code=0 if state == "finished" else 1)

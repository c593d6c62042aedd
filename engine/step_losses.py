"""The running epoch's per-step losses, kept on the device and read back in blocks.

Reading a CUDA loss (``loss.item()``, ``torch.isfinite(loss)`` in an ``if``) makes the host wait for the GPU every
step, so the CPU cannot queue the next step's kernels while the current ones run. Here each step's loss stays on the
device; every ``sync_every`` steps, and whenever the caller needs the values (a checkpoint, the epoch's end), one
``stack().cpu()`` reads the block back and checks it. A non-finite loss is then reported with its exact step: the steps
after it within the block have trained on it, but the run fails there and no checkpoint is written in between.
"""

from __future__ import annotations

import math

import torch


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or infinite; ``step`` counts the epoch's steps from 1."""

    def __init__(self, value: float, step: int) -> None:
        super().__init__(f"loss became {value} at step {step} of the epoch")
        self.value, self.step = value, step


class StepLosses:
    def __init__(self, done: list[float], sync_every: int) -> None:
        self.values: list[float] = list(done)  # read back (a resumed epoch's losses first)
        self.pending: list[torch.Tensor] = []  # still on the device
        self.sync_every = sync_every

    def __len__(self) -> int:
        return len(self.values) + len(self.pending)

    def add(self, loss: torch.Tensor) -> bool:
        """Keep one step's loss; True when this step read the block back (the values are current)."""
        self.pending.append(loss.detach())
        if len(self.pending) >= self.sync_every:
            self.flush()
            return True
        return False

    def flush(self) -> list[float]:
        """Every loss of the epoch so far, read back; NonFiniteLoss at the first that is not finite."""
        if self.pending:
            block = torch.stack(self.pending).float().cpu().tolist()  # the one device-to-host copy of the block
            first = len(self.values)
            self.pending = []
            for offset, value in enumerate(block):
                if not math.isfinite(value):
                    self.values.extend(block[:offset])
                    raise NonFiniteLoss(value, first + offset + 1)
            self.values.extend(block)
        return self.values

"""The README's code examples work as written."""

from __future__ import annotations

import re

import torch
from conftest import REPO

from engine import losses, metrics, miners


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_library_api_example_runs():
    block = next(b for b in python_blocks() if "engine.losses.list_losses()" in b)
    embeddings = torch.nn.functional.normalize(torch.randn(40, 128), dim=1)
    labels = torch.arange(20).repeat_interleave(2)
    namespace = {"embeddings": embeddings, "labels": labels}
    exec(block.replace("num_classes=100", "num_classes=20"), namespace)
    assert namespace["value"].ndim == 0 and torch.isfinite(namespace["value"])
    assert "margin" in losses.list_losses() and "distance" in miners.list_miners()
    assert "e_recall@<k>" in metrics.list_metrics()


def test_custom_loss_example_registers_and_trains():
    block = next(b for b in python_blocks() if "@LOSSES.register" in b)
    try:
        exec(block, {})
        loss = losses.create("am_softmax", num_classes=5, embed_dim=8)
        x = torch.randn(10, 8, requires_grad=True)
        value = loss(x, torch.arange(5).repeat(2))
        value.backward()
        assert torch.isfinite(value) and x.grad is not None
        assert loss.param_groups(1e-5)[0]["lr"] == 1e-3
    finally:
        losses.LOSSES.unregister("am_softmax")

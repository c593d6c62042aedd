"""The logic of the GPU paths' fixes, on the CPU: step losses read back in blocks (no host wait per step), cuDNN's
autotuner on for non-deterministic runs, and evaluation's embeddings copied to the host once."""

from __future__ import annotations

import math

import pytest
import torch

from engine import trainer
from engine.step_losses import NonFiniteLoss, StepLosses


def test_step_losses_are_read_back_once_a_block_and_whenever_asked():
    losses = StepLosses([0.5], sync_every=3)  # a resumed epoch's first loss, already read back
    read_back = [losses.add(torch.tensor(float(i))) for i in range(1, 8)]
    assert read_back == [False, False, True, False, False, True, False]
    assert losses.values == [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and len(losses.pending) == 1 and len(losses) == 8
    assert losses.flush() == [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] and losses.pending == []
    assert losses.flush() == losses.values  # nothing pending: nothing to read


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_first_non_finite_loss_is_named_by_its_step_of_the_epoch(bad):
    losses = StepLosses([0.1, 0.2], sync_every=4)
    values = [1.0, bad, 3.0, float("nan")]  # the epoch's steps 3 to 6
    with pytest.raises(NonFiniteLoss) as caught:
        for value in values:
            losses.add(torch.tensor(value))
    assert caught.value.step == 4 and (math.isnan(caught.value.value) if math.isnan(bad) else caught.value.value == bad)
    assert losses.values == [0.1, 0.2, 1.0]  # the losses before it are kept (the epoch's mean is never written)


def test_the_losses_keep_the_devices_tensors_until_read_back():
    losses = StepLosses([], sync_every=10)
    loss = torch.tensor(2.0, requires_grad=True) * 1.5
    losses.add(loss)
    assert losses.pending[0].requires_grad is False  # detached: no graph kept alive for the block
    assert losses.flush() == [3.0]


@pytest.mark.parametrize("deterministic", [True, False])
def test_cudnn_autotunes_only_runs_that_need_not_be_reproducible(deterministic):
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        trainer.seed_everything(0, not deterministic)  # the other setting first: the call must set both flags
        trainer.seed_everything(0, deterministic)
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.backends.cudnn.benchmark is (not deterministic)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_evaluation_copies_the_embeddings_to_the_host_once(monkeypatch):
    from engine.evaluation import embed_dataset

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((3,), float(i)), i % 2, i

    model = torch.nn.Linear(3, 4)
    copies = []
    to_host = torch.Tensor.cpu

    def counted(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return to_host(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    embeddings, labels = embed_dataset(model, Items(), batch_size=3, device=torch.device("cpu"))
    assert copies == [(10, 4)]  # the whole set at the end, not each of the 4 batches
    with torch.no_grad():
        expected = model(torch.stack([torch.full((3,), float(i)) for i in range(10)]))
    assert torch.allclose(embeddings, expected) and labels.tolist() == [i % 2 for i in range(10)]

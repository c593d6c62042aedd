"""Margin loss and distance-weighted miner against slow references written from the paper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine import losses, miners
from engine.miners.base import Miner, Triplets


class FixedMiner(Miner):
    name = "fixed"

    def __init__(self, triplets: list[tuple[int, int, int]]):
        self.triplets = triplets

    def mine(self, embeddings, labels):
        if not self.triplets:
            return Triplets.empty(embeddings.device)
        a, p, n = (torch.tensor(t) for t in zip(*self.triplets, strict=True))
        return Triplets(a, p, n)


def margin_reference(x, labels, beta, triplets, margin, nu):
    """Wu et al.: sum of active hinge terms (+ nu * sum beta) over the number of active pair terms."""
    total = x.new_zeros(())
    active = 0
    beta_sum = x.new_zeros(())
    for a, p, n in triplets:
        b = beta[labels[a]]
        d_ap = torch.sqrt(((x[a] - x[p]) ** 2).sum() + 1e-8)
        d_an = torch.sqrt(((x[a] - x[n]) ** 2).sum() + 1e-8)
        pos = torch.clamp(d_ap - b + margin, min=0)
        neg = torch.clamp(b - d_an + margin, min=0)
        total = total + pos + neg
        active += int(pos > 0) + int(neg > 0)
        beta_sum = beta_sum + b
    return (total + nu * beta_sum) / max(active, 1)


def all_triplets(labels):
    return [(a, p, n) for a in range(len(labels)) for p in range(len(labels)) for n in range(len(labels))
            if a != p and labels[a] == labels[p] and labels[n] != labels[a]]


@pytest.mark.parametrize("per_class", [2, 4])
@pytest.mark.parametrize("nu", [0.0, 0.1])
def test_margin_value_and_gradients_match_the_reference(per_class, nu):
    torch.manual_seed(per_class)
    labels_list = [c for c in range(4) for _ in range(per_class)] + [4]  # plus a singleton class
    labels = torch.tensor(labels_list)
    triplets = all_triplets(labels_list)
    x = F.normalize(torch.randn(len(labels_list), 8, dtype=torch.float64), dim=1).requires_grad_()
    loss = losses.create("margin", num_classes=5, embed_dim=8, miner=FixedMiner(triplets), beta=0.9, margin=0.3, nu=nu)
    loss = loss.double()
    value = loss(x, labels)
    value.backward()
    x_ref = x.detach().clone().requires_grad_()
    beta_ref = torch.full((5,), 0.9, dtype=torch.float64, requires_grad=True)
    expected = margin_reference(x_ref, labels_list, beta_ref, triplets, 0.3, nu)
    expected.backward()
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss.beta.grad.double(), beta_ref.grad, rtol=1e-6, atol=1e-9)


def test_margin_normaliser_counts_active_pair_terms_not_triplets():
    # One triplet where both terms are active: the normaliser is 2 (the original's bool OR gave 1).
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    loss = losses.create("margin", num_classes=2, embed_dim=2, miner=FixedMiner([(0, 1, 2)]), beta=0.7, margin=0.2)
    value = loss(x, torch.tensor([0, 0, 1]))
    pos, neg = 1.0 - 0.7 + 0.2, 0.7 - 0.5 + 0.2
    assert value.item() == pytest.approx((pos + neg) / 2, abs=1e-6)


def test_margin_float32_matches_float64():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    triplets = all_triplets(labels.tolist())
    x = F.normalize(torch.randn(8, 16), dim=1)
    f32 = losses.create("margin", num_classes=4, embed_dim=16, miner=FixedMiner(triplets))(x, labels)
    f64 = losses.create("margin", num_classes=4, embed_dim=16, miner=FixedMiner(triplets)).double()(x.double(), labels)
    assert f32.item() == pytest.approx(f64.item(), rel=1e-5)


def test_no_triplet_gives_zero_loss_with_working_backward():
    x = torch.randn(4, 8, requires_grad=True)
    loss = losses.create("margin", num_classes=1, embed_dim=8, miner=miners.create("distance"))
    value = loss(x, torch.zeros(4, dtype=torch.long))  # one class only: no negative exists
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_beta_constant_is_not_trained_and_groups_are_separate():
    trained = losses.create("margin", num_classes=3, embed_dim=4, miner=miners.create("distance"))
    groups = trained.param_groups(1e-5)
    assert len(groups) == 1 and groups[0]["lr"] == 5e-4 and groups[0]["weight_decay"] == 0.0
    assert groups[0]["params"][0] is trained.beta and trained.beta.shape == (3,)
    constant = losses.create("margin", num_classes=3, embed_dim=4, miner=miners.create("distance"), beta_constant=True)
    assert constant.param_groups(1e-5) == [] and not list(constant.parameters())


def test_loss_math_runs_in_float32_under_autocast():
    x = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.arange(8).repeat_interleave(2)
    loss = losses.create("margin", num_classes=8, embed_dim=8, miner=miners.create("distance"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.to(torch.bfloat16), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ------------------------------------------------------------------- distance miner


def inverse_density_weights(x, labels, anchor, lower_cutoff):
    """Loop reference of q(d)^-1 = d^(2-D) (1 - d²/4)^((3-D)/2) over the anchor's negatives."""
    dim = x.shape[1]
    weights = {}
    for j in range(len(labels)):
        if labels[j] == labels[anchor]:
            continue
        d = max(float(torch.linalg.norm(x[anchor] - x[j])), lower_cutoff)
        weights[j] = math.exp((2 - dim) * math.log(d) - ((dim - 3) / 2) * math.log(max(1 - d * d / 4, 1e-8)))
    total = sum(weights.values())
    return {j: w / total for j, w in weights.items()}


def test_distance_miner_samples_negatives_by_inverse_density():
    torch.manual_seed(1)
    dim = 4
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    x = F.normalize(torch.randn(8, dim), dim=1)
    miner = miners.create("distance", lower_cutoff=0.5)
    draws = 4000
    counts = torch.zeros(8)
    for _ in range(draws):
        t = miner(x, labels)
        counts[t.negatives[t.anchors == 0]] += 1
    expected = inverse_density_weights(x, labels.tolist(), 0, 0.5)
    for j in range(8):
        p = expected.get(j, 0.0)
        tolerance = 4 * math.sqrt(max(p * (1 - p), 1e-12) / draws) + 1e-9
        assert abs(counts[j].item() / draws - p) <= tolerance, (j, counts[j].item() / draws, p)


def test_distance_miner_triplet_structure():
    torch.manual_seed(2)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])  # class 2 is a singleton
    x = F.normalize(torch.randn(8, 16), dim=1)
    for _ in range(50):
        t = miners.create("distance")(x, labels)
        assert len(t) == 8  # every sample is an anchor
        assert torch.all(labels[t.negatives] != labels[t.anchors])
        assert torch.all(labels[t.positives] == labels[t.anchors])
        singleton = t.anchors == 5
        assert torch.all(t.positives[singleton] == 5)
        others = ~singleton
        assert torch.all(t.positives[others] != t.anchors[others])


def test_distance_miner_upper_cutoff_excludes_far_negatives_with_fallback():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [-0.6, 0.8]])  # d(0,2)=0.63, d(0,3)=1.79
    labels = torch.tensor([0, 0, 1, 2])
    miner = miners.create("distance", upper_cutoff=1.4)
    for _ in range(30):
        t = miner(x, labels)
        assert torch.all(t.negatives[t.anchors == 0] == 2)
    far = miners.create("distance", upper_cutoff=0.1)  # nothing within: falls back to every negative
    seen = {int(far(x, labels).negatives[0]) for _ in range(200)}
    assert seen == {2, 3}

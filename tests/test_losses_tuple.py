"""Tuple-based losses (triplet, contrastive, quadruplet, snr, lifted, npair, angular) and the
npair / lifted miners, against slow loop references written from the papers."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from engine import catalog, losses, miners
from engine.config.schema import Config
from engine.miners.base import AnchorSets, Miner, Triplets

TRIPLET_LOSSES = ["triplet", "contrastive", "quadruplet", "snr"]
SET_LOSSES = {"lifted": "lifted", "npair": "npair", "angular": "npair"}
ALL_LOSSES = TRIPLET_LOSSES + list(SET_LOSSES)

# Batch compositions: 2 per class, 4 per class, singleton classes mixed in, and a class drawn twice
# (class 0 has 4 samples among classes of 2: ragged negative sets).
COMPOSITIONS = {
    "two_per_class": [0, 0, 1, 1, 2, 2, 3, 3],
    "four_per_class": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
    "singletons": [0, 0, 1, 1, 1, 2, 3, 4, 4, 5],
    "class_twice": [0, 0, 1, 1, 0, 0, 2, 2, 3, 3],
}

PARAMS = {
    "triplet": {"margin": 0.3},
    "contrastive": {"pos_margin": 0.1, "neg_margin": 1.2},
    "quadruplet": {"margin_alpha_1": 0.3, "margin_alpha_2": 0.25},
    "snr": {"margin": 0.2, "reg_lambda": 0.01},
    "lifted": {"neg_margin": 1.0, "l2": 0.005},
    "npair": {"l2": 0.005},
    "angular": {"alpha": 40.0, "npair_ang_weight": 2.0, "npair_l2": 0.005},
}


class FixedMiner(Miner):
    name = "fixed"

    def __init__(self, triplets: list[tuple[int, int, int]]):
        self.triplets = triplets

    def mine(self, embeddings, labels):
        if not self.triplets:
            return Triplets.empty(embeddings.device)
        a, p, n = (torch.tensor(t) for t in zip(*self.triplets))
        return Triplets(a, p, n)


def all_triplets(labels):
    n = len(labels)
    return [(a, p, q) for a in range(n) for p in range(n) for q in range(n)
            if a != p and labels[a] == labels[p] and labels[q] != labels[a]]


def test_triplets(labels, seed=0, count=40):
    """A fixed subset of the valid triplets plus degenerate ones (positive = anchor, as the distance
    miner gives singletons and rho_distance gives for its push triplets)."""
    rng = random.Random(seed)
    valid = all_triplets(labels)
    chosen = rng.sample(valid, min(count, len(valid)))
    for a in range(len(labels)):
        if labels.count(labels[a]) == 1:
            chosen.append((a, a, (a + 1) % len(labels)))
    chosen.append((0, 0, next(i for i, y in enumerate(labels) if y != labels[0])))
    return chosen


test_triplets.__test__ = False  # a helper, not a test


def norm(v):
    return torch.linalg.vector_norm(v)


# ------------------------------------------------------------------ loop references


def triplet_reference(x, labels, triplets, margin):
    total = x.new_zeros(())
    for a, p, n in triplets:
        d_ap = sum((x[a, k] - x[p, k]) ** 2 for k in range(x.shape[1]))
        d_an = sum((x[a, k] - x[n, k]) ** 2 for k in range(x.shape[1]))
        total = total + torch.clamp(d_ap - d_an + margin, min=0)
    return total / len(triplets)


def contrastive_reference(x, labels, triplets, pos_margin, neg_margin):
    pos = x.new_zeros(())
    neg = x.new_zeros(())
    for a, p, n in triplets:
        pos = pos + torch.clamp(norm(x[a] - x[p]) - pos_margin, min=0)
        neg = neg + torch.clamp(neg_margin - norm(x[a] - x[n]), min=0)
    return pos / len(triplets) + neg / len(triplets)


def quadruplet_reference(x, labels, triplets, fourth, margin_alpha_1, margin_alpha_2):
    trip = x.new_zeros(())
    quad = x.new_zeros(())
    with_fourth = 0
    for t, (a, p, n) in enumerate(triplets):
        d_ap = norm(x[a] - x[p])
        trip = trip + torch.clamp(d_ap - norm(x[a] - x[n]) + margin_alpha_1, min=0)
        exists = any(labels[j] not in (labels[a], labels[n]) for j in range(len(labels)))
        if exists:
            k = fourth[t]
            assert labels[k] != labels[a] and labels[k] != labels[n]
            quad = quad + torch.clamp(d_ap - norm(x[n] - x[k]) + margin_alpha_2, min=0)
            with_fourth += 1
    return trip / len(triplets) + (quad / with_fourth if with_fourth else 0.0)


def variance(v):
    mean = sum(v) / len(v)
    return sum((e - mean) ** 2 for e in v) / (len(v) - 1)


def snr_reference(x, labels, triplets, margin, reg_lambda):
    total = x.new_zeros(())
    active = 0
    reg = x.new_zeros(())
    for a, p, n in triplets:
        signal = variance(list(x[a]))
        snr_ap = variance(list(x[p] - x[a])) / signal
        snr_an = variance(list(x[n] - x[a])) / signal
        term = torch.clamp(snr_ap - snr_an + margin, min=0)
        total = total + term
        active += int(term > 0)
        reg = reg + torch.abs(sum(x[a]))
    return total / max(active, 1) + reg_lambda * reg / len(triplets)


def mean_norm(x):
    return sum(norm(x[i]) for i in range(len(x))) / len(x)


def log_sum_exp(values):
    return torch.log(sum(torch.exp(v) for v in values))


def lifted_reference(x, labels, neg_margin, l2):
    terms = []
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not positives or not negatives:
            continue
        pos = log_sum_exp([norm(x[a] - x[p]) for p in positives])
        neg = log_sum_exp([neg_margin - norm(x[a] - x[n]) for n in negatives])
        terms.append(torch.clamp(pos + neg, min=0))
    if not terms:
        return x.sum() * 0
    return sum(terms) / len(terms) + l2 * mean_norm(x)


def npair_reference(x, labels, pairs, l2):
    """pairs: (anchor, its positive) as drawn by the miner."""
    terms = []
    for a, p in pairs:
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        inner = sum(torch.exp(x[a] @ x[n] - x[a] @ x[p]) for n in negatives)
        terms.append(torch.log(1 + inner))
    if not terms:
        return x.sum() * 0
    return sum(terms) / len(terms) + l2 * mean_norm(x)


def angular_reference(x, labels, pairs, alpha, npair_ang_weight, npair_l2):
    t = math.tan(math.radians(alpha)) ** 2
    ang_terms, np_terms = [], []
    for a, p in pairs:
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        xa, xp = x[a] / norm(x[a]), x[p] / norm(x[p])
        ang = 0
        npair = 0
        for n in negatives:
            xn = x[n] / norm(x[n])
            ang = ang + torch.exp(4 * t * (xa + xp) @ xn - 2 * (1 + t) * xa @ xp)
            npair = npair + torch.exp(x[a] @ (x[n] - x[p]))
        ang_terms.append(torch.log(1 + ang))
        np_terms.append(torch.log(1 + npair))
    if not ang_terms:
        return x.sum() * 0
    n_anchors = len(ang_terms)
    return sum(np_terms) / n_anchors + npair_ang_weight * sum(ang_terms) / n_anchors + npair_l2 * mean_norm(x)


def miner_pairs(sets: AnchorSets):
    positive = sets.positives.to(torch.uint8).argmax(1)
    return list(zip(sets.anchors.tolist(), positive.tolist()))


# ------------------------------------------------------------------ value and gradient checks


def embeddings(labels, dim=6, seed=0, dtype=torch.float64, normalise=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), dim, dtype=dtype, generator=generator)
    return F.normalize(x, dim=1) if normalise else x * 0.7


def run_and_reference(name, labels_list, seed=0):
    """(value, grad) of the loss and (value, grad) of the loop reference on the same tuples, float64."""
    labels = torch.tensor(labels_list)
    normalise = name not in ("npair",)  # N-pair runs on un-normalised embeddings
    x = embeddings(labels_list, seed=seed, normalise=normalise).requires_grad_()
    params = PARAMS[name]
    if name in TRIPLET_LOSSES:
        triplets = test_triplets(labels_list, seed)
        loss = losses.create(name, num_classes=10, embed_dim=6, miner=FixedMiner(triplets), **params).double()
        torch.manual_seed(seed)
        value = loss(x, labels)
        x_ref = x.detach().clone().requires_grad_()
        if name == "triplet":
            expected = triplet_reference(x_ref, labels_list, triplets, **params)
        elif name == "contrastive":
            expected = contrastive_reference(x_ref, labels_list, triplets, **params)
        elif name == "snr":
            expected = snr_reference(x_ref, labels_list, triplets, **params)
        else:
            torch.manual_seed(seed)  # the same fourth-sample draw as inside the loss
            a, p, n = (torch.tensor(t) for t in zip(*triplets))
            fourth, _ = loss.fourth_samples(labels, a, n)
            expected = quadruplet_reference(x_ref, labels_list, triplets, fourth.tolist(), **params)
    else:
        miner = miners.create(SET_LOSSES[name])
        loss = losses.create(name, num_classes=10, embed_dim=6, miner=miner, **params).double()
        torch.manual_seed(seed)
        value = loss(x, labels)
        torch.manual_seed(seed)  # the miner sees the same RNG state: the same positives
        sets = miner(x, labels)
        x_ref = x.detach().clone().requires_grad_()
        if name == "lifted":
            expected = lifted_reference(x_ref, labels_list, **params)
        elif name == "npair":
            expected = npair_reference(x_ref, labels_list, miner_pairs(sets), **params)
        else:
            expected = angular_reference(x_ref, labels_list, miner_pairs(sets), **params)
    value.backward()
    expected.backward()
    return value, x.grad, expected, x_ref.grad


@pytest.mark.parametrize("composition", list(COMPOSITIONS))
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_value_and_gradients_match_the_loop_reference(name, composition):
    value, grad, expected, grad_ref = run_and_reference(name, COMPOSITIONS[composition], seed=len(composition))
    assert value.dtype == torch.float64
    assert expected.item() > 0  # the check is not vacuous
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-7, atol=1e-10)
    assert grad.abs().sum() > 0


def make_loss(name, *, dtype=torch.float32, num_classes=8, embed_dim=16, **extra):
    miner = FixedMinerFromAll() if name in TRIPLET_LOSSES else miners.create(SET_LOSSES[name])
    loss = losses.create(name, num_classes=num_classes, embed_dim=embed_dim, miner=miner, **{**PARAMS[name], **extra})
    return loss.to(dtype)


class FixedMinerFromAll(Miner):
    """Every valid triplet of the batch (deterministic)."""

    name = "all_triplets"

    def mine(self, embeddings, labels):
        triplets = all_triplets(labels.tolist())
        if not triplets:
            return Triplets.empty(embeddings.device)
        a, p, n = (torch.tensor(t) for t in zip(*triplets))
        return Triplets(a, p, n)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_float32_agrees_with_float64(name):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 4])
    x = embeddings(labels.tolist(), dim=16, seed=3, dtype=torch.float32, normalise=name != "npair")
    torch.manual_seed(7)
    f32 = make_loss(name)(x, labels)
    torch.manual_seed(7)
    f64 = make_loss(name, dtype=torch.float64)(x.double(), labels)
    assert f32.dtype == torch.float32 and f64.dtype == torch.float64
    assert f32.item() == pytest.approx(f64.item(), rel=1e-5)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bf16_autocast_gives_finite_float32(name):
    labels = torch.arange(8).repeat_interleave(2)
    x = F.normalize(torch.randn(16, 16), dim=1).requires_grad_()
    loss = make_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.to(torch.bfloat16), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_one_class_batch_gives_exact_zero_with_working_backward(name):
    labels = torch.zeros(5, dtype=torch.long)
    x = torch.randn(5, 16, requires_grad=True)
    miner = miners.create("distance") if name in TRIPLET_LOSSES else miners.create(SET_LOSSES[name])
    loss = losses.create(name, num_classes=1, embed_dim=16, miner=miner)
    value = loss(x, labels)
    value.backward()
    assert value.item() == 0.0 and not torch.isnan(value)
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_all_singletons_batch_gives_zero(name):
    labels = torch.arange(6)  # no positive anywhere
    x = torch.randn(6, 8, requires_grad=True)
    if name in TRIPLET_LOSSES:
        loss = losses.create(name, num_classes=6, embed_dim=8, miner=FixedMinerFromAll())
    else:
        loss = losses.create(name, num_classes=6, embed_dim=8, miner=miners.create(SET_LOSSES[name]))
    value = loss(x, labels)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_losses_declare_their_miner_outputs_and_build_from_config():
    config = Config()
    for name in TRIPLET_LOSSES:
        assert losses.LOSSES.get(name).MINER_OUTPUTS == ("triplets",)
        catalog.check_miner(name, "distance")
        with pytest.raises(ValueError):
            catalog.check_miner(name, "npair")
    for name, miner in SET_LOSSES.items():
        catalog.check_miner(name, miner)
        with pytest.raises(ValueError):
            catalog.check_miner(name, "distance")
    for name in ALL_LOSSES:
        cls = losses.LOSSES.get(name)
        assert cls.REQUIRES_MINER
        with pytest.raises(ValueError):
            losses.create(name, num_classes=3, embed_dim=4)
        built = cls.from_config(config, 3, miners.create("distance"))
        assert isinstance(built, cls) and not built.param_groups(1e-5)


def test_set_losses_reject_triplets():
    loss = losses.create("lifted", num_classes=2, embed_dim=4, miner=miners.create("distance"))
    with pytest.raises(TypeError):
        loss(torch.randn(4, 4), torch.tensor([0, 0, 1, 1]))


# ------------------------------------------------------------------ departures and formula details


def test_triplet_uses_squared_distances():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.05]])
    loss = losses.create("triplet", num_classes=2, embed_dim=2, miner=FixedMiner([(0, 1, 2)]), margin=0.2)
    assert loss(x, torch.tensor([0, 0, 1])).item() == pytest.approx(1.0 - 1.05**2 + 0.2, abs=1e-6)  # not 0.15


def test_contrastive_uses_plain_distances_averaged_per_part():
    x = torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.3, 0.4], [3.0, 4.0]])
    triplets = [(0, 1, 2), (0, 1, 3)]  # d(a,p) = 1, d(a,n) = 0.5 and 5
    loss = losses.create("contrastive", num_classes=2, embed_dim=2, miner=FixedMiner(triplets), pos_margin=0.2,
                         neg_margin=1.0)
    expected = (0.8 + 0.8) / 2 + (0.5 + 0.0) / 2
    assert loss(x, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_and_quadruplet_survive_a_positive_equal_to_the_anchor():
    x = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2])
    for name in ("contrastive", "quadruplet"):
        value = losses.create(name, num_classes=3, embed_dim=5, miner=FixedMiner([(0, 0, 2)]))(x, labels)
        value.backward()
        assert torch.isfinite(x.grad).all()


def test_quadruplet_fourth_sample_class_differs_from_anchor_and_negative_uniformly():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    anchors = torch.tensor([0, 2, 4, 0])
    negatives = torch.tensor([2, 4, 7, 7])
    draws = 3000
    counts = torch.zeros(len(anchors), len(labels))
    torch.manual_seed(0)
    for _ in range(draws):
        fourth, valid = losses.LOSSES.get("quadruplet").fourth_samples(labels, anchors, negatives)
        assert valid.all()
        counts[torch.arange(len(anchors)), fourth] += 1
    for t in range(len(anchors)):
        allowed = [j for j in range(len(labels)) if labels[j] not in (labels[anchors[t]], labels[negatives[t]])]
        assert set(counts[t].nonzero().squeeze(1).tolist()) == set(allowed)
        p = 1 / len(allowed)
        tolerance = 4 * math.sqrt(p * (1 - p) / draws)
        for j in allowed:
            assert abs(counts[t, j].item() / draws - p) <= tolerance


def test_quadruplet_without_a_fourth_class_is_the_triplet_part_only():
    labels = torch.tensor([0, 0, 1, 1])  # two classes: no sample differs from both a's and n's class
    x = embeddings(labels.tolist(), seed=5)
    triplets = all_triplets(labels.tolist())
    quad = losses.create("quadruplet", num_classes=2, embed_dim=6, miner=FixedMiner(triplets), margin_alpha_1=0.5)
    triplet_part = 0.0
    for a, p, n in triplets:
        triplet_part += max(norm(x[a] - x[p]).item() - norm(x[a] - x[n]).item() + 0.5, 0.0)
    assert quad.double()(x, labels).item() == pytest.approx(triplet_part / len(triplets), rel=1e-9)
    # With a third class present, triplets do get a quadruplet term.
    labels3 = torch.tensor([0, 0, 1, 1, 2])
    x3 = embeddings(labels3.tolist(), seed=5)
    _, valid = quad.fourth_samples(labels3, torch.tensor([0, 2]), torch.tensor([2, 4]))
    assert valid.tolist() == [True, True]
    _, valid = quad.fourth_samples(labels, torch.tensor([0]), torch.tensor([2]))
    assert valid.tolist() == [False]
    assert torch.isfinite(quad(x3.float(), labels3))


def test_snr_keeps_reg_lambda_with_distance_miner():
    labels = torch.arange(6).repeat_interleave(2)
    x = F.normalize(torch.randn(12, 16), dim=1)
    values = {}
    for reg in (0.0, 0.05):
        torch.manual_seed(3)
        values[reg] = losses.create("snr", num_classes=6, embed_dim=16, miner=miners.create("distance"),
                                    reg_lambda=reg)(x, labels).item()
    torch.manual_seed(3)
    triplets = miners.create("distance")(x, labels)
    reg_term = x[triplets.anchors].sum(1).abs().mean().item()
    assert values[0.05] - values[0.0] == pytest.approx(0.05 * reg_term, rel=1e-4)
    assert reg_term > 0


def test_snr_without_active_term_is_zero_not_nan():
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.randn(4, 8, requires_grad=True)
    triplets = [(0, 1, 2), (2, 3, 0)]
    loss = losses.create("snr", num_classes=2, embed_dim=8, miner=FixedMiner(triplets), margin=-1e6, reg_lambda=0.0)
    value = loss(x, labels)
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    with_reg = losses.create("snr", num_classes=2, embed_dim=8, miner=FixedMiner(triplets), margin=-1e6, reg_lambda=0.1)
    expected = 0.1 * (x[0].sum().abs() + x[2].sum().abs()) / 2
    assert with_reg(x, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def wrong_axis_lifted(x, labels, neg_margin, l2):
    """The original's lifted loss on current PyTorch: PairwiseDistance on (1,D,1) and (1,D,|S|) tensors
    reduces over the set, giving one value per embedding coordinate."""
    pdist = torch.nn.PairwiseDistance(p=2)
    terms = []
    for a in range(len(labels)):
        pos = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        anchor = x[a].view(1, -1, 1)
        d_pos = pdist(anchor, x[pos].T.unsqueeze(0))  # (1, D): per coordinate, not per positive
        d_neg = pdist(anchor, x[neg].T.unsqueeze(0))
        assert d_pos.shape == (1, x.shape[1])
        terms.append(torch.relu(torch.logsumexp(d_pos, 1) + torch.logsumexp(neg_margin - d_neg, 1)))
    return torch.stack(terms).mean() + l2 * x.norm(dim=1).mean()


def test_lifted_distances_run_over_the_embedding_dimension():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    x = embeddings(labels, dim=5, seed=11)
    loss = losses.create("lifted", num_classes=3, embed_dim=5, miner=miners.create("lifted")).double()
    value = loss(x, torch.tensor(labels))
    correct = lifted_reference(x, labels, 1.0, 0.005)
    wrong = wrong_axis_lifted(x, labels, 1.0, 0.005)
    assert value.item() == pytest.approx(correct.item(), rel=1e-10)
    assert abs(value.item() - wrong.item()) > 1e-2


def test_lifted_regulariser_is_mean_norm_of_the_batch():
    labels = torch.tensor([0, 0, 1, 1, 2])
    x = embeddings(labels.tolist(), seed=2, normalise=False)
    base = losses.create("lifted", num_classes=3, embed_dim=6, miner=miners.create("lifted"), l2=0.0).double()
    reg = losses.create("lifted", num_classes=3, embed_dim=6, miner=miners.create("lifted"), l2=0.5).double()
    assert (reg(x, labels) - base(x, labels)).item() == pytest.approx(0.5 * x.norm(dim=1).mean().item(), rel=1e-10)


def test_npair_regulariser_is_the_norm_not_squared_and_no_scaling():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x = embeddings(labels.tolist(), seed=4, normalise=False) * 3
    values = {}
    for l2 in (0.0, 0.5):
        torch.manual_seed(1)
        values[l2] = losses.create("npair", num_classes=3, embed_dim=6, miner=miners.create("npair"), l2=l2).double()(
            x, labels).item()
    assert values[0.5] - values[0.0] == pytest.approx(0.5 * x.norm(dim=1).mean().item(), rel=1e-10)
    torch.manual_seed(1)
    pairs = miner_pairs(miners.create("npair")(x, labels))
    assert values[0.0] == pytest.approx(npair_reference(x, labels.tolist(), pairs, 0.0).item(), rel=1e-10)


@pytest.mark.parametrize("arch, override, scale", [("bninception", None, 0.25), ("bninception_frozen", None, 0.25),
                                                   ("resnet50_frozen", None, 1.0), ("bninception", 0.5, 0.5)])
def test_npair_input_scale_follows_the_backbone_unless_set(arch, override, scale):
    """The original divides BN-Inception embeddings by 4 before the n-pair loss (regulariser included)."""
    config = Config.model_validate({"model": {"arch": arch, "embed_dim": 6}, "loss": {"name": "npair",
                                    "npair": {"input_scale": override}}, "miner": {"name": "npair"}})
    loss = losses.from_config(config, num_classes=3).double()
    assert loss.input_scale == scale
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x = embeddings(labels.tolist(), seed=4, normalise=False) * 3
    torch.manual_seed(1)
    value = loss(x, labels).item()
    torch.manual_seed(1)
    pairs = miner_pairs(miners.create("npair")(x, labels))
    scaled = x * scale
    expected = npair_reference(scaled, labels.tolist(), pairs, 0.0) + 0.005 * scaled.norm(dim=1).mean()
    assert value == pytest.approx(expected.item(), rel=1e-10)


def test_angular_ragged_negatives_match_the_reference():
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3]  # negatives per anchor: 7, 11, 11, 10
    x = embeddings(labels, seed=9)
    miner = miners.create("npair")
    torch.manual_seed(2)
    sets = miner(x, torch.tensor(labels))
    assert sorted(set(sets.negatives.sum(1).tolist())) == [7, 10, 11]
    xg = x.clone().requires_grad_()
    torch.manual_seed(2)
    value = losses.create("angular", num_classes=4, embed_dim=6, miner=miner).double()(xg, torch.tensor(labels))
    xr = x.clone().requires_grad_()
    expected = angular_reference(xr, labels, miner_pairs(sets), 45.0, 2.0, 0.005)
    value.backward()
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ["npair", "angular", "lifted"])
def test_large_logits_stay_finite(name):
    labels = torch.arange(4).repeat_interleave(2)
    x = (torch.randn(8, 16) * 30).requires_grad_()  # N-pair logits far beyond the original's ±50 clamp
    value = losses.create(name, num_classes=4, embed_dim=16, miner=miners.create(SET_LOSSES[name]))(x, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------ npair / lifted miners


@pytest.mark.parametrize("composition", list(COMPOSITIONS))
def test_npair_miner_mask_structure(composition):
    labels = torch.tensor(COMPOSITIONS[composition])
    x = torch.randn(len(labels), 4)
    miner = miners.create("npair")
    assert miner.OUTPUT == "npair"
    for _ in range(20):
        sets = miner(x, labels)
        assert isinstance(sets, AnchorSets)
        expected_anchors = [i for i in range(len(labels)) if (labels == labels[i]).sum() > 1]
        assert sets.anchors.tolist() == expected_anchors
        assert sets.positives.dtype == torch.bool and sets.positives.shape == (len(expected_anchors), len(labels))
        assert torch.all(sets.positives.sum(1) == 1)
        rows = torch.arange(len(sets))
        assert not sets.positives[rows, sets.anchors].any() and not sets.negatives[rows, sets.anchors].any()
        for r, a in enumerate(sets.anchors.tolist()):
            assert torch.equal(sets.negatives[r], labels != labels[a])
            p = int(sets.positives[r].nonzero())
            assert labels[p] == labels[a] and p != a


def test_npair_miner_draws_positives_uniformly():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    counts = torch.zeros(6)
    torch.manual_seed(0)
    draws = 3000
    for _ in range(draws):
        sets = miners.create("npair")(torch.zeros(6, 3), labels)
        counts += sets.positives[0].float()  # anchor 0
    assert counts[0] == 0 and counts[4:].sum() == 0
    for j in (1, 2, 3):
        assert abs(counts[j].item() / draws - 1 / 3) <= 4 * math.sqrt(2 / 9 / draws)


def test_npair_miner_is_reproducible_with_the_torch_seed():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    torch.manual_seed(5)
    first = miners.create("npair")(torch.zeros(8, 2), labels)
    torch.manual_seed(5)
    second = miners.create("npair")(torch.zeros(8, 2), labels)
    assert torch.equal(first.positives, second.positives)


@pytest.mark.parametrize("composition", list(COMPOSITIONS))
def test_lifted_miner_mask_structure(composition):
    labels = torch.tensor(COMPOSITIONS[composition])
    sets = miners.create("lifted")(torch.randn(len(labels), 4), labels)
    assert miners.create("lifted").OUTPUT == "lifted"
    counts = torch.bincount(labels)
    expected_anchors = [i for i in range(len(labels)) if counts[labels[i]] > 1]
    assert sets.anchors.tolist() == expected_anchors
    rows = torch.arange(len(sets))
    assert torch.equal(sets.positives.sum(1), counts[labels[sets.anchors]] - 1)
    assert torch.equal(sets.negatives.sum(1), len(labels) - counts[labels[sets.anchors]])
    assert not sets.positives[rows, sets.anchors].any() and not sets.negatives[rows, sets.anchors].any()
    same = labels[sets.anchors][:, None] == labels[None, :]
    assert not (sets.positives & ~same).any() and not (sets.negatives & same).any()
    assert not (sets.positives & sets.negatives).any()


@pytest.mark.parametrize("name", ["npair", "lifted"])
def test_structural_miners_without_positives_return_empty_sets(name):
    sets = miners.create(name)(torch.randn(5, 3), torch.arange(5))
    assert len(sets) == 0 and sets.positives.shape == (0, 5) and sets.negatives.shape == (0, 5)

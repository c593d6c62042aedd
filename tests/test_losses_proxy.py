"""Miner-free losses (multi-similarity, histogram, ProxyNCA, NormSoftmax, ArcFace, SoftTriple)
against slow loop references written from the papers, in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from engine import catalog, losses
from engine.config.schema import Config
from engine.losses.base import normalize_last, normalize_last_backward, unit_rows
from engine.losses.histogram import soft_histogram

NAMES = ["multisimilarity", "histogram", "proxynca", "softmax", "arcface", "softtriplet"]
PARAMETRIC = {"proxynca": "proxies", "softmax": "weight", "arcface": "weight", "softtriplet": "centres"}
# Non-default parameters, so the references check that every parameter is used.
PARAMS = {
    "multisimilarity": dict(pos_weight=3.0, neg_weight=20.0, margin=0.2, thresh=0.4),
    "histogram": dict(nbins=9),
    "proxynca": dict(lrmulti=20.0),
    "softmax": dict(lr=1e-3, temperature=0.1),
    "arcface": dict(lr=1e-3, angular_margin=0.4, feature_scale=8.0),
    "softtriplet": dict(n_centroids=3, margin_delta=0.05, gamma=0.2, lambda_=5.0, reg_weight=0.3, lrmulti=2.0),
}
DIM = 6


# ----------------------------------------------------------------------------- references


def ms_reference(x, labels, pos_weight, neg_weight, margin, thresh):
    """Wang et al.: per-anchor pair mining, then the two soft terms; sum / batch size."""
    total = x.new_zeros(())
    n = len(labels)
    for i in range(n):
        pos = [x[i] @ x[j] for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [x[i] @ x[j] for j in range(n) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        min_pos, max_neg = min(float(s.detach()) for s in pos), max(float(s.detach()) for s in neg)
        kept_neg = [s for s in neg if float(s.detach()) + margin > min_pos]
        kept_pos = [s for s in pos if float(s.detach()) - margin < max_neg]
        if not kept_pos or not kept_neg:
            continue
        pos_sum = sum(torch.exp(-pos_weight * (s - thresh)) for s in kept_pos)
        neg_sum = sum(torch.exp(neg_weight * (s - thresh)) for s in kept_neg)
        total = total + torch.log(1 + pos_sum) / pos_weight + torch.log(1 + neg_sum) / neg_weight
    return total / n


def hist_reference(sims, nbins):
    """Ustinova & Lempitsky: each similarity goes to bins k and k+1 around it, linearly."""
    step = 2.0 / (nbins - 1)
    h = [sims.new_zeros(()) for _ in range(nbins)]
    for s in sims:
        k = min(int(math.floor((float(s.detach()) + 1) / step)), nbins - 2)
        t_k, t_k1 = -1 + k * step, -1 + (k + 1) * step
        h[k] = h[k] + (t_k1 - s) / step
        h[k + 1] = h[k + 1] + (s - t_k) / step
    return [v / max(len(sims), 1) for v in h]


def histogram_reference(x, labels, nbins):
    n = len(labels)
    pos = [x[i] @ x[j] for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    neg = [x[i] @ x[j] for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
    h_pos = hist_reference(torch.stack(pos), nbins) if pos else [0.0] * nbins
    h_neg = hist_reference(torch.stack(neg), nbins) if neg else [0.0] * nbins
    total = x.new_zeros(())
    for r in range(nbins):
        cdf = sum(h_pos[q] for q in range(r + 1))
        total = total + h_neg[r] * cdf
    return total


def proxynca_reference(x, labels, proxies):
    total = x.new_zeros(())
    for i in range(len(labels)):
        xi = 3 * x[i] / torch.linalg.norm(x[i])
        dists = [((xi - 3 * p / torch.linalg.norm(p)) ** 2).sum() for p in proxies]
        denominator = sum(torch.exp(-d) for c, d in enumerate(dists) if c != labels[i])
        total = total + dists[labels[i]] + torch.log(denominator)
    return total / len(labels)


def cross_entropy_reference(logits, y):
    return -logits[y] + torch.log(sum(torch.exp(v) for v in logits))


def softmax_reference(x, labels, weight, temperature):
    total = x.new_zeros(())
    for i in range(len(labels)):
        logits = [x[i] @ w / torch.linalg.norm(w) / temperature for w in weight]
        total = total + cross_entropy_reference(logits, labels[i])
    return total / len(labels)


def arcface_reference(x, labels, weight, margin, scale):
    total = x.new_zeros(())
    for i in range(len(labels)):
        xi = x[i] / torch.linalg.norm(x[i])
        cos = [xi @ w / torch.linalg.norm(w) for w in weight]
        y = labels[i]
        if float(cos[y].detach()) > math.cos(math.pi - margin):
            phi = torch.cos(torch.acos(cos[y]) + margin)
        else:
            phi = cos[y] - math.sin(math.pi - margin) * margin
        logits = [scale * (phi if c == y else cos[c]) for c in range(len(weight))]
        total = total + cross_entropy_reference(logits, y)
    return total / len(labels)


def softtriple_reference(x, labels, centres, num_classes, k, delta, gamma, lam, tau):
    """Qian et al.: softmax over each class's K unit centres with scale 1/gamma."""
    unit = [centres[:, j] / torch.linalg.norm(centres[:, j]) for j in range(centres.shape[1])]
    total = x.new_zeros(())
    for i in range(len(labels)):
        logits = []
        for c in range(num_classes):
            sims = [x[i] @ unit[c * k + m] for m in range(k)]
            z = sum(torch.exp(s / gamma) for s in sims)
            s_c = sum(torch.exp(s / gamma) / z * s for s in sims)
            logits.append(lam * (s_c - (delta if c == labels[i] else 0.0)))
        total = total + cross_entropy_reference(logits, labels[i])
    loss = total / len(labels)
    if k > 1:
        reg = x.new_zeros(())
        for c in range(num_classes):
            for a in range(k):
                for b in range(a + 1, k):
                    reg = reg + torch.sqrt(2 + 1e-5 - 2 * unit[c * k + a] @ unit[c * k + b])
        loss = loss + tau * reg / (num_classes * k * (k - 1))
    return loss


def reference(name, x, labels, param):
    p = PARAMS[name]
    if name == "multisimilarity":
        return ms_reference(x, labels, p["pos_weight"], p["neg_weight"], p["margin"], p["thresh"])
    if name == "histogram":
        return histogram_reference(x, labels, p["nbins"])
    if name == "proxynca":
        return proxynca_reference(x, labels, param)
    if name == "softmax":
        return softmax_reference(x, labels, param, p["temperature"])
    if name == "arcface":
        return arcface_reference(x, labels, param, p["angular_margin"], p["feature_scale"])
    return softtriple_reference(x, labels, param, NUM_CLASSES, p["n_centroids"], p["margin_delta"], p["gamma"],
                                p["lambda_"], p["reg_weight"])


NUM_CLASSES = 6


def batch(per_class, seed, dtype=torch.float64):
    """3 classes with `per_class` samples each, plus two singleton classes (class 5 is absent)."""
    g = torch.Generator().manual_seed(seed)
    labels = [c for c in range(3) for _ in range(per_class)] + [3, 4]
    x = F.normalize(torch.randn(len(labels), DIM, generator=g, dtype=dtype), dim=1)
    return x, labels


def make(name, dtype=torch.float64, seed=0):
    loss = losses.create(name, num_classes=NUM_CLASSES, embed_dim=DIM, **PARAMS[name])
    loss = loss.to(dtype)
    if name in PARAMETRIC:
        param = getattr(loss, PARAMETRIC[name])
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64) * 0.5)
    return loss


# ----------------------------------------------------------------------------- value and gradients


@pytest.mark.parametrize("per_class", [2, 4])
@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradients_match_the_reference(name, per_class):
    x, labels = batch(per_class, seed=per_class)
    loss = make(name, seed=per_class)
    if name == "arcface":
        # Push sample 0 beyond pi - m from its class weight, to cover the fallback branch.
        with torch.no_grad():
            loss.weight[labels[0]] = -x[0] + 0.05 * loss.weight[labels[0]]
    x = x.clone().requires_grad_()
    value = loss(x, torch.tensor(labels))
    value.backward()

    x_ref = x.detach().clone().requires_grad_()
    param_ref = None
    if name in PARAMETRIC:
        param_ref = getattr(loss, PARAMETRIC[name]).detach().clone().requires_grad_()
    expected = reference(name, x_ref, labels, param_ref)
    expected.backward()

    assert value.dtype == torch.float64
    assert expected.item() != 0.0
    torch.testing.assert_close(value, expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    assert x.grad.abs().sum() > 0
    if name in PARAMETRIC:
        grad = getattr(loss, PARAMETRIC[name]).grad
        torch.testing.assert_close(grad, param_ref.grad, rtol=1e-6, atol=1e-9)
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name):
    x, labels = batch(4, seed=7, dtype=torch.float32)
    f32 = make(name, dtype=torch.float32, seed=7)
    f64 = copy.deepcopy(f32).double()
    y = torch.tensor(labels)
    v32 = f32(x, y)
    v64 = f64(x.double(), y)
    assert v32.dtype == torch.float32
    assert v32.item() == pytest.approx(v64.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_with_float32_parameters_stays_float64(name):
    x, labels = batch(2, seed=3)
    value = make(name, dtype=torch.float32, seed=3)(x, torch.tensor(labels))
    assert value.dtype == torch.float64 and torch.isfinite(value)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_gives_finite_float32(name):
    x, labels = batch(2, seed=5, dtype=torch.float32)
    loss = make(name, dtype=torch.float32, seed=5)
    x = x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.to(torch.bfloat16), torch.tensor(labels))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- degenerate batches


def assert_zero_with_backward(loss, x, labels):
    x = x.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    assert value.item() == 0.0
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["multisimilarity", "histogram"])
def test_one_class_or_all_singletons_gives_zero(name):
    x = F.normalize(torch.randn(6, DIM), dim=1)
    assert_zero_with_backward(make(name, dtype=torch.float32), x, torch.zeros(6, dtype=torch.long))
    assert_zero_with_backward(make(name, dtype=torch.float32), x, torch.arange(6))
    assert_zero_with_backward(make(name, dtype=torch.float32), x[:1], torch.zeros(1, dtype=torch.long))


def test_multisimilarity_every_anchor_mined_out_gives_zero():
    # Positives identical, negatives opposite: no negative passes S_n + eps > min S_p (the original crashed).
    e = torch.eye(DIM)[0]
    x = torch.stack([e, e, -e, -e])
    assert_zero_with_backward(losses.create("multisimilarity", num_classes=2, embed_dim=DIM), x,
                              torch.tensor([0, 0, 1, 1]))


def test_proxynca_single_class_gives_zero():
    loss = losses.create("proxynca", num_classes=1, embed_dim=DIM)
    assert_zero_with_backward(loss, F.normalize(torch.randn(4, DIM), dim=1), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- parameters and groups


@pytest.mark.parametrize("name", NAMES)
def test_param_groups(name):
    loss = losses.create(name, num_classes=5, embed_dim=DIM, **PARAMS[name])
    groups = loss.param_groups(1e-5)
    if name not in PARAMETRIC:
        assert groups == [] and not list(loss.parameters())
        return
    expected_lr = {"proxynca": 1e-5 * 20.0, "softmax": 1e-3, "arcface": 1e-3, "softtriplet": 1e-5 * 2.0}[name]
    assert len(groups) == 1
    (group,) = groups
    assert group["lr"] == pytest.approx(expected_lr) and group["weight_decay"] == 0.0
    assert group["name"] == f"loss.{name}.{PARAMETRIC[name]}"
    assert [id(p) for p in group["params"]] == [id(p) for p in loss.parameters()]
    assert group["params"][0] is getattr(loss, PARAMETRIC[name])


def test_default_learning_rates_are_the_originals():
    base = 1e-5
    lr = {n: losses.create(n, num_classes=3, embed_dim=4).param_groups(base)[0]["lr"] for n in PARAMETRIC}
    assert lr["proxynca"] == pytest.approx(5e-4) and lr["softmax"] == 1e-5 and lr["arcface"] == 5e-4
    assert lr["softtriplet"] == pytest.approx(1e-5)


def test_parameter_shapes_and_initialisation():
    torch.manual_seed(0)
    c, d, k = 50, 64, 3
    proxies = losses.create("proxynca", num_classes=c, embed_dim=d).proxies
    assert proxies.shape == (c, d) and proxies.std().item() == pytest.approx(1 / 8, rel=0.05)
    for name in ("softmax", "arcface"):
        w = losses.create(name, num_classes=c, embed_dim=d).weight
        bound = 1 / math.sqrt(d)
        assert w.shape == (c, d) and w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    centres = losses.create("softtriplet", num_classes=c, embed_dim=d, n_centroids=k).centres
    bound = 1 / math.sqrt(c * k)
    assert centres.shape == (d, c * k) and centres.abs().max() <= bound and centres.abs().max() > 0.9 * bound


@pytest.mark.parametrize("name", NAMES)
def test_built_from_config(name):
    overrides = {"softtriplet": {"lambda": 3.0}}.get(name, {})
    config = Config(loss={"name": name, name: overrides})
    loss = losses.from_config(config, num_classes=7)
    assert loss.name == name and loss.miner is None and not catalog.uses_miner(name)
    if name == "softtriplet":
        assert loss.lambda_ == 3.0 and loss.centres.shape == (config.model.embed_dim, 14)


# ----------------------------------------------------------------------------- departures from the original


def test_histogram_of_hand_made_similarities():
    # 5 bins at -1, -0.5, 0, 0.5, 1: -1 -> bin 0; 0 -> bin 2; 0.25 -> half in bins 2 and 3; 1 -> bin 4.
    h = soft_histogram(torch.tensor([-1.0, 0.0, 0.25, 1.0]), 5)
    torch.testing.assert_close(h, torch.tensor([1.0, 0.0, 1.5, 0.5, 1.0]) / 4)
    assert soft_histogram(torch.empty(0), 5).sum() == 0


def test_histogram_loss_of_a_hand_made_batch():
    # labels 0, 0, 1: the positive pair has s = 0.75, the negatives s = 0 and s = sin(acos 0.75).
    x = torch.tensor([[1.0, 0.0], [0.75, math.sqrt(1 - 0.75**2)], [0.0, 1.0]])
    value = losses.create("histogram", num_classes=2, embed_dim=2, nbins=5)(x, torch.tensor([0, 0, 1]))
    s = math.sqrt(1 - 0.75**2)  # 0.661: between bins 0.5 and 1
    cdf_pos = [0, 0, 0, 0.5, 1.0]  # 0.75 is half in bin 0.5, half in bin 1
    h_neg = [0, 0, 0.5, 0.5 * (1 - s) / 0.5, 0.5 * (s - 0.5) / 0.5]
    assert value.item() == pytest.approx(sum(a * b for a, b in zip(h_neg, cdf_pos)), abs=1e-6)


def test_multisimilarity_divides_by_the_batch_size():
    # Two singleton anchors are skipped but still count in the normaliser 1/m (paper; the original: mean over kept).
    x, labels = batch(2, seed=11)
    loss = make("multisimilarity")
    full = loss(x, torch.tensor(labels))
    keep_pos, keep_neg = loss.mine(x @ x.T, torch.tensor(labels))
    kept = (keep_pos.any(1) & keep_neg.any(1)).sum().item()
    assert kept <= len(labels) - 2  # at least the two singletons
    total = full * len(labels)
    assert full.item() == pytest.approx(total.item() / len(labels)) and full.item() < total.item() / kept


def test_proxynca_leaves_the_positive_out_of_the_denominator():
    x = F.normalize(torch.randn(1, DIM, dtype=torch.float64), dim=1)
    loss = losses.create("proxynca", num_classes=2, embed_dim=DIM).double()
    value = loss(x, torch.tensor([0]))
    d = ((3 * x[0] - 3 * F.normalize(loss.proxies, dim=1)) ** 2).sum(1)
    assert value.item() == pytest.approx((d[0] - d[1]).item(), rel=1e-10)


def test_arcface_negative_cosines_are_not_floored():
    loss = losses.create("arcface", num_classes=3, embed_dim=2, angular_margin=0.5, feature_scale=10.0).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(0.75)], [-1.0, 0.0]]))
    a = 0.2  # x at angle a; class weights at angles 0, 2pi/3 and pi
    x = torch.tensor([[math.cos(a), math.sin(a)]], dtype=torch.float64, requires_grad=True)
    logits = loss.logits(x, torch.tensor([0]))
    # Target: s cos(a + m); non-targets keep their negative cosines (the original floored them to ~0).
    expected = [10 * math.cos(a + 0.5), 10 * math.cos(2 * math.pi / 3 - a), -10 * math.cos(a)]
    assert expected[1] < 0 and expected[2] < 0
    torch.testing.assert_close(logits[0], torch.tensor(expected, dtype=torch.float64))
    loss(x, torch.tensor([0])).backward()
    assert loss.weight.grad[1].abs().sum() > 0 and loss.weight.grad[2].abs().sum() > 0


def test_arcface_margin_only_on_the_target_and_fallback_beyond_pi_minus_m():
    m = 0.5
    loss = losses.create("arcface", num_classes=2, embed_dim=2, angular_margin=m, feature_scale=1.0).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    for theta in (0.3, 1.0, 2.5, math.pi - 0.2):
        x = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
        logits = loss.logits(x, torch.tensor([0]))
        if theta < math.pi - m:
            target = math.cos(theta + m)
        else:
            target = math.cos(theta) - math.sin(math.pi - m) * m
        assert logits[0, 0].item() == pytest.approx(target, abs=1e-12)
        assert logits[0, 1].item() == pytest.approx(math.sin(theta), abs=1e-12)


def test_arcface_target_logit_decreases_with_the_angle():
    loss = losses.create("arcface", num_classes=2, embed_dim=2).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    thetas = torch.linspace(0.01, math.pi - 0.01, 200, dtype=torch.float64)
    x = torch.stack([thetas.cos(), thetas.sin()], dim=1)
    target = loss.logits(x, torch.zeros(200, dtype=torch.long))[:, 0]
    assert (target[1:] < target[:-1]).all()


def test_softtriplet_centres_are_unit_norm_per_centre():
    loss = losses.create("softtriplet", num_classes=4, embed_dim=DIM, n_centroids=3)
    centres = loss.normalized_centres()
    assert centres.shape == (4, 3, DIM)
    torch.testing.assert_close(centres.norm(dim=2), torch.ones(4, 3))
    # Column c*K + k of the stored matrix is centre k of class c.
    torch.testing.assert_close(centres[2, 1], F.normalize(loss.centres[:, 2 * 3 + 1], dim=0))


def test_softtriplet_assignment_is_a_softmax_over_each_class_centres():
    gamma = 0.1
    loss = losses.create("softtriplet", num_classes=4, embed_dim=DIM, n_centroids=3, gamma=gamma)
    x = F.normalize(torch.randn(5, DIM), dim=1)
    weights, sims = loss.assignment(x)
    assert weights.shape == sims.shape == (5, 4, 3)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(5, 4))
    expected = torch.exp(sims / gamma) / torch.exp(sims / gamma).sum(dim=2, keepdim=True)
    torch.testing.assert_close(weights, expected)


def test_softtriplet_single_centre_has_no_regulariser():
    loss = losses.create("softtriplet", num_classes=3, embed_dim=DIM, n_centroids=1, margin_delta=0.0, lambda_=4.0)
    x = F.normalize(torch.randn(4, DIM), dim=1)
    labels = torch.tensor([0, 1, 2, 0])
    logits = 4.0 * x @ loss.normalized_centres()[:, 0].T
    torch.testing.assert_close(loss(x, labels), F.cross_entropy(logits, labels))


# ----------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("scale", [1.0, 18.0])
def test_unit_rows_matches_f_normalize(scale):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, DIM, generator=g, dtype=torch.float64)
    x[2] = 0.0  # stays zero
    x[3] *= 1e-14  # norm below eps: divided by eps, as F.normalize does
    upstream = torch.randn(5, DIM, generator=g, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = unit_rows(a, scale)
    expected = scale * F.normalize(b, dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_normalize_last_and_its_backward_match_f_normalize():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 4, DIM, generator=g, dtype=torch.float64)
    x[0, 1] = 0.0
    x[1, 2] *= 1e-14
    upstream = torch.randn(2, 4, DIM, generator=g, dtype=torch.float64)
    unit, inverse, kept = normalize_last(x)
    b = x.clone().requires_grad_()
    expected = F.normalize(b, dim=-1)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(unit, expected.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(normalize_last_backward(upstream.clone(), unit, inverse, kept), b.grad,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMETRIC))
def test_gradients_match_finite_differences(name):
    """Also for inputs that are not unit vectors, and for the backwards written out by hand."""
    _, labels = batch(2, seed=9)
    labels = torch.tensor(labels)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(len(labels), DIM, generator=g, dtype=torch.float64, requires_grad=True)
    loss = make(name, seed=9)
    param = getattr(loss, PARAMETRIC[name]).detach().clone().requires_grad_()

    def value(x, param):
        return torch.func.functional_call(loss, {PARAMETRIC[name]: param}, (x, labels))

    assert torch.autograd.gradcheck(value, (x, param))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("reg_weight", [0.0, 0.3])
def test_softtriplet_matches_its_op_by_op_form(k, reg_weight):
    params = {**PARAMS["softtriplet"], "n_centroids": k, "reg_weight": reg_weight}
    loss = losses.create("softtriplet", num_classes=NUM_CLASSES, embed_dim=DIM, **params).double()
    with torch.no_grad():
        loss.centres.normal_(generator=torch.Generator().manual_seed(k))
    x, labels = batch(3, seed=k)
    labels = torch.tensor(labels)
    x = (2.0 * x).requires_grad_()  # not unit vectors: SoftTriple uses x as given
    value = loss(x, labels)
    value.backward()

    x_ref = x.detach().clone().requires_grad_()
    weights, sims = loss.assignment(x_ref)
    margin = loss.margin_delta * F.one_hot(labels, NUM_CLASSES).double()
    expected = F.cross_entropy(loss.lambda_ * ((weights * sims).sum(2) - margin), labels)
    expected = expected + reg_weight * loss.regulariser(torch.float64)
    grad_x, grad_centres = torch.autograd.grad(expected, (x_ref, loss.centres))
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.centres.grad, grad_centres, rtol=1e-10, atol=1e-12)


def test_arcface_matches_its_op_by_op_form():
    # Regular samples, one beyond pi - m (fallback), one on its class weight (cosine clamped for arccos).
    x, labels = batch(2, seed=6)
    loss = make("arcface", seed=6)
    with torch.no_grad():
        loss.weight[labels[0]] = -x[0] + 0.05 * loss.weight[labels[0]]
        loss.weight[labels[2]] = 2.0 * x[2]
    labels = torch.tensor(labels)
    x = (3.0 * x).requires_grad_()  # not unit vectors: ArcFace normalises them
    value = loss(x, labels)
    value.backward()

    x_ref = x.detach().clone().requires_grad_()
    cos = loss.cosines(x_ref).detach()
    assert cos[0, labels[0]] < loss.threshold and cos[2, labels[2]] > 1.0 - 1e-7
    expected = F.cross_entropy(loss.logits(x_ref, labels), labels)
    grad_x, grad_weight = torch.autograd.grad(expected, (x_ref, loss.weight))
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.weight.grad, grad_weight, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PARAMETRIC))
def test_backward_twice_with_retained_graph(name):
    loss = make(name, seed=4)
    param = getattr(loss, PARAMETRIC[name])
    x, labels = batch(2, seed=4)
    x = x.clone().requires_grad_()
    value = loss(x, torch.tensor(labels))
    value.backward(retain_graph=True)
    first = x.grad.clone(), param.grad.clone()
    value.backward()  # the saved tensors were not overwritten by the first backward
    torch.testing.assert_close(x.grad, 2 * first[0])
    torch.testing.assert_close(param.grad, 2 * first[1])


def test_proxynca_extreme_cosines_stay_finite():
    # Logits at their bounds (+18 for the positive, -18 for the negatives): no overflow, exact value.
    e = F.normalize(torch.ones(1, DIM), dim=1)
    loss = losses.create("proxynca", num_classes=3, embed_dim=DIM)
    with torch.no_grad():
        loss.proxies.copy_(torch.cat([e, -e, -e]))
    x = e.clone().requires_grad_()
    value = loss(x, torch.tensor([0]))
    value.backward()
    assert value.item() == pytest.approx(-36 + math.log(2), abs=1e-4)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.proxies.grad).all()


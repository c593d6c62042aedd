"""The eight newer losses (issue 13): proxy_anchor, supcon, ntxent, cosface, subcenter_arcface, circle, fastap and
smoothap, against slow loop references written from the papers (float64, values and gradients), against
pytorch-metric-learning with the same parameters and copied weights, and trained through the engine."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml

from engine import catalog, losses, trainer
from engine.config.presets import resolve
from engine.config.schema import Config
from engine.rundir import RunDir

NAMES = ["proxy_anchor", "supcon", "ntxent", "cosface", "subcenter_arcface", "circle", "fastap", "smoothap"]
PARAMETRIC = {"proxy_anchor": "proxies", "cosface": "weight", "subcenter_arcface": "weight"}
# Non-default parameters, so the references check that every parameter is used.
PARAMS = {
    "proxy_anchor": dict(margin=0.2, alpha=16.0, lrmulti=30.0),
    "supcon": dict(temperature=0.2),
    "ntxent": dict(temperature=0.3),
    "cosface": dict(margin=0.3, scale=20.0, lrmulti=4.0),
    "subcenter_arcface": dict(sub_centers=2, angular_margin=0.4, feature_scale=24.0, lrmulti=3.0),
    "circle": dict(m=0.3, gamma=50.0),
    "fastap": dict(num_bins=8),
    "smoothap": dict(temperature=0.05),
}
NUM_CLASSES, DIM = 5, 6


def batch(per_class: int = 3, seed: int = 0, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped labels (as class-balanced batches are; pytorch-metric-learning's SmoothAP needs that)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return torch.randn(len(labels), DIM, generator=generator, dtype=torch.float64), labels


def make(name: str, **overrides) -> losses.DMLLoss:
    torch.manual_seed(1)
    return losses.create(name, num_classes=NUM_CLASSES, embed_dim=DIM, **{**PARAMS[name], **overrides}).double()


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm() * b.norm())


# ----------------------------------------------------------------------------- loop references (from the papers)


def proxy_anchor_reference(x, labels, proxies, margin, alpha):
    present = sorted(set(labels.tolist()))
    pos = sum(torch.log(1 + sum(torch.exp(-alpha * (cos(x[i], proxies[c]) - margin))
                                for i in range(len(x)) if labels[i] == c)) for c in present)
    neg = sum(torch.log(1 + sum(torch.exp(alpha * (cos(x[i], proxies[c]) + margin))
                                for i in range(len(x)) if labels[i] != c)) for c in range(len(proxies)))
    return pos / len(present) + neg / len(proxies)


def supcon_reference(x, labels, temperature):
    terms = []
    for i in range(len(x)):
        positives = [j for j in range(len(x)) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        log_denominator = torch.log(sum(torch.exp(cos(x[i], x[a]) / temperature) for a in range(len(x)) if a != i))
        terms.append(-sum(cos(x[i], x[p]) / temperature - log_denominator for p in positives) / len(positives))
    return sum(terms) / len(terms)


def ntxent_reference(x, labels, temperature):
    terms = []
    for i in range(len(x)):
        negatives = sum(torch.exp(cos(x[i], x[n]) / temperature) for n in range(len(x)) if labels[n] != labels[i])
        for p in range(len(x)):
            if p != i and labels[p] == labels[i]:
                numerator = torch.exp(cos(x[i], x[p]) / temperature)
                terms.append(-torch.log(numerator / (numerator + negatives)))
    return sum(terms) / len(terms)


def circle_reference(x, labels, m, gamma):
    terms = []
    for i in range(len(x)):
        s_p = [cos(x[i], x[j]) for j in range(len(x)) if j != i and labels[j] == labels[i]]
        s_n = [cos(x[i], x[j]) for j in range(len(x)) if labels[j] != labels[i]]
        if not s_p or not s_n:
            continue
        pos = sum(torch.exp(-gamma * max(0.0, 1 + m - float(s.detach())) * (s - (1 - m))) for s in s_p)
        neg = sum(torch.exp(gamma * max(0.0, float(s.detach()) + m) * (s - m)) for s in s_n)
        terms.append(torch.log(1 + pos * neg))
    return sum(terms) / len(terms)


def fastap_reference(x, labels, num_bins):
    delta = 4.0 / num_bins
    unit = x / x.norm(dim=1, keepdim=True)
    values = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        n_pos = sum(1 for j in others if labels[j] == labels[i])
        if n_pos == 0:
            continue
        h_pos, h_neg = [], []
        for bin_index in range(num_bins + 1):
            centre = bin_index * delta
            pulses = {j: torch.relu(1 - torch.abs((unit[i] - unit[j]).pow(2).sum() - centre) / delta) for j in others}
            h_pos.append(sum(pulses[j] for j in others if labels[j] == labels[i]))
            h_neg.append(sum(pulses[j] for j in others if labels[j] != labels[i]))
        total = 0.0
        for bin_index in range(num_bins + 1):
            cumulative = sum(h_pos[q] + h_neg[q] for q in range(bin_index + 1))
            if float(cumulative.detach()) > 0:
                total = total + h_pos[bin_index] * sum(h_pos[: bin_index + 1]) / cumulative
        values.append(total / n_pos)
    return 1 - sum(values) / len(values)


def smoothap_reference(x, labels, temperature, include_anchor=False):
    """Eq. 7 of Brown et al.; ``include_anchor`` puts the query into its own positive and ranking sets, as the
    authors' code and pytorch-metric-learning do."""
    values = []
    for i in range(len(x)):
        candidates = [j for j in range(len(x)) if include_anchor or j != i]
        positives = [j for j in candidates if labels[j] == labels[i]]
        if not positives:
            continue
        s = {j: cos(x[i], x[j]) for j in candidates}
        ap = 0.0
        for k in positives:
            pos_rank = 1 + sum(torch.sigmoid((s[j] - s[k]) / temperature) for j in positives if j != k)
            all_rank = 1 + sum(torch.sigmoid((s[j] - s[k]) / temperature) for j in candidates if j != k)
            ap = ap + pos_rank / all_rank
        values.append(1 - ap / len(positives))
    return sum(values) / len(values)


def softmax_cross_entropy(rows):
    return sum(torch.logsumexp(torch.stack(logits), 0) - logits[target] for logits, target in rows) / len(rows)


def cosface_reference(x, labels, weight, margin, scale):
    rows = []
    for i in range(len(x)):
        y = int(labels[i])
        rows.append(([scale * (cos(x[i], weight[c]) - (margin if c == y else 0.0)) for c in range(len(weight))], y))
    return softmax_cross_entropy(rows)


def subcenter_arcface_reference(x, labels, weight, angular_margin, feature_scale):
    """weight[k, c] is sub-centre k of class c; the class cosine is the best sub-centre's."""
    rows = []
    for i in range(len(x)):
        y = int(labels[i])
        logits = []
        for c in range(weight.shape[1]):
            c_ic = torch.stack([cos(x[i], weight[k, c]) for k in range(weight.shape[0])]).max()
            if c == y:
                if float(c_ic.detach()) > math.cos(math.pi - angular_margin):
                    c_ic = torch.cos(torch.acos(c_ic) + angular_margin)
                else:
                    c_ic = c_ic - angular_margin * math.sin(angular_margin)
            logits.append(feature_scale * c_ic)
        rows.append((logits, y))
    return softmax_cross_entropy(rows)


def reference(name, x, labels, loss):
    p = PARAMS[name]
    if name == "proxy_anchor":
        return proxy_anchor_reference(x, labels, loss.proxies, p["margin"], p["alpha"])
    if name == "supcon":
        return supcon_reference(x, labels, p["temperature"])
    if name == "ntxent":
        return ntxent_reference(x, labels, p["temperature"])
    if name == "cosface":
        return cosface_reference(x, labels, loss.weight, p["margin"], p["scale"])
    if name == "subcenter_arcface":
        return subcenter_arcface_reference(x, labels, loss.weight, p["angular_margin"], p["feature_scale"])
    if name == "circle":
        return circle_reference(x, labels, p["m"], p["gamma"])
    if name == "fastap":
        return fastap_reference(x, labels, p["num_bins"])
    return smoothap_reference(x, labels, p["temperature"])


def gradients(value, x, loss):
    return torch.autograd.grad(value, [x, *loss.parameters()])


# ----------------------------------------------------------------------------- against the loop references


@pytest.mark.parametrize("per_class, classes", [(3, 4), (2, 5), (4, 2)])
@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradients_match_the_loop_reference(name, per_class, classes):
    x, labels = batch(per_class, seed=per_class, classes=classes)
    loss = make(name)
    x = x.requires_grad_()
    ours = loss(x, labels)
    expected = reference(name, x, labels, loss)
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)
    for got, want in zip(gradients(ours, x, loss), gradients(expected, x, loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_ragged_classes_and_singletons_match_the_reference():
    """A class drawn three times next to pairs and a singleton (no positive: no term of its own)."""
    generator = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    x = torch.randn(len(labels), DIM, generator=generator, dtype=torch.float64, requires_grad=True)
    for name in NAMES:
        loss = make(name)
        ours, expected = loss(x, labels), reference(name, x, labels, loss)
        assert ours.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9), name
        torch.testing.assert_close(gradients(ours, x, loss)[0], gradients(expected, x, loss)[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64_and_bf16_autocast_stays_finite(name):
    x, labels = batch()
    loss = make(name)
    exact = loss(x, labels).item()
    single = loss.float()(x.float(), labels)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(exact, rel=1e-4, abs=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.float().bfloat16().requires_grad_(), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)


@pytest.mark.parametrize("name", ["supcon", "ntxent", "circle", "fastap", "smoothap"])
def test_a_batch_without_positives_gives_zero_with_a_working_backward(name):
    x = torch.randn(4, DIM, dtype=torch.float64, requires_grad=True)
    value = make(name)(x, torch.arange(4))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all() and not x.grad.any()


# ----------------------------------------------------------------------------- against pytorch-metric-learning


def pml_loss(name: str, ours: losses.DMLLoss):
    """pytorch-metric-learning's loss with our parameters and our trainable vectors copied in."""
    p = PARAMS[name]
    if name == "proxy_anchor":
        theirs = pml.ProxyAnchorLoss(NUM_CLASSES, DIM, margin=p["margin"], alpha=p["alpha"])
        theirs.proxies.data = ours.proxies.detach().clone()
    elif name == "supcon":
        theirs = pml.SupConLoss(temperature=p["temperature"])
    elif name == "ntxent":
        theirs = pml.NTXentLoss(temperature=p["temperature"])
    elif name == "cosface":
        theirs = pml.CosFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM, margin=p["margin"], scale=p["scale"])
        theirs.W.data = ours.weight.detach().T.clone()  # theirs is (D, C)
    elif name == "subcenter_arcface":
        theirs = pml.SubCenterArcFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM, sub_centers=p["sub_centers"],
                                          margin=math.degrees(p["angular_margin"]), scale=p["feature_scale"])
        k = p["sub_centers"]
        theirs.W.data = ours.weight.detach().permute(2, 1, 0).reshape(DIM, NUM_CLASSES * k).clone()  # column c*K + k
    elif name == "circle":
        theirs = pml.CircleLoss(m=p["m"], gamma=p["gamma"])
    elif name == "fastap":
        theirs = pml.FastAPLoss(num_bins=p["num_bins"])
    else:
        theirs = pml.SmoothAPLoss(temperature=p["temperature"])
    return theirs.double()


@pytest.mark.parametrize("name", [n for n in NAMES if n != "smoothap"])
def test_matches_pytorch_metric_learning(name):
    x, labels = batch(per_class=4, seed=11, classes=5)
    ours = make(name)
    theirs = pml_loss(name, ours)
    mine, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    value, their_value = ours(mine, labels), theirs(their_x, labels)
    assert value.item() == pytest.approx(their_value.item(), rel=1e-5, abs=1e-6)
    value.backward()
    their_value.backward()
    torch.testing.assert_close(mine.grad, their_x.grad, rtol=1e-5, atol=1e-7)
    if name in PARAMETRIC:
        our_grad = getattr(ours, PARAMETRIC[name]).grad
        their_grad = theirs.proxies.grad if name == "proxy_anchor" else theirs.W.grad
        if name == "cosface":
            their_grad = their_grad.T
        if name == "subcenter_arcface":
            their_grad = their_grad.reshape(DIM, NUM_CLASSES, PARAMS[name]["sub_centers"]).permute(2, 1, 0)
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-7)


def test_smoothap_differs_from_pytorch_metric_learning_only_by_the_query_in_its_own_sets():
    """PML (like the authors' code) counts the query among its positives and in every rank; Eq. 7 does not
    (docs/differences.md). The loop reference with the query included reproduces PML; ours is Eq. 7. PML 2.9 groups
    the batch by the number of classes where it means the samples per class, so it is only right (and only compared)
    when the two are equal."""
    x, labels = batch(per_class=4, seed=11, classes=4)
    theirs = pml_loss("smoothap", make("smoothap"))(x, labels)
    temperature = PARAMS["smoothap"]["temperature"]
    assert theirs.item() == pytest.approx(smoothap_reference(x, labels, temperature, include_anchor=True).item(), rel=1e-6)
    ours = make("smoothap")(x, labels)
    assert ours.item() == pytest.approx(smoothap_reference(x, labels, temperature).item(), rel=1e-9)
    assert abs(ours.item() - theirs.item()) > 1e-3


def test_pml_and_ours_agree_at_the_default_parameters():
    """The defaults are the papers' (and PML's, except for the documented SmoothAP difference)."""
    x, labels = batch(per_class=4, seed=3, classes=5)
    torch.manual_seed(0)
    defaults = {name: losses.create(name, num_classes=NUM_CLASSES, embed_dim=DIM).double() for name in NAMES}
    pairs = {
        "proxy_anchor": pml.ProxyAnchorLoss(NUM_CLASSES, DIM),
        "supcon": pml.SupConLoss(),
        "ntxent": pml.NTXentLoss(),
        "circle": pml.CircleLoss(),
        "fastap": pml.FastAPLoss(),
        "cosface": pml.CosFaceLoss(num_classes=NUM_CLASSES, embedding_size=DIM),
    }
    pairs["proxy_anchor"].proxies.data = defaults["proxy_anchor"].proxies.detach().clone()
    pairs["cosface"].W.data = defaults["cosface"].weight.detach().T.clone()
    for name, theirs in pairs.items():
        assert defaults[name](x, labels).item() == pytest.approx(theirs.double()(x, labels).item(), rel=1e-5), name
    sub = defaults["subcenter_arcface"]
    assert (sub.sub_centers, sub.angular_margin, sub.feature_scale) == (3, 0.5, 64.0)


# ----------------------------------------------------------------------------- parameters, config, catalog


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_and_config(name):
    loss = make(name)
    groups = loss.param_groups(1e-4)
    if name not in PARAMETRIC:
        assert groups == [] and not list(loss.parameters())
    else:
        (group,) = groups
        assert group["lr"] == pytest.approx(1e-4 * PARAMS[name]["lrmulti"]) and group["weight_decay"] == 0.0
        assert group["name"] == f"loss.{name}.{PARAMETRIC[name]}" and group["params"] == [getattr(loss, PARAMETRIC[name])]
    config = Config(loss={"name": name, name: PARAMS[name]})
    built = losses.from_config(config, num_classes=7)
    assert type(built) is type(loss) and built.miner is None and not catalog.uses_miner(name)
    for key, value in PARAMS[name].items():
        assert getattr(built, key) == value


def test_default_proxy_learning_rates_and_shapes():
    torch.manual_seed(0)
    anchor = losses.create("proxy_anchor", num_classes=50, embed_dim=64)
    assert anchor.param_groups(1e-4)[0]["lr"] == pytest.approx(1e-2)  # the paper's proxies at 100x
    assert anchor.proxies.std().item() == pytest.approx(math.sqrt(2 / 50), rel=0.1)  # Kaiming normal, fan-out
    assert losses.create("subcenter_arcface", num_classes=50, embed_dim=64).weight.shape == (3, 50, 64)
    assert losses.create("cosface", num_classes=50, embed_dim=64).weight.shape == (50, 64)


def test_proxy_anchor_refuses_an_overflowing_scale():
    with pytest.raises(ValueError, match="alpha \\* \\(1 \\+ \\|margin\\|\\) <= 80"):
        losses.create("proxy_anchor", num_classes=3, embed_dim=4, alpha=80.0)


def test_proxy_anchor_classes_absent_from_the_batch_only_count_as_negatives():
    """|C⁺| counts the classes present; every proxy is in the negative term."""
    x, labels = batch(per_class=2, classes=2)
    loss = make("proxy_anchor")
    value = loss(x, labels)
    assert value.item() == pytest.approx(proxy_anchor_reference(x, labels, loss.proxies, 0.2, 16.0).item(), rel=1e-9)
    assert loss.proxies.shape[0] == NUM_CLASSES > 2


def test_subcenter_gradient_reaches_only_the_best_subcentre():
    x, labels = batch(per_class=1, classes=1)
    loss = make("subcenter_arcface")
    loss(x, labels).backward()
    best = torch.stack([F.cosine_similarity(x[0], loss.weight[k, 0], dim=0) for k in range(2)]).argmax()
    assert loss.weight.grad[best, 0].abs().sum() > 0 and loss.weight.grad[1 - best, 0].abs().sum() == 0


# ----------------------------------------------------------------------------- through the engine


@pytest.mark.parametrize("name", NAMES)
def test_each_loss_trains_through_the_engine_without_nan(tmp_path, name):
    config = resolve(["quickstart", "digits"], [
        f"loss.name='{name}'", "optim.epochs=1", "sampler.batch_size=32", "sampler.samples_per_class=4",
        "data.image_size=8", "eval.metrics=['e_recall@1']", "eval.at_start=false", "eval.raw_pixel_baseline=false",
    ]).config
    outcome = trainer.run(config, tmp_path / name, show_progress=False)
    assert outcome.state == "finished", RunDir(tmp_path / name).read_status().get("error")
    (train,) = [r["metrics"] for r in RunDir(tmp_path / name).read_metrics() if r["kind"] == "train"]
    assert math.isfinite(train["loss"]) and train["batches"] > 10
    state = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)
    if name in PARAMETRIC:
        assert torch.isfinite(state["loss"][PARAMETRIC[name]]).all()
        assert any(g.get("name") == f"loss.{name}.{PARAMETRIC[name]}" for g in state["optimizer"]["param_groups"])

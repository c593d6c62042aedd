"""The paper's toy experiment: diagonal lines (Roth et al. 2020, "Revisiting Training Strategies
and Generalization Performance in Deep Metric Learning", reference inventory §11).

    python -m engine.toy [--out DIR] [--seed 1] [--iterations 200] [--pull-term]

Setup, as the original script ``toy_experiments/toy_example_diagonal_lines.py``:

* Data (2-D). 4 training classes of 15 points each, drawn without replacement from 100
  evenly spaced points on segments of the diagonal y = x over (0.1, 0.3), (0.35, 0.55),
  (0.6, 0.8) and (0.85, 1.05). 4 test classes of 15 points: two vertical segments at x = 0.2
  (y ∈ (0.2, 0.4) and (0.55, 0.85)) and two horizontal ones at y = 0.2 (x ∈ (0.4, 0.6) and
  (0.7, 0.9)).
* Network: MLP 2 → 30 → 30 → 2 with ReLU, output L2-normalised (on the unit circle).
* Training: Adam, lr 0.03, 200 iterations, each on a batch of 24 training points drawn
  without replacement; all valid triplets (a, p, n) of the batch (a ≠ p same class, n of
  another class); loss = mean d(a, p) + mean [0.1 − d(a, n)]₊ (Euclidean d).
* The "regularised" net (ρ-regularisation, p_switch = 0.001): each triplet's negative is
  replaced by its positive with probability 0.001. Quirk of the original, reproduced by
  default: its loss is then **only** the push term mean [0.1 − d(a, n)]₊ (the pull term is
  dropped). ``--pull-term`` keeps the pull term for the regularised net too (the method as
  the paper describes it). The quirk matters: with seed 1 and 200 iterations the default
  gives base ρ 0.481 / test R@1 0.683 against regularised ρ 0.008 / R@1 1.000 (the paper's
  picture), while with ``--pull-term`` the regularised net collapses like the base one
  (ρ 0.553, R@1 0.600): at p_switch = 0.001 the switched triplets are too few to matter,
  and it is dropping the pull term that spreads the embedding.

Output: ``diag_line_toy_ex.png`` (the data; both embeddings of the train and test points on
the unit circle; the normalised singular-value spectra of the training embeddings) and, per
net, ρ and the test Recall@1, printed and written to ``toy_metrics.json``.

ρ here is ``rho_spectrum@1`` = KL(uniform ‖ s/Σs) over *both* singular values of the 60 × 2
training embeddings: the benchmark's ``rho_spectrum@2`` drops the largest singular value
first, which leaves one value and is always 0 in two dimensions. Larger ρ = a more
concentrated (less diverse) spectrum. Recall@1: the nearest other test point (Euclidean)
shares the class, over the 60 test points.

Determinism and faithfulness: the random draws come from the same generators in the same
order as the original (``numpy.random.RandomState(seed)`` for the data, the batches and
the switches — drawn as one vector per batch, which consumes the stream exactly as the
original's per-triplet draws; ``torch.manual_seed(seed)`` before both nets are built), and
the triplets are enumerated in the original's order, so seed 1 follows the original run up
to floating-point summation order. The global RNG states of the caller are restored.
The triplets are built with tensor operations (no Python loop over the batch).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.metrics import evaluate
from engine.metrics.spectrum import singular_values

POINTS_PER_LINE = 100
KEEP = 15  # 15 % of the 100 points of each segment
TRAIN_INTERVALS = ((0.1, 0.3), (0.35, 0.55), (0.6, 0.8), (0.85, 1.05))
BATCH_SIZE = 24
LR = 0.03
NEG_MARGIN = 0.1
P_SWITCH = 0.001
FIGURE = "diag_line_toy_ex.png"


@dataclass
class ToyData:
    train_x: np.ndarray  # (60, 2)
    train_y: np.ndarray  # (60,)
    test_x: np.ndarray  # (60, 2)
    test_y: np.ndarray  # (60,)


def make_data(rs: np.random.RandomState) -> ToyData:
    """The original's segments and draws (same RandomState calls in the same order)."""

    def pick(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return np.stack([xs, ys])[:, rs.choice(POINTS_PER_LINE, KEEP, replace=False)].T

    train = [pick(np.linspace(lo, hi, POINTS_PER_LINE), np.linspace(lo, hi, POINTS_PER_LINE)) for lo, hi in TRAIN_INTERVALS]
    const = 0.2 * np.ones(POINTS_PER_LINE)
    test = [
        pick(const, np.linspace(0.2, 0.4, POINTS_PER_LINE)),  # vertical, x = 0.2
        pick(const, np.linspace(0.55, 0.85, POINTS_PER_LINE)),
        pick(np.linspace(0.4, 0.6, POINTS_PER_LINE), const),  # horizontal, y = 0.2
        pick(np.linspace(0.7, 0.9, POINTS_PER_LINE), const),
    ]
    labels = np.repeat(np.arange(4), KEEP)
    return ToyData(np.concatenate(train), labels, np.concatenate(test), labels.copy())


class ToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=1)


def all_triplets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (a, p, n) with a ≠ p of one class and n of another, in the original's order:
    by anchor class, then negative class (both ascending), then a, p, n by batch position."""
    same = labels[:, None] == labels[None, :]
    valid = (same & ~np.eye(len(labels), dtype=bool))[:, :, None] & ~same[:, None, :]
    a, p, n = np.nonzero(valid)
    order = np.lexsort((n, p, a, labels[n], labels[a]))  # last key sorts first
    return a[order], p[order], n[order]


def train(
    net: nn.Module, data: ToyData, rs: np.random.RandomState, *, iterations: int, p_switch: float, pull_term: bool
) -> list[float]:
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    net.train()
    losses = []
    for _ in range(iterations):
        idx = rs.choice(len(data.train_x), BATCH_SIZE, replace=False)
        embed = net(torch.from_numpy(data.train_x[idx]).float())
        a, p, n = all_triplets(data.train_y[idx])
        if p_switch > 0:
            switch = rs.choice(2, size=len(n), p=[1 - p_switch, p_switch]).astype(bool)
            n = np.where(switch, p, n)
        a, p, n = (torch.from_numpy(v) for v in (a, p, n))
        push = F.relu(NEG_MARGIN - F.pairwise_distance(embed[a], embed[n])).mean()
        loss = (push + F.pairwise_distance(embed[a], embed[p]).mean()) if pull_term else push
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def embed(net: nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    return net(torch.from_numpy(x).float()).numpy()


def spectrum(train_embed: np.ndarray) -> np.ndarray:
    s = singular_values(torch.from_numpy(train_embed)).numpy()
    return s / s.sum()


def run(out: Path | str = ".", *, seed: int = 1, iterations: int = 200, pull_term: bool = False) -> dict:
    """Train both nets, write the figure and ``toy_metrics.json`` into *out*; return the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    data = make_data(rs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-30-30-2 MLP: more threads only add synchronisation (10x slower on a busy CPU)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = {"base": ToyNet(), "regularised": ToyNet()}
            final_loss = {
                "base": train(nets["base"], data, rs, iterations=iterations, p_switch=0.0, pull_term=True)[-1:],
                "regularised": train(
                    nets["regularised"], data, rs, iterations=iterations, p_switch=P_SWITCH, pull_term=pull_term
                )[-1:],
            }
    finally:
        torch.set_num_threads(threads)
    results: dict = {"seed": seed, "iterations": iterations, "regularised_pull_term": pull_term, "nets": {}}
    embeddings = {}
    for name, net in nets.items():
        tr, te = embed(net, data.train_x), embed(net, data.test_x)
        embeddings[name] = (tr, te)
        m_train = evaluate(tr, data.train_y, ["rho_spectrum@1"])
        m_test = evaluate(te, data.test_y, ["e_recall@1"])
        results["nets"][name] = {
            "rho": m_train["rho_spectrum@1"],
            "spectrum": [float(v) for v in spectrum(tr)],
            "test_recall@1": m_test["e_recall@1"],
            "final_loss": final_loss[name][0] if final_loss[name] else None,
        }
    _plot(out / FIGURE, data, embeddings, results)
    (out / "toy_metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _plot(path: Path, data: ToyData, embeddings: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_colours = plt.get_cmap("rainbow")(np.linspace(0, 0.5, 4))
    test_styles = [("x", "red", 40), ("x", "black", 60), ("^", "brown", 40), ("^", "magenta", 60)]
    theta = np.linspace(0, 2 * np.pi, 300)
    fig, ax = plt.subplots(1, 4, figsize=(22, 6))

    def scatter(axis, train_pts, test_pts, labels: bool, alpha: float = 1.0) -> None:
        for c in range(4):
            pts = train_pts[data.train_y == c]
            axis.scatter(pts[:, 0], pts[:, 1], color=train_colours[c], s=40, alpha=alpha, label=f"Train cls {c}" if labels else None)
        for c, (marker, colour, size) in enumerate(test_styles):
            pts = test_pts[data.test_y == c]
            axis.scatter(pts[:, 0], pts[:, 1], marker=marker, color=colour, s=size, label=f"Test cls {c}" if labels else None)

    scatter(ax[0], data.train_x, data.test_x, labels=True)
    ax[0].set_title("Train/test data")
    ax[0].legend(loc="center right", fontsize=9)
    for axis, name, title in ((ax[1], "base", "Base embedding"), (ax[2], "regularised", "Regularised embedding")):
        axis.plot(np.cos(theta), np.sin(theta), "--", color="gray", label="unit circle")
        scatter(axis, *embeddings[name], labels=False, alpha=1.0 if name == "base" else 0.5)
        r = results["nets"][name]
        axis.set_title(f"{title}\nρ = {r['rho']:.4f}, test R@1 = {r['test_recall@1']:.3f}")
        axis.set_aspect("equal")
        axis.legend(loc="lower left", fontsize=9)
    base_s, reg_s = (np.array(results["nets"][n]["spectrum"]) for n in ("base", "regularised"))
    ax[3].bar([0, 0.25], base_s, width=0.25, alpha=0.5, edgecolor="k", label="Base")
    ax[3].bar([0.6, 0.85], reg_s, width=0.25, alpha=0.5, edgecolor="k", label="Reg. emb.")
    ax[3].set_xticks([0, 0.25, 0.6, 0.85], ["1", "2", "1", "2"])
    ax[3].set_title("Normalised SV spectrum (train)")
    ax[3].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m engine.toy", description="The paper's diagonal-lines toy experiment.")
    parser.add_argument("--out", default=".", help="folder for diag_line_toy_ex.png and toy_metrics.json (default: .)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--pull-term",
        action="store_true",
        help="keep the pull term in the regularised net's loss (the original drops it: a quirk, reproduced by default)",
    )
    args = parser.parse_args(argv)
    results = run(args.out, seed=args.seed, iterations=args.iterations, pull_term=args.pull_term)
    for name, r in results["nets"].items():
        print(f"{name:12s} rho = {r['rho']:.6f}  spectrum = [{r['spectrum'][0]:.4f}, {r['spectrum'][1]:.4f}]  "
              f"test Recall@1 = {r['test_recall@1']:.4f}")
    print(f"figure: {Path(args.out) / FIGURE}")
    return results


if __name__ == "__main__":
    main()

"""The diagonal-lines toy experiment (engine.toy) runs, writes its figure and is deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from engine import toy


def test_toy_experiment_writes_figure_and_finite_metrics(tmp_path, capsys):
    results = toy.main(["--out", str(tmp_path / "a"), "--seed", "1", "--iterations", "5"])
    assert "test Recall@1" in capsys.readouterr().out
    with Image.open(tmp_path / "a" / toy.FIGURE) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100
    for r in results["nets"].values():
        assert math.isfinite(r["rho"]) and r["rho"] >= 0
        assert 0.0 <= r["test_recall@1"] <= 1.0
        assert math.isclose(sum(r["spectrum"]), 1.0)
    assert json.loads((tmp_path / "a" / "toy_metrics.json").read_text())["nets"] == results["nets"]
    again = toy.run(tmp_path / "b", seed=1, iterations=5)
    assert again["nets"] == results["nets"]


def test_toy_data_and_triplets_follow_the_setup():
    data = toy.make_data(np.random.RandomState(1))
    assert data.train_x.shape == data.test_x.shape == (60, 2)
    assert np.allclose(data.train_x[:, 0], data.train_x[:, 1])  # the diagonal
    assert np.allclose(data.test_x[:30, 0], 0.2) and np.allclose(data.test_x[30:, 1], 0.2)
    labels = np.array([1, 0, 1, 2, 0])
    a, p, n = toy.all_triplets(labels)
    expected = [(a_, p_, n_) for x in (0, 1, 2) for y in (0, 1, 2) if x != y
                for a_ in np.flatnonzero(labels == x) for p_ in np.flatnonzero(labels == x) if a_ != p_
                for n_ in np.flatnonzero(labels == y)]
    assert list(zip(a, p, n)) == expected

"""In-Shop: the published layout read into train and query/gallery splits, and query-vs-gallery evaluation,
checked against a hand-computed case and in a run on a generated In-Shop tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import trainer
from engine.config.presets import resolve
from engine.data import DatasetError, check_layout, create_splits
from engine.evaluation import evaluate_embeddings
from engine.rundir import RunDir

# item -> (status, images): 4 training items, 3 test items seen as queries and in the gallery
ITEMS = {
    "id_00000001": ("train", 4), "id_00000002": ("train", 4), "id_00000003": ("train", 4), "id_00000004": ("train", 4),
    "id_00000010": ("test", 4), "id_00000011": ("test", 4), "id_00000012": ("test", 4),
}


def make_inshop(root: Path) -> Path:
    """<root>/in_shop/img/<gender>/<category>/<item>/<n>_front.jpg and list_eval_partition.txt, as DeepFashion ships them.

    Each test item has its first two images as queries, the other two in the gallery; images of an item share a
    colour (learnable), with noise.
    """
    folder = root / "in_shop"
    rng = np.random.default_rng(0)
    rows = []
    for number, (item, (status, count)) in enumerate(ITEMS.items()):
        gender, category = ("MEN", "Denim") if number % 2 else ("WOMEN", "Dresses")
        base = rng.integers(0, 255, size=3)
        for i in range(count):
            name = f"img/{gender}/{category}/{item}/{i + 1:02d}_{i + 1}_front.jpg"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(base + rng.normal(0, 10, (24, 24, 3)), 0, 255).astype(np.uint8)
            pixels[:, :: 2 + number % 3] = 255 - base
            Image.fromarray(pixels).save(folder / name)
            role = status if status == "train" else ("query" if i < 2 else "gallery")
            rows.append(f"{name:<60}{item:<14}{role}")
    (folder / "list_eval_partition.txt").write_text("\n".join([str(len(rows)), "image_name item_id evaluation_status", *rows]) + "\n")
    return folder


def test_the_published_layout_gives_train_and_query_gallery_splits(tmp_path):
    make_inshop(tmp_path)
    check_layout("in_shop", tmp_path)
    splits = create_splits("in_shop", tmp_path)
    assert splits.train.class_names == ["id_00000001", "id_00000002", "id_00000003", "id_00000004"]
    assert len(splits.train) == 16 and splits.train.query is None and splits.val is None
    test = splits.test
    assert test.class_names == ["id_00000010", "id_00000011", "id_00000012"]
    assert test.query.tolist() == [0, 1, 2, 3, 4, 5] and test.gallery.tolist() == [6, 7, 8, 9, 10, 11]
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]  # one label per item across both sides
    assert [p.name for p in test.paths[:2]] == ["01_1_front.jpg", "02_2_front.jpg"]
    assert [p.name for p in test.paths[6:8]] == ["03_3_front.jpg", "04_4_front.jpg"]
    val = create_splits("in_shop", tmp_path, use_tv_split=True, tv_split_perc=0.5)
    assert val.train.class_names == ["id_00000001", "id_00000002"] and val.val.class_names == ["id_00000003", "id_00000004"]


def test_a_broken_layout_is_one_line(tmp_path):
    folder = make_inshop(tmp_path)
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"lacks list_eval_partition.txt or img/; expected <root>/in_shop/list_eval_partition.txt"):
        check_layout("in_shop", tmp_path)
    make_inshop(tmp_path)
    (folder / "img/WOMEN/Dresses/id_00000001/01_1_front.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt lists .*id_00000001/01_1_front.jpg, which does not exist"):
        create_splits("in_shop", tmp_path)


def test_query_gallery_recall_against_a_hand_computed_case():
    # 1-d embeddings. Queries q0 (class A) at 0.0 and q1 (class B) at 1.0; gallery g0 (A) at 0.9, g1 (B) at 3.0,
    # g2 (A) at 5.0. Nearest gallery item of q0: g0 (A, hit). Of q1: g0 (A, miss), then g1 (B) at rank 2.
    x = torch.tensor([[0.0], [1.0], [0.9], [3.0], [5.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    values, missing = evaluate_embeddings(x, labels, ["e_recall@1", "e_recall@2", "e_recall@4"], query=[0, 1],
                                          gallery=[2, 3, 4])
    assert values == {"e_recall@1": 0.5, "e_recall@2": 1.0}
    assert missing == {"e_recall@4": "k=4 exceeds the 3 gallery samples a query can see"}
    # All against all the gallery rows become queries too (g0's nearest is q1, B: a miss; g1's are q1 and g2 at 2.0,
    # the lower index q1 wins: a hit; g2's is g1: a miss): 2 of 5.
    everyone, _ = evaluate_embeddings(x, labels, ["e_recall@1"])
    assert everyone["e_recall@1"] == pytest.approx(2 / 5)


def test_a_run_evaluates_queries_against_the_gallery(tmp_path):
    make_inshop(tmp_path)
    config = resolve(["quickstart", "inshop"], [
        f"data.source_path={str(tmp_path)!r}", "data.image_size=16", "data.augmentation=none", "optim.epochs=1",
        "sampler.batch_size=8", "sampler.samples_per_class=2", "eval.metrics=['e_recall@1', 'e_recall@6', 'e_recall@7']",
        "eval.storage_metrics=['e_recall@1']", "eval.train_metrics=true",
    ]).config
    outcome = trainer.run(config, tmp_path / "run", show_progress=False)
    assert outcome.state == "finished", outcome.error
    records = {r["split"]: r for r in RunDir(tmp_path / "run").read_metrics() if r["kind"] == "eval"}
    # 6 gallery images: k = 7 cannot be computed on the test split, which all-against-all (11 others) could
    assert set(records["test"]["metrics"]) == {"e_recall@1", "e_recall@6"}
    assert records["test"]["missing"] == {"e_recall@7": "k=7 exceeds the 6 gallery samples a query can see"}
    assert records["test"]["metrics"]["e_recall@6"] == 1.0  # every item has two gallery images among the six
    assert set(records["train"]["metrics"]) == {"e_recall@1", "e_recall@6", "e_recall@7"}  # train: all against all

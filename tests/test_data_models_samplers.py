"""Dataset layouts and their errors, transforms, the class-random sampler, and the architectures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders

from engine import models, samplers
from engine.data import DatasetError, ImageDataset, build_transform, create_splits
from engine.data.folder import read_class_folders

# ------------------------------------------------------------------ folder layouts


def test_cub_layout_first_half_trains_second_half_tests(tmp_path):
    make_class_folders(tmp_path / "cub200" / "images", 10, 3)
    (tmp_path / "cub200" / "images" / "001.Class_0" / "._img_000.jpg").write_bytes(b"resource fork")
    splits = create_splits("cub200", tmp_path)
    assert splits.train.class_names == [f"{i:03d}.Class_{i - 1}" for i in range(1, 6)]
    assert splits.test.class_names == [f"{i:03d}.Class_{i - 1}" for i in range(6, 11)]
    assert len(splits.train) == len(splits.test) == 15
    assert splits.train.labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert splits.test.labels.min() == 0  # every split is re-labelled 0..C-1
    assert not any("._" in p.name for p in splits.train.paths)


def test_numeric_prefixes_sort_numerically(tmp_path):
    for name in ["10.ten", "9.nine", "100.hundred"]:
        make_class_folders(tmp_path / "x", 1, 1)
        (tmp_path / "x" / "001.Class_0").rename(tmp_path / "x" / name)
    assert [name for name, _ in read_class_folders(tmp_path / "x")] == ["9.nine", "10.ten", "100.hundred"]


def test_cars_layout_sorts_by_name(tmp_path):
    make_class_folders(tmp_path / "cars196" / "images", 4, 2, numbered=False)
    splits = create_splits("cars196", tmp_path)
    assert splits.train.class_names == ["Class_A", "Class_B"] and splits.test.class_names == ["Class_C", "Class_D"]


def test_validation_split_by_classes_and_by_samples(tmp_path):
    make_class_folders(tmp_path / "cub200" / "images", 10, 5)
    by_class = create_splits("cub200", tmp_path, use_tv_split=True, tv_split_perc=0.8)
    assert by_class.train.num_classes == 4 and by_class.val.num_classes == 1
    assert set(by_class.val.class_names).isdisjoint(by_class.train.class_names)
    by_sample = create_splits("cub200", tmp_path, use_tv_split=True, tv_split_by_samples=True, tv_split_perc=0.6)
    assert by_sample.train.class_names == by_sample.val.class_names  # same classes, disjoint images
    assert len(by_sample.train) == 5 * 3 and len(by_sample.val) == 5 * 2
    assert set(by_sample.train.paths).isdisjoint(by_sample.val.paths)


def test_missing_and_malformed_folders_name_the_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"cub200/images does not exist; expected <root>/<dataset>/images/<class folder>"):
        create_splits("cub200", tmp_path)
    (tmp_path / "cub200" / "images" / "001.empty").mkdir(parents=True)
    (tmp_path / "cub200" / "images" / "002.other").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*001.empty holds no image files"):
        create_splits("cub200", tmp_path)


def write_sop(root: Path, n_train_classes=4, n_test_classes=4, per_class=3) -> None:
    images = root / "online_products" / "images"
    info = root / "online_products" / "Info_Files"
    info.mkdir(parents=True)
    rows = {"Ebay_train.txt": [], "Ebay_test.txt": []}
    image_id = 1
    for class_id in range(1, n_train_classes + n_test_classes + 1):
        split = "Ebay_train.txt" if class_id <= n_train_classes else "Ebay_test.txt"
        superclass = "bicycle" if class_id % 2 else "chair"
        make_class_folders(images / f"{superclass}_final", 1, per_class, seed=class_id)
        for path in sorted((images / f"{superclass}_final" / "001.Class_0").iterdir()):
            target = path.parent.parent / f"{class_id}_{path.name}"
            path.rename(target)
            rows[split].append(f"{image_id} {class_id} {1 + class_id % 2} {superclass}_final/{target.name}")
            image_id += 1
        (images / f"{superclass}_final" / "001.Class_0").rmdir()
    for name, lines in rows.items():
        (info / name).write_text("image_id class_id super_class_id path\n" + "\n".join(lines) + "\n")


def test_sop_layout_reads_info_files(tmp_path):
    write_sop(tmp_path)
    splits = create_splits("online_products", tmp_path)
    assert splits.train.num_classes == 4 and splits.test.num_classes == 4 and len(splits.train) == 12
    assert splits.train.class_names == ["1", "2", "3", "4"] and splits.test.class_names == ["5", "6", "7", "8"]
    by_class = create_splits("online_products", tmp_path, use_tv_split=True, tv_split_perc=0.5)
    assert by_class.val.labels.min() == 0 and by_class.train.labels.min() == 0  # the original gave -1
    assert by_class.train.num_classes == 2 and by_class.val.num_classes == 2


def test_sop_errors(tmp_path):
    with pytest.raises(DatasetError, match="Info_Files/Ebay_train.txt; expected"):
        create_splits("online_products", tmp_path)
    write_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt"
    info.write_text("id class super path\n")
    with pytest.raises(DatasetError, match="first line must be the header"):
        create_splits("online_products", tmp_path)
    info.write_text("image_id class_id super_class_id path\n1 5 1 bicycle_final/missing.jpg\n")
    with pytest.raises(DatasetError, match="missing.jpg, which does not exist"):
        create_splits("online_products", tmp_path)


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize("augmentation", ["base", "adv", "big", "red", "none", "small"])
def test_transforms_give_normalised_tensors_of_the_crop_size(tmp_path, augmentation):
    make_class_folders(tmp_path / "cub200" / "images", 2, 2, size=(50, 70))
    splits = create_splits("cub200", tmp_path)
    for train in (True, False):
        dataset = ImageDataset(splits.train, build_transform(augmentation, 32, train=train))
        image, label, index = dataset[1]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and (label, index) == (0, 1)


def test_eval_transform_is_resize_then_imagenet_normalisation():
    from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    raw = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = build_transform("none", 16, train=False)(raw)
    expected = (raw.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out, expected)
    cropped = build_transform("base", 224, train=False)(torch.zeros(3, 300, 400, dtype=torch.uint8))
    assert cropped.shape == (3, 224, 224)  # Resize(256) then CenterCrop(224)


def test_in_memory_dataset_decodes_each_file_once(tmp_path, monkeypatch):
    from engine.data import folder

    make_class_folders(tmp_path / "cub200" / "images", 2, 3)
    splits = create_splits("cub200", tmp_path)
    calls = []
    real = folder.load_rgb
    monkeypatch.setattr(folder, "load_rgb", lambda p: calls.append(p) or real(p))
    cache: dict = {}
    first = ImageDataset(splits.train, build_transform("none", 16, train=False), in_memory=True, cache=cache)
    ImageDataset(splits.train, build_transform("base", 16, train=True), in_memory=True, cache=cache)
    assert len(calls) == len(splits.train)
    assert torch.equal(first[0][0], ImageDataset(splits.train, build_transform("none", 16, train=False))[0][0])


# ------------------------------------------------------------------ sampler


def test_class_random_batches_are_class_groups():
    labels = np.repeat(np.arange(10), 7)
    sampler = samplers.create("class_random", labels, batch_size=12, samples_per_class=3, seed=4)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 70 // 12
    for batch in batches:
        assert len(batch) == 12
        for start in range(0, 12, 3):
            assert len(set(labels[batch[start:start + 3]])) == 1
    again = list(sampler)
    sampler.set_epoch(2)
    assert again == batches and list(sampler) != batches
    with pytest.raises(ValueError, match="not a multiple"):
        samplers.create("class_random", labels, batch_size=10, samples_per_class=3)


# ------------------------------------------------------------------ architectures


def test_frozen_batchnorm_keeps_its_statistics_and_trains_its_affine():
    model = models.create_model("smallcnn_frozen_normalize", embed_dim=8)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = model(torch.randn(6, 3, 32, 32) * 3 + 1)
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert bn.weight.requires_grad
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-5)
    unfrozen = models.create_model("smallcnn", embed_dim=8).train()
    unfrozen(torch.randn(6, 3, 32, 32) * 3 + 1)
    bn2 = next(m for m in unfrozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(bn2.running_mean, torch.zeros_like(bn2.running_mean))


def test_arch_strings_are_parsed_with_helpful_errors():
    assert models.parse_arch("resnet50_frozen_normalize") == models.ArchSpec("resnet50", frozenset({"frozen", "normalize"}))
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet5_frozen' \(did you mean 'resnet50'\?\)"):
        models.parse_arch("resnet5_frozen")
    with pytest.raises(ValueError, match=r"unknown modifier 'normalise'.*\(did you mean 'normalize'\?\)"):
        models.parse_arch("smallcnn_normalise")
    assert set(models.list_models()) >= {"resnet50", "smallcnn"}


def test_resnet50_weights_offline_error_and_local_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    from engine.models.resnet import WeightsError

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"model.weights_path=<file>, or set model.pretrained=false"):
        models.create_model("resnet50_frozen_normalize", embed_dim=16, pretrained=True)
    source = models.create_model("resnet50", embed_dim=16)
    from torchvision.models import resnet50

    reference = resnet50()
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    loaded = models.create_model("resnet50_frozen", embed_dim=16, weights_path=str(tmp_path / "r50.pth"))
    assert torch.equal(loaded.trunk[0].weight, reference.conv1.weight)
    assert not torch.equal(source.trunk[0].weight, reference.conv1.weight)
    out = loaded.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 16)
    with pytest.raises(WeightsError, match="does not exist"):
        models.create_model("resnet50", embed_dim=16, weights_path=str(tmp_path / "nope.pth"))

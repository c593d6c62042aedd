"""ViT recipes: optimizer groups (weight-decay exclusions, head and proxy lrs, layer-wise lr decay), warmup + cosine
stepped per iteration and resumed exactly, a frozen-backbone warm-up, and a short run of a tiny timm ViT."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import REPO

from engine import losses, models, optim, trainer
from engine.config.presets import resolve
from engine.rundir import RunDir

# A ViT small enough for the CPU: 16 px images in 4 px patches, two blocks.
TINY_VIT = ["model.arch=timm:vit_tiny_patch16_224_normalize", "model.pretrained=false", "model.embed_dim=32",
            "data.image_size=16", "model.timm_kwargs={patch_size = 4, depth = 2}"]
FAST = ["optim.epochs=2", "sampler.batch_size=16", "sampler.samples_per_class=4",
        "eval.metrics=['e_recall@1', 'e_recall@2', 'nmi']"]


def _config(*overrides: str):
    return resolve(["quickstart", "digits"], [*FAST, "data.image_size=16", *overrides]).config


def _setup(*overrides: str):
    config = _config(*TINY_VIT, "loss.name=proxy_anchor", "optim.name=adamw", "optim.lr=1e-4", "optim.fc_lr=1e-3",
                     "optim.weight_decay=0.05", *overrides)
    model = models.from_config(config)
    criterion = losses.from_config(config, num_classes=5)
    return config, model, criterion


def _groups_by_param(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names.get(id(p), "proxies"): group for group in optimizer.param_groups for p in group["params"]}


def test_the_original_groups_are_unchanged():
    config = _config()
    model = models.from_config(config)
    criterion = losses.from_config(config, num_classes=5)
    single = optim.build_optimizer(config.optim, model, criterion)
    assert [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in single.param_groups] == [
        ("network", 1e-3, 0.0, len(list(model.parameters()))), ("loss.margin.beta", 5e-4, 0.0, 1)]
    split = optim.build_optimizer(config.optim.model_copy(update={"fc_lr": 0.5, "weight_decay": 0.1}), model, criterion)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in split.param_groups[:2]] == [("backbone", 1e-3, 0.1), ("head", 0.5, 0.1)]
    assert split.param_groups[1]["params"] == list(model.head.parameters())


def test_decay_exclusions_head_lr_and_proxy_lr():
    config, model, criterion = _setup("optim.decay_exclude=true")
    groups = _groups_by_param(optim.build_optimizer(config.optim, model, criterion), model)
    no_decay = {n for n, g in groups.items() if g["weight_decay"] == 0.0}
    expected = {n for n, p in model.named_parameters() if p.ndim <= 1 or n in ("trunk.pos_embed", "trunk.cls_token")}
    assert no_decay == expected | {"proxies"}
    assert {"trunk.pos_embed", "trunk.cls_token", "trunk.norm.weight", "trunk.blocks.0.attn.qkv.bias", "head.bias"} <= no_decay
    assert groups["trunk.blocks.1.mlp.fc1.weight"]["weight_decay"] == 0.05 and groups["head.weight"]["weight_decay"] == 0.05
    assert {n: g["lr"] for n, g in groups.items() if n.startswith("head.")} == {"head.weight": 1e-3, "head.bias": 1e-3}
    assert all(g["lr"] == 1e-4 for n, g in groups.items() if n.startswith("trunk."))
    assert groups["proxies"]["lr"] == pytest.approx(1e-4 * 100) and groups["proxies"]["name"] == "loss.proxy_anchor.proxies"
    assert len(groups) == len(list(model.parameters())) + 1  # every parameter once, plus the proxies


def test_layer_decay_scales_the_lr_per_block():
    config, model, criterion = _setup("optim.layer_decay=0.5", "optim.decay_exclude=true")
    groups = _groups_by_param(optim.build_optimizer(config.optim, model, criterion), model)
    # three layer groups of a two-block ViT: the stem (0), block 0 (1), block 1 with the final norm (2) -> 0.5^(2 - i)
    expected = {"trunk.cls_token": 0.25, "trunk.pos_embed": 0.25, "trunk.patch_embed.proj.weight": 0.25,
                "trunk.blocks.0.attn.qkv.weight": 0.5, "trunk.blocks.0.norm1.bias": 0.5,
                "trunk.blocks.1.mlp.fc2.weight": 1.0, "trunk.norm.weight": 1.0}
    assert {n: groups[n]["lr"] / 1e-4 for n in expected} == pytest.approx(expected)
    assert groups["trunk.blocks.0.norm1.bias"]["weight_decay"] == 0.0
    assert groups["trunk.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert groups["head.weight"]["lr"] == 1e-3 and groups["proxies"]["lr"] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="optim.layer_decay needs a timm backbone"):
        smallcnn = _config("optim.layer_decay=0.5")
        optim.build_optimizer(smallcnn.optim, models.from_config(smallcnn), losses.from_config(smallcnn, num_classes=5))


def test_warmup_cosine_factors():
    schedule = optim.WarmupCosine(warmup=2, total=6, min_ratio=0.1)
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 4))
    assert [schedule(t) for t in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),
                                                             half, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), 0.1])
    config = _config("optim.scheduler=warmup_cosine", "optim.warmup_epochs=0.5")
    model = models.from_config(config)
    optimizer = optim.build_optimizer(config.optim, model, losses.from_config(config, num_classes=5))
    scheduler = optim.build_scheduler(config.optim, optimizer, iterations_per_epoch=4)
    assert (scheduler.lr_lambdas[0].warmup, scheduler.lr_lambdas[0].total) == (2, 8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    with pytest.raises(ValueError, match=r"the warmup \(8 iterations\) covers the whole run"):
        optim.build_scheduler(config.optim.model_copy(update={"warmup_epochs": 2.0}), optimizer, iterations_per_epoch=4)


def test_warmup_needs_the_warmup_schedule():
    from engine.config.presets import ConfigError

    with pytest.raises(ConfigError, match="optim.warmup_epochs/warmup_iterations need optim.scheduler='warmup_cosine'"):
        _config("optim.warmup_epochs=1")
    with pytest.raises(ConfigError, match="give optim.warmup_epochs or optim.warmup_iterations, not both"):
        _config("optim.scheduler=warmup_cosine", "optim.warmup_epochs=1", "optim.warmup_iterations=3")


def _comparable(run_dir: Path) -> list:
    return [(r["kind"], r["epoch"], r["split"], {k: v for k, v in r["metrics"].items() if k != "epoch_time_s"})
            for r in RunDir(run_dir).read_metrics()]


def test_warmup_cosine_steps_per_iteration_and_resumes_exactly(tmp_path, monkeypatch):
    config = _config("optim.epochs=3", "sampler.batch_size=128", "data.augmentation='small'", "optim.name=adamw",
                     "optim.scheduler=warmup_cosine", "optim.warmup_iterations=5", "optim.decay_exclude=true",
                     "optim.fc_lr=0.002")
    trainer.run(config, tmp_path / "straight", show_progress=False)
    lrs = [r["metrics"]["lr"] for r in RunDir(tmp_path / "straight").read_metrics() if r["kind"] == "train"]
    total = 3 * 7  # 7 batches per epoch
    expected = [1e-3 * optim.WarmupCosine(5, total, 0.0)(7 * epoch) for epoch in (1, 2, 3)]
    assert lrs == pytest.approx(expected)  # stepped after every batch: the lr at the start of the next one

    calls = {"n": 0}

    def stop_after(self) -> bool:
        calls["n"] += 1
        return calls["n"] >= 10  # inside epoch 2

    with monkeypatch.context() as patch:
        patch.setattr(trainer.StopRequested, "__bool__", stop_after)
        assert trainer.run(config, tmp_path / "resumed", show_progress=False).state == "stopped"
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 10 and state["scheduler"]["lr_lambdas"][0]["total"] == total
    assert trainer.run(config, tmp_path / "resumed", show_progress=False, resume=True).state == "finished"
    assert _comparable(tmp_path / "resumed") == _comparable(tmp_path / "straight")


def test_the_backbone_stays_frozen_for_the_warm_up_epochs(tmp_path):
    config = _config("optim.freeze_backbone_epochs=1", "optim.epochs=2", "eval.train_metrics=false")
    run = trainer.Trainer(config, RunDir(tmp_path / "run"), show_progress=False)
    (tmp_path / "run").mkdir()
    run.build()
    start = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    never = type("NeverStop", (), {"__bool__": lambda self: False})()
    run.epoch = 1
    run.train_epoch(never, None)
    after_one = {k: v.detach().clone() for k, v in run.model.named_parameters()}
    assert all(torch.equal(after_one[k], start[k]) for k in start if k.startswith("trunk."))
    assert not torch.equal(after_one["head.weight"], start["head.weight"])
    run.epoch = 2
    run.train_epoch(never, None)
    now = dict(run.model.named_parameters())
    assert all(not torch.equal(now[k], after_one[k]) for k in after_one if k.startswith("trunk."))
    assert all(p.requires_grad for p in run.model.trunk.parameters())


def test_a_tiny_timm_vit_trains_on_digits(tmp_path):
    config = _config(*TINY_VIT, "optim.name=adamw", "optim.lr=1e-3", "optim.decay_exclude=true",
                     "optim.scheduler=warmup_cosine", "optim.warmup_epochs=0.5", "model.grad_checkpointing=true",
                     "eval.at_start=true", "optim.epochs=3", "sampler.batch_size=64", "eval.metrics=['e_recall@1']",
                     "eval.train_metrics=true")
    outcome = trainer.run(config, tmp_path / "vit", show_progress=False)
    assert outcome.state == "finished", outcome.error
    # From scratch on 8x8 digits a ViT does not transfer to the unseen test digits; it must fit the training ones.
    train = [r for r in RunDir(tmp_path / "vit").read_metrics() if r["kind"] == "eval" and r["split"] == "train"]
    assert [r["epoch"] for r in train] == [0, 1, 2, 3]
    assert train[-1]["metrics"]["e_recall@1"] > train[0]["metrics"]["e_recall@1"] + 0.1
    state = torch.load(tmp_path / "vit" / "checkpoints" / "last.pt", weights_only=False)
    assert state["model"]["trunk.pos_embed"].shape == (1, 1 + 16, 192)  # 16 px in 4 px patches


def test_presets_of_the_recipes_validate_with_every_dataset():
    for method in ("dino-vits16-frozen", "vits16-dino-triplet", "vits16-dino-proxyanchor", "proxyanchor-r50-512"):
        for dataset in ("cub200", "cars196", "online_products", "inshop"):
            config = resolve([method, dataset]).config
            assert config.data.dataset == ("in_shop" if dataset == "inshop" else dataset)
    frozen = resolve(["dino-vits16-frozen", "cub200"]).config
    assert (frozen.model.head, frozen.model.embed_dim, frozen.eval.only) == ("none", 384, True)
    pa = resolve(["proxyanchor-r50-512", "online_products"]).config
    assert (pa.optim.epochs, pa.optim.lr, pa.optim.freeze_backbone_epochs, pa.model.arch) == (
        60, 6e-4, 1, "resnet50_normalize_double_he")
    assert all((REPO / "presets" / f"{name}.toml").is_file() for name in ("inshop", "dino-vits16-frozen"))

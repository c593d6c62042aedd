"""timm backbones: names, headless models, weights from files and the offline cache, modifiers, input config.

Every model is built with random weights at a small input size; nothing downloads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file

from engine import catalog, models, preflight, timm_hub
from engine.config.presets import resolve
from engine.models import WeightsError
from engine.models.timm import load_weights

# Small models of the three families: a ViT at 32 px (4 patches of 16), a ConvNeXt, a ResNet.
SMALL = {
    "timm:vit_tiny_patch16_224": {"img_size": 32},
    "timm:convnext_atto": {},
    "timm:resnet18": {},
}


def _model(arch: str, **kw) -> models.EmbeddingModel:
    kwargs = dict(SMALL.get(arch.split("_frozen")[0].split("_double")[0], {}))
    return models.create_model(arch, embed_dim=8, backbone_kwargs=kwargs or None, **kw)


# ------------------------------------------------------------------ names


def test_timm_names_validate_without_torch_or_timm():
    code = (
        "import sys\n"
        "from engine import catalog\n"
        "print(catalog.parse_arch('timm:vit_small_patch16_224.dino_frozen_normalize'))\n"
        "print(catalog.parse_arch('vit_s16_dino_normalize'))\n"
        "try:\n    catalog.parse_arch('timm:vit_smal_patch16_224.dino')\nexcept ValueError as e:\n    print(e)\n"
        "print('torch' in sys.modules, 'timm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "ArchSpec(backbone='timm:vit_small_patch16_224.dino', modifiers=frozenset({'frozen', 'normalize'}))" \
        or lines[0] == "ArchSpec(backbone='timm:vit_small_patch16_224.dino', modifiers=frozenset({'normalize', 'frozen'}))"
    assert lines[1] == "ArchSpec(backbone='vit_s16_dino', modifiers=frozenset({'normalize'}))"
    assert lines[2].startswith("unknown timm model 'vit_smal_patch16_224.dino' (did you mean 'vit_small_patch16_224.dino'?)")
    assert lines[3] == "False False"


def test_unknown_tag_and_the_config_error_are_one_line():
    with pytest.raises(ValueError, match=r"^timm model 'resnet50' has no pretrained tag 'a1_in1kk' \(did you mean 'a1_in1k'\?\); allowed tags: "):
        catalog.parse_arch("timm:resnet50.a1_in1kk")
    from engine.config.presets import ConfigError

    with pytest.raises(ConfigError) as error:
        resolve(["quickstart"], ["model.arch=timm:convnext_tinyy"])
    assert len(error.value.lines) == 1 and "did you mean 'convnext_tiny'" in error.value.lines[0]


def test_the_stored_timm_names_match_the_installed_timm():
    stored = json.loads(timm_hub.NAMES_FILE.read_text())
    assert stored == timm_hub.build(), "engine/timm_models.json is out of date: run `uv run python -m engine.catalog`"
    assert all(timm_hub.resolve(name).tag for name in timm_hub.ALIASES.values())


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_saved_state_dict_loads_back(tmp_path, arch, suffix):
    source = _model(arch).eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.trunk.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)
    loaded = _model(arch, weights_path=str(path)).eval()
    loaded.head.load_state_dict(source.head.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))
    assert not torch.equal(_model(arch).trunk.state_dict()[next(iter(state))], state[next(iter(state))])


def test_wrapped_prefixed_checkpoints_with_a_classifier_load_and_wrong_ones_are_refused(tmp_path):
    import timm

    full = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)  # a checkpoint with its classifier
    state = {f"module.{k}": v for k, v in full.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = _model("timm:vit_tiny_patch16_224", weights_path=str(tmp_path / "ckpt.pth"))
    assert torch.equal(loaded.trunk.blocks[0].attn.qkv.weight, full.blocks[0].attn.qkv.weight)

    del state["module.blocks.1.mlp.fc1.weight"]
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"is not a timm vit_tiny_patch16_224.augreg_in21k_ft_in1k state dict: 1 missing keys \['blocks.1.mlp.fc1.weight'\]"):
        _model("timm:vit_tiny_patch16_224", weights_path=str(tmp_path / "broken.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        _model("timm:resnet18", weights_path=str(tmp_path / "nope.safetensors"))


def test_position_embeddings_are_resampled_to_the_input_size(tmp_path):
    source = _model("timm:vit_tiny_patch16_224")  # 2 x 2 patches
    torch.save(source.trunk.state_dict(), tmp_path / "vit32.pth")
    trunk = models.create_model("timm:vit_tiny_patch16_224", embed_dim=8, image_size=48, weights_path=str(tmp_path / "vit32.pth")).trunk
    assert trunk.pos_embed.shape == (1, 1 + 9, 192)
    load_weights(trunk, str(tmp_path / "vit32.pth"), "vit_tiny_patch16_224")  # the same file again, through the filter
    assert torch.equal(trunk.cls_token, source.trunk.cls_token)


def test_frozen_keeps_batchnorm_statistics_and_trains_the_rest():
    torch.manual_seed(0)
    model = _model("timm:resnet18_frozen_normalize").train()
    batchnorms = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and all(not m.training for m in batchnorms)  # eval mode in train()
    assert all(p.requires_grad for p in model.parameters())  # "frozen" is the statistics, not the affine weights
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(torch.randn(4, 3, 32, 32)) * torch.randn(4, 8)).sum().backward()
    optimizer.step()
    after = model.trunk.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(after["bn1.running_var"], before["bn1.running_var"])
    assert not torch.equal(after["bn1.weight"], before["bn1.weight"])
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    unfrozen = _model("timm:resnet18").train()
    unfrozen(torch.randn(4, 3, 32, 32))
    assert not torch.equal(unfrozen.trunk.bn1.running_mean, torch.zeros(64))

    with pytest.raises(ValueError, match="timm vit_tiny_patch16_224 has no BatchNorm layers; drop _frozen"):
        _model("timm:vit_tiny_patch16_224_frozen")


def test_head_none_keeps_the_backbone_width_and_double_pools_avg_and_max():
    model = models.create_model("timm:vit_tiny_patch16_224_normalize", embed_dim=192, head="none",
                                backbone_kwargs={"img_size": 32})
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 192) and torch.allclose(out.norm(dim=1), torch.ones(2))
    assert list(model.head.parameters()) == []
    with pytest.raises(ValueError, match=r"model.head='none' keeps the width of timm:vit_tiny_patch16_224 \(192\), but "
                                         r"model.embed_dim=128; set model.embed_dim=192"):
        models.create_model("timm:vit_tiny_patch16_224", embed_dim=128, head="none", backbone_kwargs={"img_size": 32})
    double = _model("timm:convnext_atto_double")
    assert double.trunk.head.global_pool.pool_type == "avgmax"
    features = double.trunk.forward_features(torch.randn(1, 3, 32, 32))
    expected = double.trunk.forward_head(features, pre_logits=True)
    pooled = 0.5 * (features.mean((2, 3), keepdim=True) + features.amax((2, 3), keepdim=True))
    assert torch.allclose(expected, double.trunk.head.norm(pooled).flatten(1), atol=1e-6)


def test_grad_checkpointing_reaches_timm_and_is_refused_elsewhere():
    assert _model("timm:vit_tiny_patch16_224", grad_checkpointing=True).trunk.grad_checkpointing
    with pytest.raises(ValueError, match="model.grad_checkpointing applies to timm: backbones only, not to 'smallcnn'"):
        models.create_model("smallcnn", embed_dim=8, grad_checkpointing=True)


def test_input_size_and_normalisation_come_from_the_pretrained_config_unless_set():
    config = resolve(["quickstart"], ["model.arch=vit_s14_dinov2", "data.augmentation=base"]).config
    spec = models.input_spec(config)
    assert (spec.size, spec.crop_pct, spec.interpolation, spec.resize_side) == (518, 1.0, "bicubic", 518)
    dino = models.input_spec(resolve(["quickstart"], ["model.arch=vit_s16_dino"]).config)
    assert (dino.size, dino.resize_side, dino.mean) == (224, 248, (0.485, 0.456, 0.406))
    augreg = models.input_spec(resolve(["quickstart"], ["model.arch=vit_s16_in21k"]).config)
    assert augreg.mean == augreg.std == (0.5, 0.5, 0.5)
    set_here = models.input_spec(resolve(["quickstart"], ["model.arch=vit_s16_dino", "data.image_size=32",
                                                          "data.mean=[0.1, 0.2, 0.3]", "data.std=[1.0, 1.0, 1.0]"]).config)
    assert (set_here.size, set_here.mean, set_here.std) == (32, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    steps = set_here.transform("base", train=False).transforms
    assert steps[1].size == [35] and steps[1].interpolation.value == "bicubic" and steps[2].size == (32, 32)
    legacy = models.input_spec(resolve(["quickstart"], ["model.arch=resnet50", "data.image_size=32"]).config)
    assert (legacy.resize_side, legacy.interpolation) == (37, "bilinear")  # the original's round(32 * 256 / 224)


# ------------------------------------------------------------------ offline weights


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hf" / "hub"


HINT = ("fetch the Hugging Face repository timm/vit_small_patch16_224.dino (model.safetensors) where there is internet: "
        "`hf download timm/vit_small_patch16_224.dino model.safetensors`")


def test_offline_without_a_cached_copy_says_what_to_fetch(offline_empty_cache):
    with pytest.raises(WeightsError) as error:
        models.create_model("vit_s16_dino", embed_dim=384, head="none", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("the weights of timm vit_small_patch16_224.dino are not cached and HF_HUB_OFFLINE=1 forbids")
    assert HINT in message and "set model.weights_path='DIR/model.safetensors'" in message


def test_preflight_reports_missing_cached_weights_and_accepts_a_cached_file(offline_empty_cache, tmp_path):
    config = resolve(["quickstart"], ["model.arch=vit_s16_dino_normalize", "model.embed_dim=384", "model.head=none",
                                      "model.pretrained=true"]).config
    found = [line for line in preflight.problems(config, tmp_path / "run", check_device=False) if "timm" in line]
    assert len(found) == 1 and found[0].startswith("model.arch='vit_s16_dino_normalize': the weights of timm "
                                                   "vit_small_patch16_224.dino are not cached")
    assert HINT in found[0]
    snapshot = offline_empty_cache / "models--timm--vit_small_patch16_224.dino" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, snapshot / "model.safetensors")
    assert timm_hub.cached_weights(timm_hub.resolve("vit_small_patch16_224.dino")) == snapshot / "model.safetensors"
    assert not [line for line in preflight.problems(config, tmp_path / "run", check_device=False) if "timm" in line]
    with_file = config.model_copy(update={"model": config.model.model_copy(update={"weights_path": str(tmp_path / "w.pth")})})
    assert [line for line in preflight.problems(with_file, tmp_path / "run", check_device=False) if "weights_path" in line]

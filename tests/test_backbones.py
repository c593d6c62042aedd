"""BN-Inception and GoogLeNet backbones: shapes, checkpoints, frozen BatchNorm, offline errors.

Nothing here touches the network: every download path is monkeypatched to fail.
"""

from __future__ import annotations

import pytest
import torch

from engine import models
from engine.data import build_transform
from engine.models import WeightsError

# Cadene pretrainedmodels BN-Inception (bn_inception-52deb4733.pth) key names and shapes of a few
# layers, transcribed from pretrainedmodels/models/bninception.py (conv: weight + bias; BN: 4 tensors).
CADENE_CONVS = {
    "conv1_7x7_s2": (64, 3, 7, 7),
    "conv2_3x3": (192, 64, 3, 3),
    "inception_3a_pool_proj": (32, 192, 1, 1),
    "inception_3c_double_3x3_2": (96, 96, 3, 3),
    "inception_4c_pool_proj": (128, 576, 1, 1),
    "inception_4d_1x1": (96, 608, 1, 1),
    "inception_4e_double_3x3_1": (256, 192, 3, 3),
    "inception_5a_3x3_reduce": (192, 1056, 1, 1),
    "inception_5b_pool_proj": (128, 1024, 1, 1),
}
CADENE_TENSORS = 69 * 6  # 69 conv+BN pairs without num_batches_tracked, plus last_linear.{weight,bias}


def _offline(*args, **kwargs):
    raise OSError("network is unreachable")


@pytest.fixture
def no_network(monkeypatch):
    from torchvision.models import GoogLeNet_Weights, ResNet50_Weights

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    monkeypatch.setattr(GoogLeNet_Weights, "get_state_dict", _offline)
    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", _offline)


def _cadene_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The old Caffe export: BN tensors shaped (1, C), no num_batches_tracked, an ImageNet classifier."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = value.clone().unsqueeze(0) if "_bn." in key else value.clone()
    out["last_linear.weight"] = torch.randn(1000, 1024)
    out["last_linear.bias"] = torch.randn(1000)
    return out


def test_bninception_shape_keys_and_strict_roundtrip(tmp_path, no_network):
    model = models.create_model("bninception", embed_dim=16, pretrained=False).eval()
    with torch.no_grad():
        assert model.trunk(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)
    state = model.trunk.state_dict()
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == CADENE_TENSORS
    for name, shape in CADENE_CONVS.items():
        assert state[f"{name}.weight"].shape == shape and state[f"{name}.bias"].shape == (shape[0],)
        for t in ("weight", "bias", "running_mean", "running_var"):
            assert state[f"{name}_bn.{t}"].shape == (shape[0],)
    torch.save(state, tmp_path / "bni.pth")
    loaded = models.create_model("bninception_frozen", embed_dim=16, weights_path=str(tmp_path / "bni.pth"))
    for key, value in loaded.trunk.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_bninception_loads_a_cadene_style_checkpoint(tmp_path, no_network):
    source = models.create_model("bninception", embed_dim=8).eval()
    checkpoint = _cadene_style(source.trunk.state_dict())
    marked = {}
    for name, shape in CADENE_CONVS.items():  # written by Cadene key name, independently of our modules
        marked[f"{name}.weight"] = torch.full(shape, 0.01)
        marked[f"{name}_bn.running_var"] = torch.full((1, shape[0]), 2.0)
    checkpoint.update(marked)
    assert len(checkpoint) == CADENE_TENSORS + 2
    torch.save(checkpoint, tmp_path / "bn_inception-52deb4733.pth")
    loaded = models.create_model("bninception_frozen_normalize", embed_dim=8, pretrained=True,
                                 weights_path=str(tmp_path / "bn_inception-52deb4733.pth"))
    state = loaded.trunk.state_dict()
    for key, value in marked.items():
        assert torch.equal(state[key], value.reshape(state[key].shape)), key
    assert torch.equal(state["inception_4a_1x1_bn.running_mean"], source.trunk.inception_4a_1x1_bn.running_mean)

    del checkpoint["inception_4c_pool_proj_bn.running_mean"]
    torch.save(checkpoint, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"missing keys \['inception_4c_pool_proj_bn.running_mean'\]"):
        models.create_model("bninception", embed_dim=8, weights_path=str(tmp_path / "broken.pth"))


def test_bninception_input_is_bgr_on_a_0_255_scale():
    info = models.backbone_info("bninception_frozen")
    assert info.input_size == 224
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32).contiguous()  # RGB
    normalised = build_transform("none", 32, train=False, mean=info.mean, std=info.std)(pixel)
    model = models.create_model("bninception", embed_dim=4).eval()
    seen = {}

    def grab(module, args, out) -> None:
        seen["x"] = args[0].clone()

    model.trunk.conv1_7x7_s2.register_forward_hook(grab)
    with torch.no_grad():
        model(normalised.unsqueeze(0))
    # Caffe convention: BGR, 255·p − (104, 117, 128); the original's mean/std give it within 1.
    expected = torch.tensor([50 - 104, 100 - 117, 200 - 128], dtype=torch.float32)
    assert torch.allclose(seen["x"][0, :, 0, 0], expected, atol=1.0)


def test_bninception_pretrained_without_a_file_says_how_to_proceed(no_network):
    with pytest.raises(WeightsError, match=r"no maintained download.*model.weights_path=<file>, or set model.pretrained=false"):
        models.create_model("bninception_frozen_normalize", embed_dim=16, pretrained=True)


def test_googlenet_offline_error_local_file_and_training_step(tmp_path, no_network):
    with pytest.raises(WeightsError, match=r"googlenet .*OSError.*model.weights_path=<file>, or set model.pretrained=false"):
        models.create_model("googlenet_frozen_normalize", embed_dim=16, pretrained=True)
    from torchvision.models import GoogLeNet

    reference = GoogLeNet(aux_logits=True, transform_input=True, init_weights=True)  # torchvision's file layout
    torch.save(reference.state_dict(), tmp_path / "googlenet-1378be20.pth")
    model = models.create_model("googlenet_frozen_normalize", embed_dim=16, pretrained=True,
                                weights_path=str(tmp_path / "googlenet-1378be20.pth"))
    assert torch.equal(model.trunk.inception5b.branch4[1].conv.weight, reference.inception5b.branch4[1].conv.weight)
    assert models.backbone_info("googlenet").input_size == 224
    with torch.no_grad():
        assert model.eval().trunk(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)
        reference.eval()
        x = torch.randn(2, 3, 64, 64)
        features = reference.avgpool(model.trunk(x)).flatten(1)
        ref_x = reference._transform_input(x)
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                     "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                     "inception5a", "inception5b"):
            ref_x = getattr(reference, name)(ref_x)
        assert torch.allclose(features, reference.avgpool(ref_x).flatten(1), atol=1e-5)

    # It trains (the original returned a bare tensor and crashed in main.py). Not frozen here: a random
    # init under frozen identity BatchNorm statistics shrinks the features to ~0.
    model = models.create_model("googlenet_normalize", embed_dim=16, weights_path=str(tmp_path / "googlenet-1378be20.pth"))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    z = model(torch.randn(4, 3, 64, 64))
    assert z.shape == (4, 16)
    loss = (z[0] - z[1]).norm() - (z[0] - z[2]).norm() + 0.2  # a triplet term, active or not
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"head.weight", "trunk.conv1.conv.weight", "trunk.inception5b.branch1.bn.weight"} <= changed


@pytest.mark.parametrize("backbone", ["bninception", "googlenet"])
def test_frozen_batchnorm_of_the_inception_backbones(backbone):
    model = models.create_model(f"{backbone}_frozen_normalize", embed_dim=8)
    model.train()
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    stats = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    out = model(torch.randn(3, 3, 32, 32) * 2 + 1)
    assert all(torch.equal(bn.running_mean, m) and torch.equal(bn.running_var, v) for bn, (m, v) in zip(bns, stats))
    assert all(bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    out.sum().backward()
    assert bns[0].weight.grad is not None

    unfrozen = models.create_model(backbone, embed_dim=8).train()
    unfrozen(torch.randn(3, 3, 32, 32) * 2 + 1)
    bn = next(m for m in unfrozen.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.training and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))

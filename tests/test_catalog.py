"""engine.catalog: the names a config may use, the same as the live registries, known without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from engine import catalog, losses
from engine.config.schema import Config


def test_catalog_json_matches_the_registries():
    from engine import data, losses, miners, models, samplers  # noqa: F401 - every registry is loaded
    from engine.data import transforms  # noqa: F401

    stored = json.loads(catalog.CATALOG_FILE.read_text())
    assert stored == catalog.build(), "engine/catalog.json is out of date: run `uv run python -m engine.catalog`"


def test_configs_validate_and_presets_resolve_without_torch(isolated_env):
    code = (
        "import sys;"
        "from dmltui.launching import plan_runs;"
        "planned, _ = plan_runs(['margin-b12-d', 'cub200'], ['miner.name=semihard', 'model.arch=resnet50_frozen'], seeds='0-1');"
        "from dmltui.form_fields import registry_choices; choices = registry_choices();"
        "from engine.config.presets import ConfigError, resolve\n"
        "try:\n    resolve(['quickstart'], ['loss.name=margn'])\nexcept ConfigError as error:\n    print(error.lines[0])\n"
        "print(len(planned), 'resnet50_frozen' in choices['architecture'], 'torch' in sys.modules)"
    )
    # cub200 is not on disk here: plan_runs' dataset check is the engine's, so point the data root at a fake layout
    data = isolated_env / "data" / "cub200" / "images"
    for name in ("001.A", "002.B"):
        (data / name).mkdir(parents=True)
        (data / name / "x.jpg").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "DMLTUI_DATA": str(isolated_env / "data")})
    assert result.returncode == 0, result.stderr
    error, summary = result.stdout.strip().splitlines()
    assert "unknown loss 'margn' (did you mean 'margin'?)" in error
    assert summary == "2 True False"  # two runs planned, the choices known, and torch never imported


def test_a_name_registered_at_run_time_counts(monkeypatch):
    @losses.LOSSES.register("catalog-test-loss")
    class Custom(losses.DMLLoss):
        REQUIRES_MINER = False

    try:
        assert Config.model_validate({"loss": {"name": "catalog-test-loss"}}).loss.name == "catalog-test-loss"
        assert "catalog-test-loss" in catalog.names("loss")
    finally:
        losses.LOSSES.unregister("catalog-test-loss")


@pytest.mark.parametrize("arch, message", [
    ("resnet5_frozen", "unknown architecture 'resnet5_frozen' (did you mean 'resnet50'?); allowed: bninception, "
                       "convnext_b, convnext_s, convnext_t, googlenet, resnet50, smallcnn, vit_b14_dinov2, vit_b16_dino, "
                       "vit_s14_dinov2, vit_s16_dino, vit_s16_in21k or timm:<any timm model name>, followed by modifiers "
                       "_frozen, _normalize, _double, _he"),
    ("smallcnn_normalise", "unknown modifier 'normalise' in architecture 'smallcnn_normalise' (did you mean 'normalize'?)"),
])
def test_bad_architectures_name_what_is_allowed(arch, message):
    with pytest.raises(ValueError) as error:
        catalog.parse_arch(arch)
    assert str(error.value).startswith(message)


def test_a_loss_and_a_miner_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"miner.name='npair' cannot feed loss.name='margin'; allowed miners: "):
        catalog.check_miner("margin", "npair")
    catalog.check_miner("softmax", "npair")  # a proxy loss ignores the miner
    assert catalog.uses_miner("margin") and not catalog.uses_miner("softmax")

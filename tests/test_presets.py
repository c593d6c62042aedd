"""Preset composition, overrides, validation errors, and the presets CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, dmltui, engine_cli

from engine.config.presets import ConfigError, PresetLibrary, parse_override, resolve
from engine.config.schema import Config, json_schema


def library(*folders: Path) -> PresetLibrary:
    return PresetLibrary([*folders, REPO / "presets"])


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ composition


def test_extends_later_entries_win_and_file_wins_last(tmp_path):
    write(tmp_path, "a", "[optim]\nlr = 0.1\nepochs = 3\n[loss.margin]\nbeta = 0.9\n")
    write(tmp_path, "b", "[optim]\nlr = 0.2\n")
    write(tmp_path, "c", 'extends = ["a", "b"]\n[loss.margin]\nbeta = 0.7\n')
    resolved = resolve("c", library=library(tmp_path))
    assert resolved.config.optim.lr == 0.2  # b after a
    assert resolved.config.optim.epochs == 3  # only a sets it
    assert resolved.config.loss.margin.beta == 0.7  # the file itself wins
    assert resolved.config.loss.margin.margin == 0.2  # untouched default
    assert [Path(p).name for p in resolved.chain] == ["a.toml", "b.toml", "c.toml"]
    assert resolved.sources["optim.lr"].endswith("b.toml")
    assert resolved.sources["loss.margin.beta"].endswith("c.toml")


def test_dataset_specific_values_come_from_the_dataset_preset():
    cub = resolve(["margin-b06-d", "cub200"], library=library()).config
    sop = resolve(["margin-b06-d", "online_products"], library=library()).config
    assert (cub.data.dataset, cub.optim.epochs) == ("cub200", 150)
    assert (sop.data.dataset, sop.optim.epochs) == ("online_products", 100)
    assert cub.loss.margin.beta == sop.loss.margin.beta == 0.6
    assert cub.model.arch == "resnet50_frozen_normalize" and cub.sampler.batch_size == 112


def test_readme_quickstart_composes_method_and_dataset():
    config = resolve("readme-quickstart", library=library()).config
    assert (config.loss.name, config.miner.name, config.data.dataset) == ("margin", "distance", "cub200")
    assert config.loss.margin.beta == 1.2 and config.eval.on_gpu is True and config.optim.epochs == 150


def test_overrides_are_toml_literals_and_apply_last(tmp_path):
    resolved = resolve(
        "quickstart",
        ["loss.margin.beta=0.6", "optim.tau=[3, 6]", "data.dataset=digits", 'log.group="my group"', "eval.at_start=false"],
        library=library(),
    )
    config = resolved.config
    assert config.loss.margin.beta == 0.6 and config.optim.tau == [3, 6]
    assert config.data.dataset == "digits" and config.log.group == "my group" and config.eval.at_start is False
    assert resolved.sources["loss.margin.beta"] == "--set loss.margin.beta"


def test_parse_override_values():
    assert parse_override("a.b=1e-5") == ("a.b", 1e-5)
    assert parse_override("a.b = true") == ("a.b", True)
    assert parse_override("a.b=cub200") == ("a.b", "cub200")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("loss.margin.beta")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("loss..beta=1")


def test_every_original_default_is_the_config_default():
    c = Config()
    assert (c.data.dataset, c.data.augmentation, c.data.tv_split_perc, c.data.workers) == ("cub200", "base", 0.8, 6)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.epochs, c.optim.gamma, c.optim.tau) == (1e-5, 4e-4, 150, 0.3, [1000])
    assert (c.sampler.batch_size, c.sampler.samples_per_class, c.sampler.name) == (112, 2, "class_random")
    assert (c.loss.name, c.miner.name, c.model.arch, c.model.embed_dim) == ("margin", "distance", "resnet50_frozen_normalize", 128)
    assert (c.loss.margin.beta, c.loss.margin.beta_lr, c.loss.margin.margin) == (1.2, 5e-4, 0.2)
    assert (c.loss.histogram.nbins, c.loss.softmax.lr, c.loss.arcface.feature_scale) == (65, 1e-5, 16.0)
    assert c.loss.softtriplet.lambda_ == 8.0 and c.miner.rho_distance.cp == 0.2 and c.run.seed == 1
    assert c.eval.storage_metrics == ["e_recall@1"] and "rho_spectrum@-1" in c.eval.metrics


def test_json_schema_has_every_section_and_descriptions():
    schema = json_schema()
    assert set(schema["properties"]) == {"data", "model", "loss", "miner", "sampler", "optim", "eval", "log", "run"}
    margin = schema["$defs"]["MarginParams"]["properties"]
    assert margin["beta"]["default"] == 1.2 and margin["beta"]["description"]
    for definition in schema["$defs"].values():  # every field carries a one-line description
        for name, prop in definition.get("properties", {}).items():
            assert prop.get("description"), name
            assert "\n" not in prop["description"]
    assert "lambda" in schema["$defs"]["SoftTripleParams"]["properties"]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[loss.margin]\nbetta = 0.6\n", "bad.toml: unknown key loss.margin.betta (did you mean 'beta'?)"),
        ('[loss.margin]\nbeta = "high"\n', "bad.toml: loss.margin.beta = 'high': Input should be a valid number"),
        ('[loss]\nname = "marign"\n', "bad.toml: loss.name = 'marign': unknown loss 'marign' (did you mean 'margin'?); allowed: angular, arcface,"),
        ('[miner]\nname = "distanc"\n', "(did you mean 'distance'?)"),
        ('[data]\ndataset = "cub201"\n', "bad.toml: data.dataset = 'cub201': unknown dataset 'cub201' (did you mean 'cub200'?)"),
        ('[model]\narch = "resnet50_frozn"\n', "unknown modifier 'frozn' in architecture 'resnet50_frozn' (did you mean 'frozen'?)"),
        ("[sampler]\nbatch_size = 111\n", "bad.toml: sampler: sampler.batch_size=111 is not a multiple of sampler.samples_per_class=2"),
        ('[eval]\nmetrics = ["e_recal@1"]\n', "(did you mean 'e_recall@1'?)"),
        ('[eval]\nstorage_metrics = ["nmi"]\nmetrics = ["e_recall@1"]\n', "must also be listed in eval.metrics"),
        ("[optim]\nlr = -1.0\n", "bad.toml: optim.lr = -1.0: Input should be greater than 0"),
        ('[optim]\nname = "adagrad"\n', "optim.name = 'adagrad': Input should be 'adam', 'adamw' or 'sgd'"),
        ("[lose]\nname = 'margin'\n", "bad.toml: unknown top-level key 'lose' (did you mean 'loss'?)"),
        ("loss = 3\n", "bad.toml: loss = 3: expected a table of settings"),
        ("[loss\n", "bad.toml: not valid TOML"),
        ('extends = ["nosuch"]\n', "unknown preset 'nosuch'"),
        ('extends = ["quickstrat"]\n', "(did you mean 'quickstart'?)"),
    ],
)
def test_errors_are_one_line_naming_file_key_value_and_allowed(tmp_path, text, expected):
    write(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as caught:
        resolve(str(tmp_path / "bad.toml"), library=library(tmp_path))
    message = str(caught.value)
    assert expected in message
    assert all("\n" not in line for line in caught.value.lines)


def test_error_names_the_file_that_set_the_value_not_the_child(tmp_path):
    write(tmp_path, "parent", "[optim]\nepochs = 0\n")
    write(tmp_path, "child", 'extends = ["parent"]\n[loss.margin]\nbeta = 0.5\n')
    with pytest.raises(ConfigError, match=r"parent\.toml: optim\.epochs = 0: Input should be greater than or equal to 1"):
        resolve("child", library=library(tmp_path))


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"--set loss.margin.beta: loss.margin.beta = 'x': Input should be a valid number"):
        resolve("quickstart", ["loss.margin.beta=x"], library=library())
    with pytest.raises(ConfigError, match=r"unknown key loss.margin.bta \(did you mean 'beta'\?\)"):
        resolve("quickstart", ["loss.margin.bta=1"], library=library())


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "x", 'extends = ["y"]\n')
    write(tmp_path, "y", 'extends = ["x"]\n')
    with pytest.raises(ConfigError, match="extends forms a cycle"):
        resolve("x", library=library(tmp_path))


def test_meta_keys_are_checked(tmp_path):
    write(tmp_path, "m", 'seeds = "0-4"\n')
    with pytest.raises(ConfigError, match=r"seeds = '0-4': expected a list of integers"):
        resolve("m", library=library(tmp_path))


# ------------------------------------------------------------------ CLI


def test_cli_presets_list_json_lists_bundled_presets():
    result = dmltui("presets", "list", "--json")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert {"quickstart", "base", "cub200", "cars196", "online_products", "glyphs", "digits"} <= set(entries)
    assert entries["quickstart"]["extends"] == ["glyphs"]


def test_cli_presets_show_resolved_json_and_toml():
    result = dmltui("presets", "show", "quickstart", "--resolved", "--set", "optim.epochs=2", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["config"]["optim"]["epochs"] == 2
    assert payload["config"]["data"]["dataset"] == "glyphs"
    assert payload["sources"]["optim.epochs"] == "--set optim.epochs"
    raw = dmltui("presets", "show", "quickstart")
    assert raw.returncode == 0 and 'extends = ["glyphs"]' in raw.stdout
    resolved = dmltui("presets", "show", "cub200", "--resolved")
    assert "[loss.margin]" in resolved.stdout and 'dataset = "cub200"' in resolved.stdout


def test_cli_presets_show_unknown_is_not_found():
    result = dmltui("presets", "show", "quickstrt")
    assert result.returncode == 3
    assert "did you mean 'quickstart'" in result.stderr


def test_cli_validate_all_bundled_presets_pass():
    result = dmltui("presets", "validate", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report and all(entry["ok"] for entry in report)


def test_cli_validate_bad_file_exits_2_with_one_line(tmp_path):
    bad = write(tmp_path, "bad", "[loss.margin]\nbetta = 0.6\n")
    result = dmltui("presets", "validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {bad}: unknown key loss.margin.betta (did you mean 'beta'?); allowed under loss.margin: "
                     "margin, beta, beta_lr, nu, beta_constant"]


def test_user_presets_shadow_and_extend_bundled(isolated_env):
    write(isolated_env / "presets", "mine", 'description = "mine"\nextends = ["quickstart"]\n[optim]\nepochs = 1\n')
    result = dmltui("presets", "show", "mine", "--resolved", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["optim"]["epochs"] == 1


def test_engine_refuses_invalid_config_and_launches_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = engine_cli("--preset", "quickstart", "--set", "loss.margin.beta=abc", "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --set loss.margin.beta: loss.margin.beta = 'abc': Input should be a valid number, unable to parse string as a number"
    assert not run_dir.exists()


# ------------------------------------------------------------------ the paper's run families

PAPER_METHODS = [
    "npair", "genlifted", "angular", "proxynca", "histogram", "contrastive-d", "softtriple", "arcface", "triplet-r",
    "triplet-s", "triplet-h", "triplet-d", "quadruplet-d", "margin-b06-d", "margin-b12-d", "snr-d", "multisimilarity",
    "softmax", "r-contrastive", "r-margin-b06", "r-margin-b12", "r-triplet", "r-snr",
]


@pytest.mark.parametrize("method", PAPER_METHODS)
@pytest.mark.parametrize("dataset", ["cub200", "cars196", "online_products"])
def test_every_paper_method_composes_with_every_dataset(method, dataset):
    config = resolve([method, dataset], library=library()).config
    assert config.data.dataset == dataset and config.optim.epochs == (100 if dataset == "online_products" else 150)
    assert config.sampler.batch_size == 112 and config.sampler.samples_per_class == 2 and config.optim.lr == 1e-5
    unnormalised = method in ("npair", "genlifted", "angular")
    assert config.model.arch == ("resnet50_frozen" if unnormalised else "resnet50_frozen_normalize")


@pytest.mark.parametrize(
    ("method", "cp"),
    [("r-contrastive", (0.4, 0.35, 0.15)), ("r-margin-b06", (0.4, 0.35, 0.15)), ("r-margin-b12", (0.35, 0.35, 0.15)),
     ("r-triplet", (0.4, 0.35, 0.15)), ("r-snr", (0.3, 0.35, 0.15))],
)
def test_rho_flip_probability_per_method_and_dataset(method, cp):
    got = tuple(resolve([method, d], library=library()).config.miner.rho_distance.cp for d in ("cub200", "cars196", "online_products"))
    assert got == cp
    assert resolve([method, "cub200"], library=library()).config.miner.name == "rho_distance"


def test_sop_specific_values_and_their_sources():
    sop = resolve(["histogram", "online_products"], library=library())
    assert sop.config.loss.histogram.nbins == 11 and sop.sources["loss.histogram.nbins"].endswith("online_products.toml")
    assert resolve(["histogram", "cub200"], library=library()).config.loss.histogram.nbins == 65
    assert resolve(["softmax", "online_products"], library=library()).config.loss.softmax.lr == 0.002
    assert resolve(["softmax", "cars196"], library=library()).config.loss.softmax.lr == 1e-5
    snr = resolve(["snr-d", "cub200"], library=library()).config
    assert snr.loss.snr.reg_lambda == 0.0 and snr.miner.name == "distance"
    assert resolve(["margin-b06-d", "cub200"], library=library()).config.loss.margin.beta == 0.6


def test_dataset_tables_apply_last_among_presets_but_before_overrides():
    resolved = resolve(["r-snr", "cub200"], library=library())
    assert resolved.sources["miner.rho_distance.cp"].endswith("r-snr.toml [datasets.cub200]")
    assert resolve(["r-snr", "cub200"], ["miner.rho_distance.cp=0.5"], library=library()).config.miner.rho_distance.cp == 0.5
    switched = resolve(["r-snr", "cub200"], ["data.dataset=cars196"], library=library()).config
    assert switched.miner.rho_distance.cp == 0.4  # cub200.toml's value; the CUB-only table no longer applies


def test_dataset_tables_check_dataset_names(tmp_path):
    write(tmp_path, "t", "[datasets.cub201.optim]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"datasets.cub201: unknown dataset 'cub201' \(did you mean 'cub200'\?\)"):
        resolve("t", library=library(tmp_path))

"""The original codebase's flags: table, parser, mapping onto the config, runs-file conversion."""

from __future__ import annotations

import argparse

import pytest

import engine
from engine.config.legacy import (
    ARGUMENT_GROUP_TITLE,
    LEGACY_FLAGS,
    LegacyFlagError,
    add_legacy_arguments,
    convert_runs_file,
    flag_by_name,
    legacy_overrides,
    parse_legacy_argv,
)
from engine.config.presets import deep_merge

# Written by hand from the original's parameters.py (inventory §2), independently of the table:
# a wrong key in LEGACY_FLAGS fails here.
EXPECTED_KEYS = {
    "--dataset": "data.dataset",
    "--use_tv_split": "data.use_tv_split",
    "--tv_split_by_samples": "data.tv_split_by_samples",
    "--tv_split_perc": "data.tv_split_perc",
    "--augmentation": "data.augmentation",
    "--lr": "optim.lr",
    "--fc_lr": "optim.fc_lr",
    "--decay": "optim.weight_decay",
    "--n_epochs": "optim.epochs",
    "--kernels": "data.workers",
    "--bs": "sampler.batch_size",
    "--seed": "run.seed",
    "--scheduler": "optim.scheduler",
    "--gamma": "optim.gamma",
    "--tau": "optim.tau",
    "--optim": "optim.name",
    "--loss": "loss.name",
    "--batch_mining": "miner.name",
    "--embed_dim": "model.embed_dim",
    "--not_pretrained": "model.pretrained",
    "--arch": "model.arch",
    "--no_train_metrics": "eval.train_metrics",
    "--evaluate_on_gpu": "eval.on_gpu",
    "--evaluation_metrics": "eval.metrics",
    "--storage_metrics": "eval.storage_metrics",
    "--evaltypes": "eval.evaltypes",
    "--gpu": "run.gpus",
    "--savename": "log.savename",
    "--source_path": "data.source_path",
    "--save_path": "log.save_path",
    "--log_online": "log.online",
    "--wandb_key": None,
    "--project": "log.project",
    "--group": "log.group",
    "--loss_contrastive_pos_margin": "loss.contrastive.pos_margin",
    "--loss_contrastive_neg_margin": "loss.contrastive.neg_margin",
    "--loss_triplet_margin": "loss.triplet.margin",
    "--loss_margin_margin": "loss.margin.margin",
    "--loss_margin_beta_lr": "loss.margin.beta_lr",
    "--loss_margin_beta": "loss.margin.beta",
    "--loss_margin_nu": "loss.margin.nu",
    "--loss_margin_beta_constant": "loss.margin.beta_constant",
    "--loss_proxynca_lrmulti": "loss.proxynca.lrmulti",
    "--loss_npair_l2": "loss.npair.l2",
    "--loss_angular_alpha": "loss.angular.alpha",
    "--loss_angular_npair_ang_weight": "loss.angular.npair_ang_weight",
    "--loss_angular_npair_l2": "loss.angular.npair_l2",
    "--loss_multisimilarity_pos_weight": "loss.multisimilarity.pos_weight",
    "--loss_multisimilarity_neg_weight": "loss.multisimilarity.neg_weight",
    "--loss_multisimilarity_margin": "loss.multisimilarity.margin",
    "--loss_multisimilarity_thresh": "loss.multisimilarity.thresh",
    "--loss_lifted_neg_margin": "loss.lifted.neg_margin",
    "--loss_lifted_l2": "loss.lifted.l2",
    "--loss_quadruplet_margin_alpha_1": "loss.quadruplet.margin_alpha_1",
    "--loss_quadruplet_margin_alpha_2": "loss.quadruplet.margin_alpha_2",
    "--loss_softtriplet_n_centroids": "loss.softtriplet.n_centroids",
    "--loss_softtriplet_margin_delta": "loss.softtriplet.margin_delta",
    "--loss_softtriplet_gamma": "loss.softtriplet.gamma",
    "--loss_softtriplet_lambda": "loss.softtriplet.lambda",
    "--loss_softtriplet_reg_weight": "loss.softtriplet.reg_weight",
    "--loss_softtriplet_lrmulti": "loss.softtriplet.lrmulti",
    "--loss_softmax_lr": "loss.softmax.lr",
    "--loss_softmax_temperature": "loss.softmax.temperature",
    "--loss_histogram_nbins": "loss.histogram.nbins",
    "--loss_snr_margin": "loss.snr.margin",
    "--loss_snr_reg_lambda": "loss.snr.reg_lambda",
    "--loss_arcface_lr": "loss.arcface.lr",
    "--loss_arcface_angular_margin": "loss.arcface.angular_margin",
    "--loss_arcface_feature_scale": "loss.arcface.feature_scale",
    "--miner_distance_lower_cutoff": "miner.distance.lower_cutoff",
    "--miner_distance_upper_cutoff": "miner.distance.upper_cutoff",
    "--miner_rho_distance_lower_cutoff": "miner.rho_distance.lower_cutoff",
    "--miner_rho_distance_upper_cutoff": "miner.rho_distance.upper_cutoff",
    "--miner_rho_distance_cp": "miner.rho_distance.cp",
    "--miner_parametric_mode": "miner.parametric.mode",
    "--miner_parametric_n_support": "miner.parametric.n_support",
    "--miner_parametric_support_lim": "miner.parametric.support_lim",
    "--data_sampler": "sampler.name",
    "--samples_per_class": "sampler.samples_per_class",
    "--data_batchmatch_bigbs": "sampler.batchmatch_bigbs",
    "--data_batchmatch_ncomps": "sampler.batchmatch_ncomps",
    "--data_storage_no_update": "sampler.storage_no_update",
    "--data_d2_coreset_lambda": "sampler.d2_coreset_lambda",
    "--data_gc_coreset_lim": "sampler.gc_coreset_lim",
    "--data_sampler_lowproj_dim": "sampler.lowproj_dim",
    "--data_sim_measure": "sampler.sim_measure",
    "--data_gc_softened": "sampler.gc_softened",
    "--data_idx_full_prec": "sampler.idx_full_prec",
    "--data_mb_mom": "sampler.mb_mom",
    "--data_mb_lr": "sampler.mb_lr",
}

# flag -> (arguments after the flag, expected config value): a non-default value for every flag
# (where one exists) that the schema accepts on its own.
SAMPLES = {
    "--dataset": (["cars196"], "cars196"),
    "--use_tv_split": ([], True),
    "--tv_split_by_samples": ([], True),
    "--tv_split_perc": (["0.7"], 0.7),
    "--augmentation": (["adv"], "adv"),
    "--lr": (["0.0003"], 3e-4),
    "--fc_lr": (["0.001"], 1e-3),
    "--decay": (["0.0001"], 1e-4),
    "--n_epochs": (["100"], 100),
    "--kernels": (["2"], 2),
    "--bs": (["56"], 56),
    "--seed": (["3"], 3),
    "--scheduler": (["none"], "none"),
    "--gamma": (["0.1"], 0.1),
    "--tau": (["30", "60"], [30, 60]),
    "--optim": (["sgd"], "sgd"),
    "--loss": (["triplet"], "triplet"),
    "--batch_mining": (["semihard"], "semihard"),
    "--embed_dim": (["64"], 64),
    "--not_pretrained": ([], False),
    "--arch": (["resnet50_frozen"], "resnet50_frozen"),
    "--no_train_metrics": ([], False),
    "--evaluate_on_gpu": ([], True),
    "--evaluation_metrics": (
        ["e_recall@1", "e_recall@2", "nmi", "rho_spectrum@-1"],
        ["e_recall@1", "e_recall@2", "nmi", "rho_spectrum@-1"],
    ),
    "--storage_metrics": (["e_recall@2"], ["e_recall@2"]),
    "--evaltypes": (["discriminative"], ["discriminative"]),
    "--gpu": (["1", "2"], [1, 2]),
    "--savename": (["my_run"], "my_run"),
    "--source_path": (["/data/sets"], "/data/sets"),
    "--save_path": (["/results"], "/results"),
    "--log_online": ([], True),
    "--wandb_key": (["0123456789abcdef"], None),
    "--project": (["RevisitDML"], "RevisitDML"),
    "--group": (["CUB_Margin"], "CUB_Margin"),
    "--loss_contrastive_pos_margin": (["0.1"], 0.1),
    "--loss_contrastive_neg_margin": (["0.9"], 0.9),
    "--loss_triplet_margin": (["0.3"], 0.3),
    "--loss_margin_margin": (["0.25"], 0.25),
    "--loss_margin_beta_lr": (["0.001"], 1e-3),
    "--loss_margin_beta": (["0.6"], 0.6),
    "--loss_margin_nu": (["0.01"], 0.01),
    "--loss_margin_beta_constant": ([], True),
    "--loss_proxynca_lrmulti": (["25"], 25.0),
    "--loss_npair_l2": (["0.01"], 0.01),
    "--loss_angular_alpha": (["36"], 36.0),
    "--loss_angular_npair_ang_weight": (["1.5"], 1.5),
    "--loss_angular_npair_l2": (["0.01"], 0.01),
    "--loss_multisimilarity_pos_weight": (["3"], 3.0),
    "--loss_multisimilarity_neg_weight": (["50"], 50.0),
    "--loss_multisimilarity_margin": (["0.2"], 0.2),
    "--loss_multisimilarity_thresh": (["0.6"], 0.6),
    "--loss_lifted_neg_margin": (["0.8"], 0.8),
    "--loss_lifted_l2": (["0.01"], 0.01),
    "--loss_quadruplet_margin_alpha_1": (["0.3"], 0.3),
    "--loss_quadruplet_margin_alpha_2": (["0.1"], 0.1),
    "--loss_softtriplet_n_centroids": (["4"], 4),
    "--loss_softtriplet_margin_delta": (["0.02"], 0.02),
    "--loss_softtriplet_gamma": (["0.2"], 0.2),
    "--loss_softtriplet_lambda": (["10"], 10.0),
    "--loss_softtriplet_reg_weight": (["0.3"], 0.3),
    "--loss_softtriplet_lrmulti": (["100"], 100.0),
    "--loss_softmax_lr": (["0.002"], 0.002),
    "--loss_softmax_temperature": (["0.1"], 0.1),
    "--loss_histogram_nbins": (["11"], 11),
    "--loss_snr_margin": (["0.3"], 0.3),
    "--loss_snr_reg_lambda": (["0.01"], 0.01),
    "--loss_arcface_lr": (["0.001"], 1e-3),
    "--loss_arcface_angular_margin": (["0.3"], 0.3),
    "--loss_arcface_feature_scale": (["32"], 32.0),
    "--miner_distance_lower_cutoff": (["0.4"], 0.4),
    "--miner_distance_upper_cutoff": (["1.4"], 1.4),
    "--miner_rho_distance_lower_cutoff": (["0.4"], 0.4),
    "--miner_rho_distance_upper_cutoff": (["1.4"], 1.4),
    "--miner_rho_distance_cp": (["0.35"], 0.35),
    "--miner_parametric_mode": (["hards"], "hards"),
    "--miner_parametric_n_support": (["50"], 50),
    "--miner_parametric_support_lim": (["0.2", "1.6"], [0.2, 1.6]),
    "--data_sampler": (["full_random"], "full_random"),
    "--samples_per_class": (["4"], 4),
    "--data_batchmatch_bigbs": (["256"], 256),
    "--data_batchmatch_ncomps": (["5"], 5),
    "--data_storage_no_update": ([], True),
    "--data_d2_coreset_lambda": (["2"], 2.0),
    "--data_gc_coreset_lim": (["1e-6"], 1e-6),
    "--data_sampler_lowproj_dim": (["32"], 32),
    "--data_sim_measure": (["cosine"], "cosine"),
    "--data_gc_softened": ([], True),
    "--data_idx_full_prec": ([], True),
    "--data_mb_mom": (["0.9"], 0.9),
    "--data_mb_lr": (["0.5"], 0.5),
}

README_LINE = (
    "--loss margin --batch_mining distance --log_online --project DML_Project --group Margin_with_Distance "
    "--seed 0 --gpu 0 --bs 112 --data_sampler class_random --samples_per_class 2 "
    "--arch resnet50_frozen_normalize --source $datapath --n_epochs 150 --lr 0.00001 --embed_dim 128 "
    "--evaluate_on_gpu"
)

ENTRIES = {entry.flag: entry for entry in LEGACY_FLAGS}

# Flags whose value is a name the engine's registries must know (checked by the schema).
REGISTRY_KINDS = {
    "--dataset": "dataset",
    "--augmentation": "augmentation",
    "--loss": "loss",
    "--batch_mining": "miner",
    "--data_sampler": "sampler",
}


def nest(dotted: str | None, value) -> dict:
    if dotted is None:
        return {}
    out: dict = {}
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


# ------------------------------------------------------------------ schema validation


@pytest.fixture
def stub_registries(monkeypatch):
    """Replace the name checks of the schema by permissive stubs: types and ranges still validate."""
    from engine import catalog, metric_names

    monkeypatch.setattr(catalog, "check_name", lambda kind, name: name)
    monkeypatch.setattr(catalog, "check_miner", lambda loss, miner: None)
    monkeypatch.setattr(catalog, "parse_arch", lambda arch: arch)
    monkeypatch.setattr(metric_names, "check_metric_name", lambda name: name)


def _validate(overrides: dict):
    from engine.config.schema import Config

    return Config.model_validate(deep_merge({}, overrides))


# ------------------------------------------------------------------------------ table


def test_table_covers_every_original_flag_with_the_expected_key():
    assert {entry.flag: entry.key for entry in LEGACY_FLAGS} == EXPECTED_KEYS
    assert len(LEGACY_FLAGS) == len(EXPECTED_KEYS)  # one entry per flag, no duplicates


def test_every_flag_has_a_sample():
    assert set(SAMPLES) == set(ENTRIES)


def _schema_has(dotted: str) -> bool:
    from engine.config.schema import Config

    model = Config
    *parents, leaf = dotted.split(".")
    for part in parents:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        if part not in fields:
            return False
        model = fields[part].annotation
    return leaf in {info.alias or name for name, info in model.model_fields.items()}


@pytest.mark.parametrize("entry", [e for e in LEGACY_FLAGS if e.key], ids=lambda e: e.flag)
def test_every_key_exists_in_the_schema(entry):
    assert _schema_has(entry.key), f"{entry.flag} maps to {entry.key}, which the schema lacks"


def test_only_wandb_key_has_no_home():
    assert [e.flag for e in LEGACY_FLAGS if e.key is None] == ["--wandb_key"]


def test_machine_flags():
    assert {e.flag for e in LEGACY_FLAGS if e.machine} == {"--gpu", "--source_path", "--save_path", "--wandb_key"}


def test_flag_by_name_accepts_every_spelling():
    entry = ENTRIES["--source_path"]
    assert flag_by_name("--source") is entry
    assert flag_by_name("source") is entry
    assert flag_by_name("source_path") is entry
    assert flag_by_name(entry.dest) is entry


# ---------------------------------------------------------------------- every flag


@pytest.mark.parametrize("flag", list(ENTRIES), ids=str)
def test_every_flag_maps_to_its_key(flag):
    entry = ENTRIES[flag]
    args, value = SAMPLES[flag]
    overrides, _ = parse_legacy_argv([flag, *args])
    assert overrides == nest(entry.key, value)  # from the table
    assert overrides == nest(EXPECTED_KEYS[flag], value)  # from the hand-written list


@pytest.mark.parametrize("flag", list(ENTRIES), ids=str)
def test_every_flag_validates_against_the_schema(flag, stub_registries):
    args, _ = SAMPLES[flag]
    overrides, _ = parse_legacy_argv([flag, *args])
    config = _validate(overrides)
    key = EXPECTED_KEYS[flag]
    if key is None:
        return
    node = config.model_dump(by_alias=True)
    for part in key.split("."):
        node = node[part]
    expected = SAMPLES[flag][1]
    assert (list(node) if isinstance(node, tuple) else node) == expected


@pytest.mark.parametrize("flag", list(ENTRIES), ids=str)
def test_every_flag_validates_with_the_real_registries(flag):
    args, value = SAMPLES[flag]
    kind = REGISTRY_KINDS.get(flag)
    if kind is not None:
        assert value in engine.registry.by_kind(kind), f"the sample {kind} {value!r} is not registered"
    overrides, _ = parse_legacy_argv([flag, *args])
    _validate(overrides)


def test_all_flags_together_validate(stub_registries):
    argv = []
    for flag, (args, _) in SAMPLES.items():
        argv += [flag, *args]
    overrides, warnings = parse_legacy_argv(argv)
    config = _validate(overrides)
    assert config.sampler.batch_size == 56 and config.sampler.samples_per_class == 4
    assert config.model.pretrained is False and config.eval.train_metrics is False
    assert config.loss.softtriplet.lambda_ == 10.0
    assert config.miner.parametric.support_lim == (0.2, 1.6)
    assert len(warnings) == 4  # no_train_metrics, two upper cut-offs, wandb key


# ------------------------------------------------------------------- README example


def test_readme_example_line():
    overrides, warnings = parse_legacy_argv(README_LINE.split())
    assert warnings == []
    assert overrides == {
        "loss": {"name": "margin"},
        "miner": {"name": "distance"},
        "log": {"online": True, "project": "DML_Project", "group": "Margin_with_Distance"},
        "run": {"seed": 0, "gpus": [0]},
        "sampler": {"batch_size": 112, "name": "class_random", "samples_per_class": 2},
        "model": {"arch": "resnet50_frozen_normalize", "embed_dim": 128},
        "data": {"source_path": "$datapath"},
        "optim": {"epochs": 150, "lr": 1e-5},
        "eval": {"on_gpu": True},
    }


def test_readme_example_validates(stub_registries):
    overrides, _ = parse_legacy_argv(README_LINE.split())
    config = _validate(overrides)
    assert config.data.source_path == "$datapath"
    assert config.eval.on_gpu is True


def test_readme_example_validates_with_the_real_registries():
    overrides, _ = parse_legacy_argv(README_LINE.split())
    _validate(overrides)


# ----------------------------------------------------------------------- the parser


def test_source_alias():
    assert parse_legacy_argv(["--source", "/d"])[0] == {"data": {"source_path": "/d"}}
    assert parse_legacy_argv(["--source_path", "/d"])[0] == {"data": {"source_path": "/d"}}


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["--sourc", "/d"], "--source"),
        (["--loss_margin_bet", "0.6"], "--loss_margin_beta"),
        (["--loss_margin_betta", "0.6"], "--loss_margin_beta"),
        (["--n_epoch", "3"], "--n_epochs"),
        (["--bs=56", "--batch_minin=distance"], "--batch_mining"),
    ],
)
def test_abbreviated_or_unknown_flags_are_errors(argv, suggestion):
    with pytest.raises(LegacyFlagError) as info:
        parse_legacy_argv(argv)
    message = str(info.value)
    assert "\n" not in message
    bad = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] != "--bs"][0]
    assert message.startswith(f"unknown flag {bad}")
    assert suggestion in message


def test_unknown_flag_without_a_close_match():
    with pytest.raises(LegacyFlagError, match=r"^unknown flag --zzz$"):
        parse_legacy_argv(["--zzz"])


def test_positional_is_an_error():
    with pytest.raises(LegacyFlagError) as info:
        parse_legacy_argv(["--group", "CUBreg_SNR_Distance", "_3", "--seed", "0"])
    assert "'_3'" in str(info.value) and "--group CUBreg_SNR_Distance" in str(info.value)


@pytest.mark.parametrize("argv", [["--bs", "many"], ["--bs"], ["--tau"], ["--miner_parametric_support_lim", "0.1"]])
def test_bad_values_are_errors_not_exits(argv):
    with pytest.raises(LegacyFlagError):
        parse_legacy_argv(argv)


def test_negative_values_are_values():
    overrides, _ = parse_legacy_argv(["--data_sampler_lowproj_dim", "-1", "--data_mb_mom", "-1"])
    assert overrides == {"sampler": {"lowproj_dim": -1, "mb_mom": -1.0}}


def test_no_flags_no_overrides():
    assert parse_legacy_argv([]) == ({}, [])


def test_add_legacy_arguments_to_a_foreign_parser():
    parser = argparse.ArgumentParser(prog="engine", allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--seed-list")  # a dest of its own must not be read as a legacy flag
    add_legacy_arguments(parser)
    assert ARGUMENT_GROUP_TITLE in [group.title for group in parser._action_groups]

    ns = parser.parse_args(["--config", "x.toml", "--seed-list", "1,2"])
    assert legacy_overrides(ns) == ({}, [])  # SUPPRESS: nothing given, nothing set

    ns = parser.parse_args(["--config", "x.toml", "--loss_margin_beta", "0.6", "--source", "/d", "--log_online"])
    assert ns.config == "x.toml"
    overrides, _ = legacy_overrides(ns)
    assert overrides == {"loss": {"margin": {"beta": 0.6}}, "data": {"source_path": "/d"}, "log": {"online": True}}
    assert legacy_overrides(vars(ns))[0] == overrides

    with pytest.raises(SystemExit):
        parser.parse_args(["--sourc", "/d"])  # abbreviations stay errors


def test_help_names_the_config_keys():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_legacy_arguments(parser)
    text = parser.format_help()
    assert "--loss_margin_beta" in text and "loss.margin.beta" in text
    assert "--source_path" in text and "--source" in text


# ---------------------------------------------------------------- mapping as dicts


def test_mapping_input_with_flags_names_and_strings():
    overrides, _ = legacy_overrides({"--bs": "56", "loss_margin_beta": 0.6, "tau": ["30", "60"], "log_online": True})
    assert overrides == {
        "sampler": {"batch_size": 56},
        "loss": {"margin": {"beta": 0.6}},
        "optim": {"tau": [30, 60]},
        "log": {"online": True},
    }


def test_mapping_input_switch_false_sets_nothing():
    assert legacy_overrides({"not_pretrained": False, "log_online": False}) == ({}, [])


def test_mapping_input_unknown_key():
    with pytest.raises(LegacyFlagError, match="did you mean '--loss_margin_beta'"):
        legacy_overrides({"loss_margin_betta": 0.6})


def test_mapping_input_two_spellings_of_one_flag():
    with pytest.raises(LegacyFlagError, match="given twice"):
        legacy_overrides({"--source": "/a", "source_path": "/b"})


# ----------------------------------------------------------- inverted and re-encoded


def test_fc_lr_negative_means_same_as_lr():
    assert parse_legacy_argv(["--fc_lr", "-1"]) == ({}, [])


def test_fc_lr_zero_is_an_error():
    with pytest.raises(LegacyFlagError, match="--fc_lr 0"):
        parse_legacy_argv(["--fc_lr", "0"])


def test_not_pretrained():
    assert parse_legacy_argv(["--not_pretrained"])[0] == {"model": {"pretrained": False}}


def test_no_train_metrics_is_honoured_with_one_warning():
    overrides, warnings = parse_legacy_argv(["--no_train_metrics"])
    assert overrides == {"eval": {"train_metrics": False}}
    assert len(warnings) == 1 and "ignored" in warnings[0] and "honours" in warnings[0]


@pytest.mark.parametrize("value, expected, warned", [("none", "none", False), ("step", "step", False), ("cosine", "step", True)])
def test_scheduler(value, expected, warned):
    overrides, warnings = parse_legacy_argv(["--scheduler", value])
    assert overrides == {"optim": {"scheduler": expected}}
    assert bool(warnings) is warned


@pytest.mark.parametrize("flag", ["--miner_distance_upper_cutoff", "--miner_rho_distance_upper_cutoff"])
def test_upper_cutoffs_are_applied_with_a_warning(flag):
    overrides, warnings = parse_legacy_argv([flag, "1.4"])
    assert overrides == nest(EXPECTED_KEYS[flag], 1.4)
    assert len(warnings) == 1 and flag in warnings[0] and "ignored" in warnings[0]


def test_beta_constant():
    assert parse_legacy_argv(["--loss_margin_beta_constant"])[0] == {"loss": {"margin": {"beta_constant": True}}}


def test_wandb_key_is_never_stored():
    overrides, warnings = parse_legacy_argv(["--wandb_key", "<your_api_key_here>", "--log_online"])
    assert overrides == {"log": {"online": True}} and warnings == []

    secret = "0123456789abcdef0123456789abcdef"
    overrides, warnings = parse_legacy_argv(["--wandb_key", secret])
    assert overrides == {}
    assert len(warnings) == 1 and "WANDB_API_KEY" in warnings[0]
    assert secret not in repr((overrides, warnings))


def test_unused_sampler_flags_still_map():
    argv = "--data_sim_measure cosine --data_mb_lr 0.5 --data_gc_coreset_lim 1e-6 --data_idx_full_prec --data_mb_mom 0.9"
    overrides, warnings = parse_legacy_argv(argv.split())
    assert overrides == {
        "sampler": {"sim_measure": "cosine", "mb_lr": 0.5, "gc_coreset_lim": 1e-6, "idx_full_prec": True, "mb_mom": 0.9}
    }
    assert warnings == []


# ------------------------------------------------------------------------ runs files

COMMON = "--kernels 6 --source $datapath --n_epochs 150 --log_online --project RevisitDML"
MARGIN = "--bs 112 --samples_per_class 2 --loss margin --batch_mining distance --arch resnet50_frozen_normalize"
SNR = "--bs 112 --samples_per_class 2 --loss snr --batch_mining rho_distance --arch resnet50_frozen_normalize"

RUNS_FILE = f"""#!/bin/bash
# Sample runs in the style of the original (comment lines are skipped)
datapath=/somewhere/Datasets

\"\"\"============= Baseline Runs --- CUB200-2011 ====================\"\"\"
python main.py {COMMON} --group CUB_Margin_b06_Distance --loss_margin_beta 0.6 --seed 0 --gpu 0 {MARGIN}
python main.py {COMMON} --group CUB_Margin_b06_Distance --loss_margin_beta 0.6 --seed 1 --gpu 0 {MARGIN}
python main.py {COMMON} \\
    --group CUB_Margin_b06_Distance --loss_margin_beta 0.6 --seed 2 --gpu 1 \\
    --bs 112 --samples_per_class 2 --loss margin --batch_mining distance --arch resnet50_frozen_normalize
python main.py {COMMON} --group CUB_Margin_b06_Distance --loss_margin_beta 0.6 --seed 3 --gpu 0 {MARGIN}
python main.py {COMMON} --group CUB_Margin_b06_Distance --loss_margin_beta 0.6 --seed 4 --gpu 0 {MARGIN}

# rho-regularised
python main.py {COMMON} --group CUBreg_SNR_Distance --seed 0 --gpu 0 {SNR} --miner_rho_distance_cp 0.3
python main.py {COMMON} --group CUBreg_SNR_Distance --seed 1 --gpu 0 {SNR} --miner_rho_distance_cp 0.3
python main.py {COMMON} --group CUBreg_SNR_Distance _3 --seed 2 --gpu 0 {SNR} --miner_rho_distance_cp 0.3
python main.py {COMMON} --group CUBreg_SNR_Distance --seed 3 --gpu 0 {SNR} --miner_rho_distance_cp 0.3
python main.py {COMMON} --group CUBreg_SNR_Distance --seed 4 --gpu 0 {SNR} --miner_rho_distance_cp 0.3
"""

DEFECT_LINE = 1 + RUNS_FILE.splitlines().index(
    next(line for line in RUNS_FILE.splitlines() if "_3 --seed" in line)
)


def test_convert_runs_file_groups_seeds():
    presets = convert_runs_file(RUNS_FILE)
    assert [p.name for p in presets] == ["cub-margin-b06-distance", "cubreg-snr-distance"]
    assert presets.warnings == []
    margin, snr = presets
    assert margin.seeds == [0, 1, 2, 3, 4] and snr.seeds == [0, 1, 2, 3, 4]
    assert margin.source_lines == [6, 7, 8, 11, 12]  # the continued command counts from its first line
    assert snr.source_lines == [15, 16, 17, 18, 19]
    assert margin.overrides == {
        "data": {"workers": 6},  # --kernels is kept, --source is dropped
        "optim": {"epochs": 150},
        "log": {"online": True, "project": "RevisitDML", "group": "CUB_Margin_b06_Distance"},
        "loss": {"name": "margin", "margin": {"beta": 0.6}},
        "miner": {"name": "distance"},
        "sampler": {"batch_size": 112, "samples_per_class": 2},
        "model": {"arch": "resnet50_frozen_normalize"},
    }
    assert snr.overrides == {
        "data": {"workers": 6},
        "optim": {"epochs": 150},
        "log": {"online": True, "project": "RevisitDML", "group": "CUBreg_SNR_Distance"},
        "loss": {"name": "snr"},
        "miner": {"name": "rho_distance", "rho_distance": {"cp": 0.3}},
        "sampler": {"batch_size": 112, "samples_per_class": 2},
        "model": {"arch": "resnet50_frozen_normalize"},
    }
    assert margin.warnings == []


def test_convert_runs_file_drops_machine_flags():
    for preset in convert_runs_file(RUNS_FILE):
        assert "run" not in preset.overrides  # --gpu and --seed
        assert "source_path" not in preset.overrides["data"]
        assert "$datapath" not in repr(preset.overrides)


def test_convert_runs_file_reports_the_stray_positional():
    snr = convert_runs_file(RUNS_FILE)[1]
    assert DEFECT_LINE == 17
    assert len(snr.warnings) == 1
    assert snr.warnings[0].startswith(f"line {DEFECT_LINE}: ")
    assert "'_3'" in snr.warnings[0]


def test_converted_presets_validate(stub_registries):
    for preset in convert_runs_file(RUNS_FILE):
        _validate(preset.overrides)


def test_runs_file_variable_stays_literal():
    text = "python main.py --source_path $datapath --save_path ${out}/x --savename $name --seed 0\n"
    (preset,) = convert_runs_file(text)
    assert preset.overrides == {"log": {"savename": "$name"}}


def test_runs_file_without_group_and_name_clash():
    text = (
        "python main.py --kernels 6 --source /home/me/Datasets --n_epochs 150 --seed 0 --gpu 1"
        " --loss npair --batch_mining npair\n"
        "python3 main.py --loss npair --batch_mining npair --seed 0\n"
        "python -m engine --group NPAIR_NPAIR_CUB200 --seed 0\n"
        "python main.py --seed 5\n"
        "python main.py --dataset cars196\n"
    )
    presets = convert_runs_file(text)
    assert [p.name for p in presets] == [
        "npair-npair-cub200",
        "npair-npair-cub200-2",
        "npair-npair-cub200-3",
        "margin-distance-cub200",
        "margin-distance-cars196",
    ]
    assert presets[3].seeds == [5]
    assert presets[4].seeds == [1]  # no --seed: the schema's default


def test_runs_file_bad_lines_warn_and_the_rest_converts():
    text = (
        "python main.py --group G --seed 0\n"
        "python main.py --group G --seed 1 --loss_margin_betta 0.6\n"
        "python main.py --group G --seed 2 --bs many\n"
        "python main.py --group G --seed 3 --source 'unbalanced\n"
        "python main.py --group G --seed 1\n"
    )
    presets = convert_runs_file(text)
    assert [(p.name, p.seeds) for p in presets] == [("g", [0, 1])]
    assert len(presets.warnings) == 3
    assert presets.warnings[0].startswith("line 2: unknown flag --loss_margin_betta")
    assert presets.warnings[1].startswith("line 3: ")
    assert presets.warnings[2].startswith("line 4: ")


def test_runs_file_duplicate_seed_is_reported():
    presets = convert_runs_file("python main.py --seed 0\npython main.py --seed 0\n")
    assert presets[0].seeds == [0]
    assert presets[0].warnings == ["lines 1, 2: seed 0 given more than once; kept once"]


def test_runs_file_nothing_converts():
    with pytest.raises(LegacyFlagError, match="line 1"):
        convert_runs_file("python main.py --nope 1\n")
    with pytest.raises(LegacyFlagError, match="no `python main.py"):
        convert_runs_file("# only a comment\necho hello\n")


def test_runs_file_shell_syntax():
    text = (
        "cd /x && CUDA_VISIBLE_DEVICES=0 nohup python -u main.py --group A --seed 0 > a.log 2>&1 &\n"
        "python main.py --group A --seed 1 2>err.log --bs 56   # trailing comment\n"
        "python main.py --group 'A' --seed 2 --bs 56; python main.py --group A#x --seed 0\n"
    )
    presets = convert_runs_file(text)
    assert [(p.name, p.seeds, p.source_lines) for p in presets] == [
        ("a", [0], [1]),
        ("a-2", [1, 2], [2, 3]),
        ("a-x", [0], [3]),
    ]
    assert presets[1].overrides["sampler"] == {"batch_size": 56}


def test_runs_file_warnings_are_merged_across_seeds():
    text = "".join(f"python main.py --group G --no_train_metrics --seed {s}\n" for s in range(3))
    (preset,) = convert_runs_file(text)
    assert preset.overrides == {"log": {"group": "G"}, "eval": {"train_metrics": False}}
    assert len(preset.warnings) == 1 and preset.warnings[0].startswith("lines 1, 2, 3: --no_train_metrics")

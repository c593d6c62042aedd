"""The run query language (dmltui.query): parser, evaluator against a brute-force filter, `runs list --where` through
the real entry point, the config values of store summaries, and the runs screen's `/` query (Pilot)."""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import json
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import dmltui

from dmltui import runs as run_ops
from dmltui.config_summary import config_changes, flatten, reference
from dmltui.query import KnownFields, QueryError, compile_query, looks_like_query, quoted_glob, select
from dmltui.store import RunStore
from dmltui.testing import fake_run

RUNS = [
    {"id": "a", "name": "margin-s0", "state": "finished", "preset": "margin-b12-d", "dataset": "cub200", "seed": 0,
     "tags": ["paper", "sweep:lr"], "notes": "lr too high?", "created_at": "2026-11-01T09:00:00+00:00",
     "config_changes": {"optim.lr": 1e-4, "eval.metrics": ["e_recall@1", "nmi"], "run.seed": 0},
     "best": {"test/e_recall@1": {"value": 0.62, "epoch": 9}}, "last": {"test/e_recall@1": 0.6}},
    {"id": "b", "name": "triplet-s1", "state": "failed", "preset": "triplet-s", "dataset": "cars196", "seed": 1,
     "tags": [], "notes": "", "created_at": "2026-12-01T09:00:00+00:00", "executor": "slurm",
     "config_changes": {"loss.name": "triplet", "optim.lr": 3e-6, "model.pretrained": False, "loss.margin.beta": None},
     "best": {"test/e_recall@1": {"value": 0.48, "epoch": 3}, "val/map_at_r": {"value": 0.2, "epoch": 3}},
     "last": {"test/e_recall@1": 0.45, "val/map_at_r": 0.19}},
    {"id": "c", "name": "npair s2", "state": "running", "preset": None, "dataset": "cub200", "seed": 2,
     "tags": ["paper"], "notes": "", "created_at": "2026-11-15T09:00:00+00:00", "best": {}},  # an older summary
]
FIELDS = KnownFields(RUNS)


def ids(text: str, records: list[dict[str, Any]] = RUNS) -> list[str]:
    return [record["id"] for record in compile_query(text, KnownFields(records)).select(records)]


def error(text: str) -> str:
    with pytest.raises(QueryError) as raised:
        compile_query(text, FIELDS)
    return str(raised.value)


# --------------------------------------------------------------------------- operators and values


@pytest.mark.parametrize(("text", "expected"), [
    ("state = finished", ["a"]),
    ("state != finished", ["b", "c"]),
    ("seed < 1", ["a"]), ("seed <= 1", ["a", "b"]), ("seed > 1", ["c"]), ("seed >= 1", ["b", "c"]),
    ("name ~ 'margin*'", ["a"]), ("name ~ *-s?", ["a", "b"]), ("name ~ '[mt]*'", ["a", "b"]),
    ("name ~ Margin*", []),  # globs are case-sensitive
    ("name ~ 'npair s*'", ["c"]),
    ("state in (finished, running)", ["a", "c"]), ("seed in (0, 2)", ["a", "c"]),
    ("tags has paper", ["a", "c"]), ("tags has sweep:*", ["a"]), ("tags has pap", []),
    ("config.eval.metrics has nmi", ["a", "b"]), ("config.eval.metrics has mAP_c", ["b"]),  # b: the reference's
    ("config.eval.metrics has 'e_recall@*'", ["a", "b"]),
    ("executor = local", ["a", "c"]), ("executor = slurm", ["b"]),  # a local run's summary has no executor field
    ("preset = triplet-s", ["b"]), ("notes = 'lr too high?'", ["a"]), ("notes ~ *high*", ["a"]),
    ("created_at >= 2026-11-15", ["b", "c"]), ("created_at < 2026-12", ["a", "c"]),  # ISO times compare as text
    ("dataset = cub200", ["a", "c"]), ("id = b", ["b"]),
    ("config.optim.lr < 1e-4", ["b"]), ("config.optim.lr <= 1E-4", ["a", "b"]), ("config.optim.lr = 0.0001", ["a"]),
    ("config.optim.lr > 3e-06", ["a"]), ("config.optim.lr >= 3.0e-6", ["a", "b"]), ("config.optim.lr = +1e-04", ["a"]),
    ("config.loss.name = margin", ["a"]),  # the reference's value: run a changed other keys
    ("config.loss.name in (margin, triplet)", ["a", "b"]),
    ("config.model.pretrained = true", ["a"]), ("config.model.pretrained = FALSE", ["b"]),
    ("config.model.pretrained != true", ["b"]),
    ("config.optim.epochs = 150", ["a", "b"]), ("config.optim.epochs = 150.0", ["a", "b"]),
    ("best.test.e_recall@1 >= 0.6", ["a"]), ("best.test.e_recall@1 < 0.6", ["b"]),
    ("last.test.e_recall@1 = 0.45", ["b"]), ("best.val.map_at_r > 0", ["b"]),
    ("state = finished AND seed = 0 Or seed = 2", ["a", "c"]),  # keywords are case-insensitive
])
def test_every_operator(text, expected):
    assert ids(text) == expected


def test_quoted_and_bare_values():
    assert ids('name = "npair s2"') == ids("name = 'npair s2'") == ["c"]
    assert ids(r"notes = 'lr too high\?'") == ["a"]  # a backslash escapes the next character
    assert ids('name = "say \\"hi\\""', [{"id": "q", "name": 'say "hi"'}]) == ["q"]
    assert ids("name = 'a b' or name = \"it's\"", [{"id": "x", "name": "it's"}, {"id": "y", "name": "a b"}]) == ["x", "y"]
    records = [{"id": "n", "name": "123"}, {"id": "t", "name": "true"}]
    assert ids("name = 123", records) == ["n"] and ids("name = true", records) == ["t"]  # text fields read the text
    assert ids("config.optim.lr = '1e-4'") == []  # a quoted value is text: unknown against a number
    weird = [{"id": "w", "name": "x", "config_changes": {"model.arch": "timm:vit_small_patch16_224.dino",
                                                         "log.save_path": "/scratch/me/runs-2026"}}]
    assert ids("config.model.arch = timm:vit_small_patch16_224.dino and config.log.save_path ~ /scratch/*", weird) == ["w"]


def test_precedence_not_then_and_then_or():
    # not binds tightest, then and, then or
    assert ids("not state = finished and seed = 2") == ["c"]
    assert ids("state = failed or state = finished and seed = 1") == ["b"]  # or(failed, and(finished, seed 1))
    assert ids("(state = failed or state = finished) and seed = 1") == ["b"]
    assert ids("(state = failed or state = finished) and seed = 0") == ["a"]
    assert ids("state = failed or state = finished and seed = 0") == ["a", "b"]
    assert ids("not not state = finished") == ["a"]
    assert ids("not (state = finished or seed = 1)") == ["c"]
    assert ids("(((seed = 2)))") == ["c"]


def test_missing_values_are_unknown_and_unknown_never_selects():
    # c's summary has no config values, b's config lacks loss.margin.beta, a never logged val metrics
    assert ids("config.optim.lr < 1") == ["a", "b"] and ids("not config.optim.lr < 1") == []
    assert ids("config.loss.margin.beta = 1.2") == ["a"] and ids("config.loss.margin.beta != 1.2") == []
    assert ids("not config.loss.margin.beta = 1.2") == []
    assert ids("best.val.map_at_r < 1") == ["b"] and ids("not best.val.map_at_r < 1") == []
    assert ids("preset = margin-b12-d or preset != margin-b12-d") == ["a", "b"]  # c has no preset
    # three-valued: false and unknown is false (not of it true), true or unknown is true
    assert ids("not (seed = 5 and config.optim.lr < 1)") == ["a", "b", "c"]
    assert ids("seed = 2 or config.optim.lr < 1") == ["a", "b", "c"]
    assert ids("not (seed >= 0 and config.optim.lr < 1)") == []  # c: not (true and unknown) = unknown
    # a value of another kind than the literal is unknown too
    assert ids("config.optim.lr = margin") == ids("config.optim.lr != margin") == []
    assert ids("config.model.pretrained < true") == []  # booleans have no order
    assert ids("config.eval.metrics = nmi") == []  # a list compares with nothing but has


def test_select_is_the_one_call_for_commands_that_pick_runs():
    assert select(RUNS, "tags has paper") == [RUNS[0], RUNS[2]]  # in their order
    assert select(iter(RUNS), "seed >= 1 and config.optim.lr < 1") == [RUNS[1]]
    with pytest.raises(QueryError, match="^at column 6: expected an operator"):
        select(RUNS, "tags paper")


def test_a_compiled_query_matches_without_parsing_again(monkeypatch):
    query = compile_query("state = finished and tags has paper", FIELDS)
    monkeypatch.setattr("dmltui.query.parser", lambda: pytest.fail("parsed again"))
    assert [query.matches(record) for record in RUNS] == [True, False, False]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "message"), [
    ("state = finished and best.test.e_recall@1 >=",
     "at column 45: expected a value after '>=', got end of input"),
    ("state running", "at column 7: expected an operator (=, !=, <, <=, >, >=, ~, in, has) after 'state', got 'running'"),
    ("name = 'abc", "at column 8: expected a value after '=', got an unterminated quoted string"),
    ("name = npair s2", "at column 14: expected 'and', 'or' or end of input after 'npair', got 's2' "
                        "(quote a value that has spaces)"),
    ("(state = failed", "at column 16: expected ')', 'and' or 'or' after 'failed', got end of input"),
    ("state = failed)", "at column 15: expected 'and', 'or' or end of input after 'failed', got ')'"),
    ("= 3", "at column 1: expected a field, 'not' or '(', got '='"),
    ("", "at column 1: expected a field, 'not' or '(', got end of input"),
    ("state = a and or seed = 1", "at column 15: expected a field, 'not' or '(' after 'and', got 'or'"),
    ("state in finished", "at column 10: expected '(' after 'in', got 'finished'"),
    ("state in (a b)", "at column 13: expected ',' or ')' after 'a', got 'b' (quote a value that has spaces)"),
    ("seed ! 3", "at column 6: expected an operator (=, !=, <, <=, >, >=, ~, in, has) after 'seed', got '!'"),
    ("seed > high", "at column 8: seed is a number, and high is not one"),
    ("best.test.e_recall@1 in (0.5, top)", "at column 31: best.test.e_recall@1 is a number, and top is not one"),
    ("best.test.e_recall@1 ~ 0.*", "at column 22: '~' matches text, and best.test.e_recall@1 is a number"),
    ("tags = paper", "at column 6: tags is a list: use 'tags has VALUE'"),
    ("tags in (paper)", "at column 6: tags is a list: use 'tags has VALUE'"),
    ("name has x", "at column 6: 'has' looks into lists (tags, list-valued config keys), and name is text"),
])
def test_a_bad_expression_is_one_line_with_the_column(text, message):
    assert error(text) == message


def test_an_unknown_field_names_the_nearest_known_ones():
    assert error("state = finished and config.los.name = margin") == (
        "at column 22: unknown field 'config.los.name'; nearest: config.loss.name, config.log.savename, "
        "config.optim.name, config.sampler.name")
    assert error("best.test.e_recal@1 > 0.5").startswith(
        "at column 1: unknown field 'best.test.e_recal@1'; nearest: best.test.e_recall@1")
    assert "nearest: best.val.map_at_r" in error("best.val.map_at_k > 0")
    assert error("colour = red") == ("at column 1: unknown field 'colour'; fields: id, name, state, preset, dataset, "
                                     "loss, miner, executor, host, created_at, started_at, ended_at, notes, seed, "
                                     "epoch, epochs, tags, config.KEY, best.SPLIT.METRIC, last.SPLIT.METRIC")
    assert "unknown field 'best.test'" in error("best.test > 1")  # a metric field names a split and a metric
    old = [{k: v for k, v in run.items() if k not in ("config_changes", "last")} for run in RUNS]
    with pytest.raises(QueryError, match=re.escape("(no stored run has config values: runs recorded by an older "
                                                   "dmltui get them from `dmltui db rebuild`)")):
        compile_query("config.optim.lr < 1", KnownFields(old))
    # a config key is known as soon as one run has it, and run fields always are
    assert "config.loss.margin.beta" in FIELDS and "config.no.such" not in FIELDS and "state" in KnownFields([])


def test_filter_text_that_starts_like_a_query_is_one():
    for text in ("state = finished", "seed>3", "best.test.e_recall@1 >= 0.6", "tags has paper", "state in (a)",
                 "not state = x", "(seed = 1)", "  name ~ m*", "config.optim.lr<1e-4"):
        assert looks_like_query(text), text
    for text in ("margin", "state:running tag:paper", "margin cub200", "within", "nothing", "hash", ""):
        assert not looks_like_query(text), text


def test_quoted_glob_matches_exactly_its_text():
    for tag in ("a*b", "[x]", 'say "hi"', "back\\slash", "a=b(", "?"):
        query = compile_query(f"tags has {quoted_glob(tag)}", FIELDS)
        assert query.matches({"tags": [tag]}) and not query.matches({"tags": [tag + "x"]}), tag


# --------------------------------------------------------------------------- against a brute-force filter

LOSSES = ["margin", "triplet", "multisimilarity", "proxy_anchor"]
LRS = [1e-5, 3e-5, 1e-4, 3e-4]
METRICS = ["e_recall@1", "e_recall@2", "nmi", "map_at_r"]
TAGS = ["paper", "sweep", "best", "lr:1e-4", "tuning"]


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in flat.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def random_run(rng: random.Random, index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A store record and the whole flattened config the brute force reads (None: a summary without config values)."""
    flat: dict[str, Any] | None = copy.deepcopy(reference())
    flat.update({"loss.name": rng.choice(LOSSES), "optim.lr": rng.choice(LRS), "run.seed": rng.randrange(5),
                 "loss.margin.beta": rng.choice([0.6, 1.2, 1.6]), "model.pretrained": rng.random() < 0.7,
                 "eval.metrics": rng.sample(METRICS, rng.randrange(1, 4))})
    if rng.random() < 0.15:
        del flat["loss.margin.beta"]  # a config without the key
    record = {"id": f"r{index:03d}", "name": f"{rng.choice(LOSSES)}-s{rng.randrange(5)}",
              "state": rng.choice(["finished", "failed", "running", "stopped"]), "seed": rng.randrange(5),
              "tags": rng.sample(TAGS, rng.randrange(0, 3)), "created_at": f"2026-{rng.randrange(1, 13):02d}-01",
              "config_changes": config_changes(_nested(flat))}
    if rng.random() < 0.3:
        record["executor"] = "slurm"
    if rng.random() < 0.8:
        record["preset"] = rng.choice(["margin-b12-d", "triplet-s"])
    for prefix in ("best", "last"):
        values = {f"{split}/{metric}": round(rng.random(), 2) for split in ("test", "val") for metric in METRICS
                  if rng.random() < 0.7}
        record[prefix] = values if prefix == "last" else {k: {"value": v, "epoch": 3} for k, v in values.items()}
    if rng.random() < 0.1:  # a summary of an older dmltui
        del record["config_changes"], record["last"]
        flat = None
    return record, flat


def truth_value(record: dict[str, Any], flat: dict[str, Any] | None, field: str) -> Any:
    """The field's value as the README describes it, read without dmltui.query (None: missing)."""
    if field == "executor":
        return record.get("executor", "local")
    prefix, _, rest = field.partition(".")
    if prefix == "config":
        return None if flat is None else flat.get(rest)
    if prefix in ("best", "last"):
        entry = record.get(prefix, {}).get(rest.replace(".", "/", 1))
        return entry["value"] if prefix == "best" and entry else entry
    return record.get(field)


NUMBER_FIELDS = ["seed", "config.optim.lr", "config.loss.margin.beta", "config.run.seed",
                 *(f"{p}.{s}.{m}" for p in ("best", "last") for s in ("test", "val") for m in METRICS)]
TEXT_FIELDS = ["state", "name", "preset", "executor", "created_at", "config.loss.name"]
LIST_FIELDS = ["tags", "config.eval.metrics"]
BOOLEAN_FIELDS = ["config.model.pretrained"]


def number_text(rng: random.Random, value: float) -> str:
    return rng.choice([repr(value), f"{value:e}", f"{value:E}", f"+{value!r}" if value >= 0 else repr(value)])


def random_literal(rng: random.Random, field: str) -> tuple[Any, str]:
    """A literal for *field* (mostly of its kind; config keys, whose kind varies by run, sometimes not): its value as
    the brute force reads it (a float, a bool, or its text) and how the query writes it."""
    kind = next(k for k, names in (("number", NUMBER_FIELDS), ("text", TEXT_FIELDS), ("list", LIST_FIELDS),
                                   ("bool", BOOLEAN_FIELDS)) if field in names)
    if field.startswith("config.") and rng.random() < 0.15:
        kind = rng.choice(["number", "text", "bool"])
    if kind == "number":
        value = rng.choice([*LRS, 0.5, 0.25, 1.2, 2, 0, 3])
        return float(value), number_text(rng, value)
    if kind == "bool":
        value = rng.random() < 0.5
        return value, rng.choice(["true", "True", "TRUE"]) if value else rng.choice(["false", "False"])
    text = rng.choice(["finished", "failed", "margin", "triplet", "margin-s1", "local", "slurm", "2026-06",
                       "margin-b12-d", "paper", "sweep", "nmi", "e_recall@1", "lr:1e-4"])
    return text, rng.choice([text, f"'{text}'", f'"{text}"'])


def random_comparison(rng: random.Random) -> tuple[Any, str]:
    """(an expression tree for the brute force, its text)."""
    field = rng.choice(NUMBER_FIELDS + TEXT_FIELDS + LIST_FIELDS + BOOLEAN_FIELDS)
    space = rng.choice(["", " ", "  "])
    if field in LIST_FIELDS:
        pattern = rng.choice(["paper", "p*", "*e*", "nmi", "e_recall@?", "[st]*", "best"])
        return ("has", field, pattern), f"{field} {rng.choice(['has', 'HAS'])} {pattern}"
    if field in TEXT_FIELDS and rng.random() < 0.3:
        pattern = rng.choice(["margin*", "*-s?", "fin*", "2026-0[1-6]*", "*"])
        return ("~", field, pattern), f"{field}{space}~{space}'{pattern}'"
    if rng.random() < 0.25:
        literals = [random_literal(rng, field) for _ in range(rng.randrange(1, 4))]
        return ("in", field, literals), f"{field} in ({', '.join(text for _, text in literals)})"
    op = rng.choice(["=", "!=", "<", "<=", ">", ">="] if field not in BOOLEAN_FIELDS else ["=", "!="])
    literal = random_literal(rng, field)
    return (op, field, literal), f"{field}{space}{op}{space}{literal[1]}"


def random_expression(rng: random.Random, depth: int = 0) -> tuple[Any, str]:
    """(an expression tree, its text): parentheses only where precedence needs them (not, then and, then or), and
    now and then where it does not."""
    roll = rng.random()
    if depth >= 3 or roll < 0.35:
        return random_comparison(rng)
    if roll < 0.5:
        inner, text = random_expression(rng, depth + 1)
        bare = inner[0] not in ("and", "or") and rng.random() < 0.6
        return ("not", inner), f"{rng.choice(['not', 'NOT'])} {text if bare else f'({text})'}"
    connective = rng.choice(["and", "or"])
    parts = [random_expression(rng, depth + 1) for _ in range(rng.randrange(2, 4))]

    def shown(tree: Any, text: str) -> str:
        needed = tree[0] == "or" and connective == "and"  # an or inside an and; an and inside an or binds anyway
        return f"({text})" if needed or rng.random() < 0.2 else text

    joined = f" {rng.choice([connective, connective.upper()])} ".join(shown(tree, text) for tree, text in parts)
    return (connective, [tree for tree, _ in parts]), joined


def _literal_reads(value: Any, literal: tuple[Any, str]) -> Any:
    """The literal as *value*'s kind reads it, or a marker that it cannot."""
    read, written = literal
    quoted = written[:1] in "'\""
    if isinstance(value, str):
        return written.strip("'\"") if quoted else written
    if isinstance(value, bool):
        return read if isinstance(read, bool) and not quoted else NotImplemented
    if isinstance(value, (int, float)):
        return read if isinstance(read, float) and not quoted else NotImplemented
    return NotImplemented


def brute_force(tree: Any, record: dict[str, Any], flat: dict[str, Any] | None) -> bool | None:
    """The README's semantics, written plainly: True, False or None (unknown)."""
    kind = tree[0]
    if kind == "not":
        inner = brute_force(tree[1], record, flat)
        return None if inner is None else not inner
    if kind in ("and", "or"):
        results = [brute_force(part, record, flat) for part in tree[1]]
        decisive = kind == "or"  # True decides an or, False an and
        if decisive in results:
            return decisive
        return None if None in results else not decisive
    _, field, operand = tree
    value = truth_value(record, flat, field)
    if field == "tags":
        value = value or []
    if value is None:
        return None
    if kind == "has":
        if not isinstance(value, list):
            return None
        return any(fnmatch.fnmatchcase(e, operand) if isinstance(e, str) else False for e in value)
    if kind == "~":
        return fnmatch.fnmatchcase(value, operand) if isinstance(value, str) else None
    if isinstance(value, list):
        return None
    if kind == "in":
        reads = [r for r in (_literal_reads(value, literal) for literal in operand) if r is not NotImplemented]
        return value in reads if reads else None
    read = _literal_reads(value, operand)
    if read is NotImplemented or (isinstance(value, bool) and kind not in ("=", "!=")):
        return None
    return {"=": value == read, "!=": value != read, "<": value < read, "<=": value <= read, ">": value > read,
            ">=": value >= read}[kind]


def test_selections_equal_a_brute_force_filter_over_random_runs_and_queries():
    rng = random.Random(24)
    runs = [random_run(rng, i) for i in range(200)]
    records = [record for record, _ in runs]
    fields = KnownFields(records)
    selected_counts = []
    for _ in range(400):
        tree, text = random_expression(rng)
        expected = [record["id"] for record, flat in runs if brute_force(tree, record, flat) is True]
        assert [record["id"] for record in compile_query(text, fields).select(records)] == expected, text
        selected_counts.append(len(expected))
    # the queries are not trivial: they select some runs, all, and none
    assert 0 in selected_counts and 200 in selected_counts and sum(0 < n < 200 for n in selected_counts) > 150


# --------------------------------------------------------------------------- config values in the summary


def test_config_changes_are_the_flattened_differences_from_the_frozen_reference():
    config = _nested(reference())
    config["optim"]["lr"] = 3e-5
    config["loss"]["margin"]["beta"] = 0.6
    config["eval"]["metrics"] = ["e_recall@1"]
    config["model"]["weights_path"] = "/models/r50.pth"  # a key the reference lacks
    del config["loss"]["margin"]["nu"]  # and one the run lacks
    config["optim"]["epochs"] = 150.0  # the same number of another type is a change
    assert config_changes(config) == {"optim.lr": 3e-5, "loss.margin.beta": 0.6, "eval.metrics": ["e_recall@1"],
                                      "model.weights_path": "/models/r50.pth", "optim.epochs": 150.0,
                                      "loss.margin.nu": None}
    assert flatten({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}}) == {"a.b.c": 1, "a.d": [1, {"e": 2}]}
    assert config_changes(_nested(reference())) == {}


def test_the_reference_config_is_frozen():
    import hashlib

    from dmltui.config_summary import REFERENCE_FILE

    # Stored summaries are read against this file: changing it changes every stored run's config values.
    assert hashlib.sha256(REFERENCE_FILE.read_bytes()).hexdigest() == (
        "2bf6022dd7e9e1831f0b322eacba2516afd195be332bd72d12f4c3e7075e8f49")


def test_summaries_of_new_and_rebuilt_runs_hold_config_values_and_last_metrics(isolated_env):
    record = fake_run(isolated_env, name="lr", overrides={"optim": {"lr": 3e-5}}, epochs=4)
    assert record["config_changes"]["optim.lr"] == 3e-5 and record["last"]["test/e_recall@1"] > 0
    assert record["last"].keys() == record["best"].keys()
    rebuilt = run_ops.record_from_run_dir(Path(record["run_dir"]))
    assert rebuilt["config_changes"] == record["config_changes"] and rebuilt["last"] == record["last"]
    metrics = [json.loads(line) for line in (Path(record["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    final = next(m for m in reversed(metrics) if m["kind"] == "eval")
    assert record["last"]["test/nmi"] == final["metrics"]["nmi"] and final["epoch"] == 4


# --------------------------------------------------------------------------- runs list --where


def _store_files(home: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in [home / "runs.json", *sorted((home / "runs.d").glob("*.json"))]}


def test_runs_list_where_selects_with_the_word_filters_and_refuses_a_bad_query(isolated_env):
    home = isolated_env
    margin = fake_run(home, name="margin-lr4", index=0, tags=["paper"], overrides={"optim": {"lr": 1e-4}}, ceiling=0.7)
    triplet = fake_run(home, name="triplet-lr5", index=1, loss="triplet", miner="semihard", ceiling=0.7,
                       overrides={"optim": {"lr": 1e-5}})
    low = fake_run(home, name="margin-low", index=2, ceiling=0.2, overrides={"optim": {"lr": 1e-5}})
    fake_run(home, name="failed", index=3, state="failed", epoch=2, tags=["paper"])
    # a summary that is out of date (it says running; its directory says finished): listing it writes the store
    stale = fake_run(home, name="stale", index=4, ceiling=0.4)
    RunStore(home / "runs.json").modify(stale["id"], lambda record: record.update(state="running", final=False))

    before = _store_files(home)
    for bad, message in [
        ("state = finished and best.test.e_recall@1 >=", "error: --where: at column 45: expected a value after '>=', "
                                                          "got end of input"),
        ("config.los.name = margin", "error: --where: at column 1: unknown field 'config.los.name'; nearest: "
                                     "config.loss.name, config.log.savename, config.optim.name, config.sampler.name"),
    ]:
        refused = dmltui("runs", "list", "--where", bad, "--json")
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == message + "\n"  # one line, no traceback
    assert _store_files(home) == before  # nothing written, not even the stale run's state

    where = "state = finished and config.loss.name in (margin, triplet) and best.test.e_recall@1 >= 0.5"
    result = dmltui("runs", "list", "--where", where, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)] == [triplet["id"], margin["id"]]  # newest first
    assert _store_files(home) != before and RunStore(home / "runs.json").get(stale["id"])["state"] == "finished"
    both = dmltui("runs", "list", "--where", "config.optim.lr < 1e-4", "--tag", "paper", "--json")
    assert [r["name"] for r in json.loads(both.stdout)] == ["failed"]  # --where and the word filters: both hold
    table = dmltui("runs", "list", "--where", "config.optim.lr = 1e-5 and best.test.e_recall@1 < 0.5",
                   env={"COLUMNS": "200"})
    assert table.returncode == 0 and low["id"] in table.stdout and triplet["id"] not in table.stdout


def test_db_rebuild_makes_the_runs_of_an_older_store_queryable(isolated_env):
    runs = [fake_run(isolated_env, name=f"r{i}", index=i, overrides={"optim": {"lr": lr}}) for i, lr in
            enumerate([1e-5, 1e-3])]
    store = RunStore(isolated_env / "runs.json")
    with store.transaction() as tx:  # summaries as an older dmltui wrote them
        for run in runs:
            tx.modify(run["id"], lambda record: {k: v for k, v in record.items() if k not in ("config_changes", "last")})
    old = dmltui("runs", "list", "--where", "config.optim.lr < 1e-4", "--json")
    assert old.returncode == 2 and "no stored run has config values" in old.stderr and "db rebuild" in old.stderr
    assert dmltui("db", "rebuild").returncode == 0
    rebuilt = dmltui("runs", "list", "--where", "config.optim.lr < 1e-4 and last.test.e_recall@1 > 0", "--json")
    assert [r["name"] for r in json.loads(rebuilt.stdout)] == ["r0"]


# --------------------------------------------------------------------------- the runs screen


def test_a_query_typed_after_slash_filters_the_runs_screen(isolated_env):
    from textual.widgets import Input, Static

    from dmltui.tui.app import DmlTuiApp

    home = isolated_env
    fake_run(home, name="margin-s0", index=0, tags=["paper"], ceiling=0.7, overrides={"optim": {"lr": 1e-4}})
    fake_run(home, name="triplet-s0", index=1, loss="triplet", miner="semihard", ceiling=0.7)
    fake_run(home, name="npair-s0", index=2, loss="npair", miner="npair", ceiling=0.2)
    app = DmlTuiApp(poll_seconds=0.1, clock=lambda: datetime(2026, 11, 2, 12, 0, tzinfo=UTC))

    def shown() -> list[str]:
        return [record["name"] for record in app.screen.shown]

    def error_line() -> str:
        box = app.screen.query_one("#filter-error", Static)
        return str(box.render()) if box.display else ""

    async def scenario(pilot) -> None:
        async def until(condition, timeout: float = 10.0) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, "condition not reached in time"
                await pilot.pause(0.05)

        await until(lambda: len(shown()) == 3)
        await pilot.press("slash", *"best.test.e_recall@1 >= 0.5")
        await until(lambda: shown() == ["triplet-s0", "margin-s0"])  # filtering is synchronous
        assert error_line() == ""
        await pilot.press(*" and config.optim.lr >")  # incomplete: the error shows, the rows stay
        await until(lambda: error_line() != "")
        assert error_line() == "query: at column 50: expected a value after '>', got end of input"
        assert shown() == ["triplet-s0", "margin-s0"]
        await pilot.press(*"= 1e-4")
        await until(lambda: shown() == ["margin-s0"] and error_line() == "")
        box = app.screen.query_one("#filter", Input)
        box.value = "config.los.name = margin"
        await until(lambda: error_line().startswith("query: at column 1: unknown field 'config.los.name'; nearest: "
                                                    "config.loss.name"))
        assert shown() == ["margin-s0"]
        await pilot.press("enter", "t")  # the tag picker adds to a query (here one that does not compile yet)
        await until(lambda: type(app.screen).__name__ == "ChoiceScreen")
        await pilot.press("down", "enter")  # below "(any tag)": paper
        await until(lambda: box.value == 'config.los.name = margin and tags has "paper"')
        box.value = "tags has paper or config.loss.name = npair"
        await until(lambda: shown() == ["npair-s0", "margin-s0"])
        box.value = "npair"  # words are still words
        await until(lambda: shown() == ["npair-s0"] and error_line() == "")
        await pilot.press("escape")  # clears the filter
        await until(lambda: len(shown()) == 3 and error_line() == "")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await scenario(pilot)

    asyncio.run(main())

"""The dmltui entry point: quickstart end to end, presets import, schema."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import dmltui

RUNS_FILE = """\
# margin runs of the paper (excerpt in the original's style)
datapath=/data
python main.py --dataset cub200 --kernels 6 --source $datapath --n_epochs 150 --log_online --project RevisitDML \\
    --group CUB_Margin_b06_Distance --seed 0 --gpu 0 --bs 112 --samples_per_class 2 --loss margin \\
    --batch_mining distance --arch resnet50_frozen_normalize --loss_margin_beta 0.6
python main.py --dataset cub200 --kernels 6 --source $datapath --n_epochs 150 --log_online --project RevisitDML --group CUB_Margin_b06_Distance --seed 1 --gpu 0 --bs 112 --samples_per_class 2 --loss margin --batch_mining distance --arch resnet50_frozen_normalize --loss_margin_beta 0.6
python main.py --dataset online_products --kernels 6 --source $datapath --n_epochs 100 --group SOP_Margin_b12_Distance --seed 0 --gpu 1 --bs 112 --loss margin --batch_mining distance
"""


@pytest.mark.slow  # the README's whole quickstart, end to end; test_quickstart_table_and_invalid_override trains 1 epoch daily
@pytest.mark.timeout(600)  # the README's 20 epochs: about 75 s alone, several minutes beside a loaded suite
def test_quickstart_trains_and_beats_raw_pixels_and_the_untrained_network():
    result = dmltui("quickstart", "--json", timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["state"] == "finished"
    rows = {row["label"]: row for row in payload["rows"]}
    assert list(rows)[:2] == ["raw pixels", "untrained network"]
    best_label = next(label for label in rows if label.startswith("trained (best"))
    trained = rows[best_label]["metrics"]
    assert trained["e_recall@1"] >= 0.50  # the bar on held-out glyph classes
    assert trained["e_recall@1"] > rows["raw pixels"]["metrics"]["e_recall@1"] + 0.2
    assert trained["e_recall@1"] > rows["untrained network"]["metrics"]["e_recall@1"] + 0.3
    assert trained["nmi"] > rows["untrained network"]["metrics"]["nmi"]
    listed = json.loads(dmltui("runs", "list", "--json").stdout)
    assert [(r["id"], r["state"], r["dataset"]) for r in listed] == [(payload["run"], "finished", "glyphs")]
    best = listed[0]["best"]["test/e_recall@1"]
    assert best["value"] == trained["e_recall@1"] and best["epoch"] == rows[best_label]["epoch"]
    shown = json.loads(dmltui("runs", "show", payload["run"], "--json").stdout)
    assert shown["config"]["data"]["dataset"] == "glyphs" and shown["run_dir"] == payload["run_dir"]


def test_quickstart_table_and_invalid_override():
    result = dmltui("quickstart", "--set", "optim.epochs=1", "--set", "eval.metrics=['e_recall@1', 'nmi']",
                    "--set", "eval.storage_metrics=['e_recall@1']")
    assert result.returncode == 0, result.stderr[-3000:]
    for text in ("raw pixels", "untrained network", "trained", "R@1", "NMI"):
        assert text in result.stdout
    bad = dmltui("quickstart", "--set", "optim.epochs=zero")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --set optim.epochs: optim.epochs = 'zero': Input should be a valid integer, unable to parse string as an integer"
    assert len(json.loads(dmltui("runs", "list", "--json").stdout)) == 1  # the bad one launched nothing


def test_presets_import_writes_one_preset_per_group(tmp_path):
    script = tmp_path / "runs.sh"
    script.write_text(RUNS_FILE)
    out = tmp_path / "imported"
    dry = dmltui("presets", "import", str(script), "--out", str(out), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert not out.exists() and len(json.loads(dry.stdout)) == 2
    result = dmltui("presets", "import", str(script), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    written = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert set(written) == {"cub-margin-b06-distance", "sop-margin-b12-distance"}
    assert written["cub-margin-b06-distance"]["seeds"] == [0, 1]
    preset = tomllib.loads((out / "cub-margin-b06-distance.toml").read_text())
    assert preset["seeds"] == [0, 1] and preset["loss"]["margin"]["beta"] == 0.6
    assert preset["data"]["dataset"] == "cub200" and "source_path" not in preset["data"]  # machine flags dropped
    assert "gpus" not in preset.get("run", {})
    assert dmltui("presets", "validate", str(out / "cub-margin-b06-distance.toml")).returncode == 0
    again = dmltui("presets", "import", str(script), "--out", str(out))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_presets_import_with_a_bad_line_writes_nothing(tmp_path):
    script = tmp_path / "runs.sh"
    script.write_text(RUNS_FILE + "python main.py --loss margin --bs 111 --seed 0\n")
    out = tmp_path / "imported"
    result = dmltui("presets", "import", str(script), "--out", str(out))
    assert result.returncode == 2
    assert "sampler.batch_size=111 is not a multiple" in result.stderr
    assert not out.exists()


def test_schema_command_prints_the_config_json_schema(tmp_path):
    result = dmltui("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Config" and "loss" in schema["properties"]
    assert dmltui("schema", "--out", str(tmp_path / "s.json")).returncode == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_runs_tail_json_prints_every_metric_line_and_exits_by_state(isolated_env):
    from dmltui.testing import fake_run

    done = fake_run(isolated_env, name="done", epochs=3)
    failed = fake_run(isolated_env, name="broken", state="failed", epoch=1, epochs=3, index=1)
    result = dmltui("runs", "tail", done["id"], "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [json.loads(line) for line in (Path(done["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert lines == expected and len(lines) == 3 + 4  # 3 train lines, 4 evaluations (epoch 0 included)
    assert dmltui("runs", "tail", failed["id"], "--json").returncode == 1
    assert dmltui("runs", "tail", "nope", "--json").returncode == 3


def test_dmltui_alone_without_a_terminal_prints_the_commands():
    result = dmltui()  # stdin and stdout are pipes here: no terminal to draw the UI on
    assert result.returncode == 2
    assert "Usage: dmltui" in result.stdout + result.stderr and "tui" in result.stdout + result.stderr

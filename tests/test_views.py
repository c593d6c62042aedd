"""Saved views (issue 24 §2) through the real entry point: ``dmltui views save/list/show/delete`` keep them in the
user's config.toml (its comments and other tables untouched), ``runs list --view NAME`` applies one, ``runs list
--fields`` chooses the table's columns, and eight saves at once all land."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, dmltui

from dmltui.testing import fake_run

USER_CONFIG = """\
# my dmltui settings: keep this comment
[data.mirrors]
cub200 = "https://mirror.example/cub200.tgz"  # the lab's mirror

[slurm]
time = 30  # minutes
"""


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    """The user's config.toml, in a directory that does not exist yet (a save creates it)."""
    path = tmp_path / "user-config" / "dmltui" / "config.toml"
    monkeypatch.setenv("DMLTUI_CONFIG", str(path))
    return path


def ok(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``dmltui *args*``, which must exit 0 (conftest's ``ok``, with an environment: $COLUMNS for tables)."""
    result = dmltui(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    """The failed command's message: exit *code*, one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr.strip()


def views_json() -> list[dict]:
    return json.loads(ok("views", "list", "--json").stdout)


def test_save_list_show_replace_and_delete_round_trip(config):
    assert views_json() == [] and not config.exists()
    saved = ok("views", "save", "margin-lr", "--filter", "config.loss.name = margin and state = finished",
               "--fields", "state,name,R@1,config.optim.lr", "--sort", "config.optim.lr", "--asc",
               "--group-by", "config.optim.lr")
    assert saved.stdout == "" and saved.stderr == f"saved view margin-lr in {config}\n"
    ok("views", "save", "all.runs")
    assert tomllib.loads(config.read_text())["views"] == {  # keys at their defaults are left out
        "margin-lr": {"filter": "config.loss.name = margin and state = finished",
                      "columns": ["state", "name", "R@1", "config.optim.lr"], "sort": "config.optim.lr", "order": "asc",
                      "group_by": "config.optim.lr"},
        "all.runs": {}}
    margin = {"name": "margin-lr", "filter": "config.loss.name = margin and state = finished",
              "columns": ["state", "name", "R@1", "config.optim.lr"], "sort": "config.optim.lr", "order": "asc",
              "group_by": "config.optim.lr"}
    default = {"name": "all.runs", "filter": "", "columns": [], "sort": "created_at", "order": "desc", "group_by": None}
    assert views_json() == [default, margin]  # sorted by name
    assert json.loads(ok("views", "show", "margin-lr", "--json").stdout) == margin
    shown = ok("views", "show", "margin-lr").stdout.splitlines()
    assert [line.split(None, 1) for line in shown] == [
        ["name", "margin-lr"], ["filter", "config.loss.name = margin and state = finished"],
        ["columns", "state,name,R@1,config.optim.lr"], ["sort", "config.optim.lr"], ["order", "asc"],
        ["group_by", "config.optim.lr"]]
    table = ok("views", "list", env={"COLUMNS": "300"}).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == ["name", "filter", "columns", "sort", "group by"]
    assert re.split(r"\s{2,}", table[1].strip()) == ["all.runs", "-", "(default)", "created_at desc", "-"]

    ok("views", "save", "margin-lr", "--filter", "margin tag:paper")  # replaces the view of that name, whole
    assert views_json() == [default, {**default, "name": "margin-lr", "filter": "margin tag:paper"}]
    deleted = ok("views", "delete", "margin-lr")
    assert deleted.stdout == "" and deleted.stderr == f"deleted view margin-lr from {config}\n"
    assert views_json() == [default]
    assert one_error_line(dmltui("views", "delete", "margin-lr"), 3) == f"error: no view 'margin-lr' in {config}"


def test_the_users_comments_and_other_tables_stay_through_saves_and_deletes(config):
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    config.chmod(0o640)
    ok("views", "save", "a", "--filter", "state = finished")
    ok("views", "save", "b", "--fields", "id,name")
    text = config.read_text()
    assert text.startswith(USER_CONFIG) and stat.S_IMODE(config.stat().st_mode) == 0o640
    assert tomllib.loads(text)["data"] == {"mirrors": {"cub200": "https://mirror.example/cub200.tgz"}}
    # a comment the user wrote into a view stays when the view is saved again
    config.write_text(text.replace('filter = "state = finished"', '# finished runs only\nfilter = "state = finished"'))
    ok("views", "save", "a", "--filter", "state = failed", "--sort", "name")
    text = config.read_text()
    assert '[views.a]\n# finished runs only\nfilter = "state = failed"\n' in text and 'sort = "name"' in text
    ok("views", "delete", "a")
    ok("views", "delete", "b")
    assert config.read_text() == USER_CONFIG + "\n"  # only the blank line tomlkit put before the first view stays


BAD_VIEWS = {
    "order": ('[views.x]\norder = "up"\n', "views.x.order: 'up'; expected asc or desc"),
    "filter": ('[views.x]\nfilter = "state = (finished"\n',
               "views.x.filter: at column 9: expected a value after '=', got '('"),
    "column": ('[views.x]\ncolumns = ["id", "nme"]\n', "views.x.columns: unknown column 'nme'; nearest: name"),
    "key": ('[views.x]\ncolour = "red"\n', "views.x.colour: unknown key; a view has filter, columns, sort, order, group_by"),
    "columns type": ('[views.x]\ncolumns = "id"\n', "views.x.columns: expected a list of column names, got 'id'"),
}


@pytest.mark.parametrize("case", BAD_VIEWS)
def test_a_view_the_file_spells_wrong_is_one_line_naming_the_file_and_key(config, case):
    view, message = BAD_VIEWS[case]
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG + view)
    for args in (["views", "list"], ["views", "show", "x"], ["runs", "list", "--view", "x"]):
        line = one_error_line(dmltui(*args), 2)
        assert line.endswith(f"{config}: {message}"), line
    assert config.read_text() == USER_CONFIG + view


@pytest.mark.parametrize(("args", "code", "message"), [
    (["views", "save", "bad name"], 2, "error: view name 'bad name': use letters, digits, '-', '_' and '.' (at most 64, "
                                       "starting with a letter or digit)"),
    (["views", "save", "x" * 65], 2, "error: view name"),
    (["views", "save", "x", "--fields", "id,nme"], 2, "error: --fields: unknown column 'nme'; nearest: name"),
    (["views", "save", "x", "--filter", "state = (finished"], 2,
     "error: --filter: at column 9: expected a value after '=', got '('"),
    (["views", "save", "x", "--sort", ""], 2, "views.x.sort: expected a name, got ''"),
    (["views", "show", "sweeps"], 3, "error: no view 'sweeps' in {config}; nearest: sweep (dmltui views save NAME ...)"),
    (["views", "show", "other"], 3, "error: no view 'other' in {config}; saved: sweep (dmltui views save NAME ...)"),
    (["views", "delete", "other"], 3, "error: no view 'other' in {config}"),
    (["runs", "list", "--view", "other"], 3, "error: --view: no view 'other' in {config}; saved: sweep"),
])
def test_a_bad_command_is_one_line_with_its_exit_code_and_changes_nothing(config, args, code, message):
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG + '[views.sweep]\nfilter = "tag:sweep"\n')
    before = config.read_bytes()
    line = one_error_line(dmltui(*args), code)
    assert message.format(config=config) in line, line
    assert config.read_bytes() == before


def test_a_config_file_that_is_not_toml_is_left_as_it_is(config):
    config.parent.mkdir(parents=True)
    broken = USER_CONFIG + "[views.x\nfilter = \n"
    config.write_text(broken)
    for args in (["views", "save", "y"], ["views", "delete", "x"]):
        assert "not valid TOML" in one_error_line(dmltui(*args), 2)
    for args in (["views", "list"], ["runs", "list", "--view", "x"]):
        assert f"{config}: not valid TOML" in one_error_line(dmltui(*args), 2)
    assert config.read_text() == broken


@pytest.fixture
def lab(isolated_env) -> dict[str, dict]:
    """Four runs with known config values and metrics (created a, b, c, d in that order)."""
    return {
        "a": fake_run(isolated_env, name="margin-lr4", index=0, tags=["paper"], ceiling=0.7,
                      overrides={"optim": {"lr": 1e-4}}),
        "b": fake_run(isolated_env, name="triplet-lr5", index=1, loss="triplet", miner="semihard", tags=["paper"],
                      ceiling=0.5, overrides={"optim": {"lr": 1e-5}}),
        "c": fake_run(isolated_env, name="margin-lr3e5", index=2, state="stopped", epoch=5, ceiling=0.3,
                      overrides={"optim": {"lr": 3e-5}}),
        "d": fake_run(isolated_env, name="margin-lr3", index=3, tags=["sweep"], ceiling=0.6,
                      overrides={"optim": {"lr": 1e-3}}),
    }


def table(*args: str) -> list[list[str]]:
    """``runs list`` as rows of cells, the header first (cells are apart by two spaces or more)."""
    result = ok("runs", "list", *args, env={"COLUMNS": "300"})
    return [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]


def ids(*args: str) -> list[str]:
    return [row[0] for row in table(*args)[1:]]


def names(lab: dict[str, dict], *keys: str) -> list[str]:
    return [lab[key]["id"] for key in keys]


def r_at_1(record: dict) -> str:
    return f"{record['best']['test/e_recall@1']['value']:.4f}"


def test_runs_list_view_applies_its_filter_columns_and_sort(config, lab):
    ok("views", "save", "margins", "--filter", "config.loss.name = margin", "--fields",
       "id,config.optim.lr,best.test.e_recall@1", "--sort", "config.optim.lr", "--asc")
    ok("views", "save", "paper", "--filter", "tag:paper state:finished", "--sort", "name", "--asc")
    rows = table("--view", "margins")
    assert rows == [["id", "optim.lr", "best test R@1"], [lab["c"]["id"], "3e-05", r_at_1(lab["c"])],
                    [lab["a"]["id"], "0.0001", r_at_1(lab["a"])], [lab["d"]["id"], "0.0010", r_at_1(lab["d"])]]
    assert ids("--view", "margins", "--desc") == names(lab, "d", "a", "c")
    assert ids("--view", "margins", "--sort", "best.test.e_recall@1") == names(lab, "c", "d", "a")  # still ascending
    assert ids("--view", "margins", "--where", "best.test.e_recall@1 >= 0.5") == names(lab, "a", "d")  # both pass
    assert ids("--view", "margins", "--state", "stopped") == names(lab, "c")
    assert table("--view", "margins", "--fields", "name,id")[0] == ["name", "id"]  # --fields beats the view's columns
    listed = json.loads(ok("runs", "list", "--view", "margins", "--json").stdout)
    assert [r["id"] for r in listed] == names(lab, "c", "a", "d") and "best" in listed[0]

    rows = table("--view", "paper")  # filter words; no columns saved: the default table
    assert rows[0] == ["id", "name", "state", "dataset", "loss/miner", "epoch", "R@1", "tags"]
    assert [row[0] for row in rows[1:]] == names(lab, "a", "b")  # margin-lr4 before triplet-lr5
    assert ids("--view", "paper", "--desc") == names(lab, "b", "a")
    assert ids("--view", "paper", "--text", "triplet") == names(lab, "b")
    assert ids("--view", "paper", "--state", "stopped") == []
    assert ids("--view", "paper", "--where", "config.optim.lr < 5e-5") == names(lab, "b")


def test_a_view_query_naming_a_key_no_run_has_says_which_option(config, lab):
    """Which config keys exist depends on the runs: a saved query is checked against them when it is used."""
    config.parent.mkdir(parents=True)
    config.write_text('[views.odd]\nfilter = "config.nosuch.key = 3"\n')
    line = one_error_line(dmltui("runs", "list", "--view", "odd"), 2)
    assert line.startswith("error: --view odd: filter 'config.nosuch.key = 3': at column 1: unknown field "
                           "'config.nosuch.key'"), line
    line = one_error_line(dmltui("runs", "list", "--view", "odd", "--where", "seed = 0"), 2)
    assert line.startswith("error: --view odd and --where: (config.nosuch.key = 3) and (seed = 0): at column 2: "), line


def test_runs_list_fields_chooses_the_columns_of_the_table_and_of_json(lab):
    order = names(lab, "d", "c", "b", "a")  # newest first
    rows = table("--fields", "id,config.optim.lr,best.test.e_recall@1")
    assert rows == [["id", "optim.lr", "best test R@1"], *([lab[k]["id"], lr, r_at_1(lab[k])] for k, lr in
                                                          (("d", "0.0010"), ("c", "3e-05"), ("b", "1e-05"), ("a", "0.0001")))]
    listed = json.loads(ok("runs", "list", "--fields", "id,config.optim.lr,best.test.e_recall@1,tags", "--json").stdout)
    assert listed == [{"id": lab[k]["id"], "config.optim.lr": lr, "best.test.e_recall@1": lab[k]["best"]["test/e_recall@1"]["value"],
                       "tags": lab[k]["tags"]} for k, lr in (("d", 1e-3), ("c", 3e-5), ("b", 1e-5), ("a", 1e-4))]
    assert [r["id"] for r in listed] == order
    narrow = ok("runs", "list", "--fields", "name,id,config.optim.lr", env={"COLUMNS": "40"})  # the given order is
    assert narrow.stdout.splitlines()[0].split() == ["name", "id"]  # also what a narrow terminal keeps
    assert narrow.stderr == "note: 40 columns leave out optim.lr (a wider terminal, or --json, shows them)\n"
    assert table("--fields", "name,config.name")[0] == ["name", "config.name"]  # two columns never share a header
    line = one_error_line(dmltui("runs", "list", "--fields", "id,nme"), 2)
    assert line == "error: --fields: unknown column 'nme'; nearest: name"
    line = one_error_line(dmltui("runs", "list", "--fields", "id,nmae", "--json"), 2)
    assert line == "error: --fields: unknown field 'nmae'; nearest: name"
    assert "unknown field 'bset.test.x'" in one_error_line(dmltui("runs", "list", "--fields", "bset.test.x", "--json"), 2)


def test_eight_saves_at_once_all_land(config):
    """Each save reads, edits and writes the whole file: without one lock around that, two saves that read the same
    file would each write it without the other's view. Many views already saved make each edit take a while."""
    config.parent.mkdir(parents=True)
    earlier = "".join(f'[views.old{i}]\nfilter = "seed = {i}"\ncolumns = ["id", "name", "config.optim.lr"]\n\n'
                      for i in range(300))
    config.write_text(USER_CONFIG + "\n" + earlier)
    script = Path(sys.executable).with_name("dmltui")
    processes = [subprocess.Popen([str(script), "views", "save", f"v{n}", "--filter", f"seed = {n}", "--fields", "id,seed"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=os.environ.copy())
                 for n in range(8)]  # all started before any is waited on
    for n, process in enumerate(processes):
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0 and stderr == f"saved view v{n} in {config}\n", stderr
    text = config.read_text()
    views = tomllib.loads(text)["views"]
    assert {f"v{n}": views[f"v{n}"] for n in range(8)} == {
        f"v{n}": {"filter": f"seed = {n}", "columns": ["id", "seed"]} for n in range(8)}
    assert len(views) == 308 and text.startswith(USER_CONFIG)


def test_a_save_while_another_process_holds_the_file_exits_4_and_changes_nothing(config):
    from filelock import FileLock

    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    with FileLock(str(config) + ".lock"):  # another dmltui in the middle of a save
        line = one_error_line(dmltui("views", "save", "x"), 4)
    assert line == f"error: {config}: another dmltui held its lock for 10 s; nothing was changed"
    assert config.read_text() == USER_CONFIG

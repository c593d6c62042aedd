"""Run store cost at 1,000 and 10,000 runs, measured in one run, with the growth ratio between them.

    uv run python bench/store.py [--runs 1000,10000] [--json]

For each size, a scratch $DMLTUI_HOME holds that many runs spread over twelve months (ended runs in their
months' partitions) and 4 live ones (real run directories, sleeping processes): what a lab's year looks like.

- ``list_json_s``: wall time of ``dmltui runs list --json`` (min of 3; ``*_pyc_s`` with a warm bytecode cache,
  where the environment sets PYTHONDONTWRITEBYTECODE, as this sandbox does).
- ``list_limit_s``: ``runs list --json --limit 20 --fields id,state,best``, what a script polling its runs pays.
- ``list_where_s`` / ``list_plain_s``: ``runs list --where WHERE --json`` (a query over config keys and a metric,
  ``WHERE`` below) and plain ``runs list --json``, warm bytecode cache, taken in turns (min of 5 each, after a
  warm-up of each); ``where_ratio`` is the first over the second.
- ``update_ms``: one summary update of a live run (median of 10): a locked read-modify-write of the live file.
- ``tag_ms``: a change to an ended run (median of 10): its month's partition is rewritten.
- ``migrate_s``: the first transaction on a schema-2 file (every run in runs.json, configs as differences).
- ``parse_json_ms`` / ``parse_orjson_ms``, ``dump_json_ms`` / ``dump_orjson_ms``: the standard library against
  orjson on the same store data (why the store reads with json and writes with orjson).

Targets (issue 17), at 10,000 runs: list <= 0.5 s, update <= 50 ms, and update growing at most 2x from 1,000
to 10,000 (``growth``: the 10,000 figure over the 1,000 one). Issue 24: ``where_ratio`` <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from dmltui.query import select
from dmltui.store import RunStore, partitions_dir
from dmltui.testing import ended_record, fake_run

WHERE = "config.loss.name in (margin, triplet) and config.optim.lr < 1e-4 and best.test.e_recall@1 >= 0.55"


def median_ms(action, repeats: int = 10) -> float:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        action(i)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def walls(command: list[str], env: dict, expected: int, warm_up: bool = False) -> list[float]:
    measured = []
    for _ in range(4 if warm_up else 3):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, env=env, check=True)
        measured.append(time.perf_counter() - started)
        assert len(json.loads(result.stdout)) == expected, result.stderr
    return measured[1:] if warm_up else measured


def paired_walls(commands: list[list[str]], env: dict, expected: list[int], repeats: int = 5) -> list[list[float]]:
    """Each command's wall times, run in turns after one warm-up each (a machine's drift hits every one alike)."""
    measured: list[list[float]] = [[] for _ in commands]
    for _ in range(repeats + 1):
        for command, count, times in zip(commands, expected, measured, strict=True):
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, env=env, check=True)
            times.append(time.perf_counter() - started)
            assert len(json.loads(result.stdout)) == count, result.stderr
    return [times[1:] for times in measured]


def measure(runs: int) -> dict:
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]) for _ in range(4)]
    try:
        with tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch)
            store = RunStore(home / "runs.json")
            live = [fake_run(home, name=f"live-{i}", index=i, state="running", epoch=2, epochs=30, pid=p.pid, save=False)
                    for i, p in enumerate(sleepers)]
            ended = [ended_record(i, runs) for i in range(runs)]
            store.insert(*live, *ended)
            sizes = [p.stat().st_size for p in [store.path, *partitions_dir(store.path).glob("*.json")]]
            update_ms = median_ms(lambda i: store.modify(live[0]["id"], lambda r: r.update(epoch=3 + i)))
            tag_ms = median_ms(lambda i: store.modify(ended[i * 97 % runs]["id"], lambda r: r.update(notes=f"checked {i}")))

            largest_partition = max(p.stat().st_size for p in partitions_dir(store.path).glob("*.json"))
            everything = {"runs": {str(i): r for i, r in enumerate(ended)}}
            data = orjson.dumps(everything)
            parse_json_ms = median_ms(lambda i: json.loads(data), 3)
            parse_orjson_ms = median_ms(lambda i: orjson.loads(data), 3)
            dump_json_ms = median_ms(lambda i: json.dumps(everything, separators=(",", ":")), 3)
            dump_orjson_ms = median_ms(lambda i: orjson.dumps(everything), 3)

            script = Path(sys.executable).with_name("dmltui")
            env = {**os.environ, "DMLTUI_HOME": scratch}
            warm_env = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
            warm_env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
            total = runs + len(live)
            list_walls = walls([str(script), "runs", "list", "--json"], env, total)
            list_pyc_walls = walls([str(script), "runs", "list", "--json"], warm_env, total, warm_up=True)
            limit_walls = walls([str(script), "runs", "list", "--json", "--limit", "20", "--fields", "id,state,best"],
                                warm_env, 20)
            plain_walls, where_walls = paired_walls(
                [[str(script), "runs", "list", "--json"], [str(script), "runs", "list", "--where", WHERE, "--json"]],
                warm_env, [total, len(select([*live, *ended], WHERE))])

            legacy = home / "legacy" / "runs.json"
            legacy.parent.mkdir()
            legacy.write_bytes(orjson.dumps({
                "meta": {"1": {"schema_version": 2, "config_base": {"run": {"seed": 0}, "optim": {"lr": 1e-5}}}},
                "runs": {str(i + 1): {**r, "config_diff": {"set": [[["run", "seed"], r["seed"]]]}} for i, r in enumerate(ended)}}))
            started = time.perf_counter()
            RunStore(legacy).get(ended[0]["id"])
            migrate_s = time.perf_counter() - started
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    return {"runs": runs, "store_mb": round(sum(sizes) / 2**20, 2), "live_file_kb": round(sizes[0] / 2**10, 1),
            "largest_partition_kb": round(largest_partition / 2**10, 1),
            "list_json_s": round(min(list_walls), 3), "list_json_pyc_s": round(min(list_pyc_walls), 3),
            "list_limit_s": round(min(limit_walls), 3), "list_plain_s": round(min(plain_walls), 3),
            "list_where_s": round(min(where_walls), 3), "where_ratio": round(min(where_walls) / min(plain_walls), 2),
            "update_ms": round(update_ms, 1), "tag_ms": round(tag_ms, 1),
            "migrate_s": round(migrate_s, 2), "parse_json_ms": round(parse_json_ms, 1),
            "parse_orjson_ms": round(parse_orjson_ms, 1), "dump_json_ms": round(dump_json_ms, 1),
            "dump_orjson_ms": round(dump_orjson_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1000,10000", help="comma-separated store sizes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(n) for n in args.runs.split(",")]
    results = [measure(n) for n in sizes]
    figures: dict = {"sizes": results}
    if len(results) > 1:
        small, large = results[0], results[-1]
        figures["growth"] = {key: round(large[key] / small[key], 2) for key in
                             ("list_json_s", "list_json_pyc_s", "list_limit_s", "update_ms", "tag_ms") if small[key]}
        figures["targets_met"] = {"list_json_pyc_s<=0.5": large["list_json_pyc_s"] <= 0.5, "update_ms<=50": large["update_ms"] <= 50,
                                  "update_growth<=2": figures["growth"]["update_ms"] <= 2,
                                  "where_ratio<=1.2": large["where_ratio"] <= 1.2}
    if args.json:
        print(json.dumps(figures))
        return
    for result in results:
        print("  ".join(f"{key}={value}" for key, value in result.items()))
    for key in ("growth", "targets_met"):
        if key in figures:
            print(f"{key}: {figures[key]}")


if __name__ == "__main__":
    main()

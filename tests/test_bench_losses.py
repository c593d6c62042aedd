"""bench/losses.py --json: the floor, the per-pair times, ratios and pass/fail flags.

Only the structure and the sanity of the numbers are checked; the timing targets are not
(a shared CI machine is too noisy for them).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

PROXY_LOSSES = {"proxynca", "softmax", "arcface", "softtriplet", "proxy_anchor", "cosface", "subcenter_arcface"}
NEWER_TUPLE_LOSSES = {"supcon", "ntxent", "circle", "fastap", "smoothap"}  # issue 13, benched without a preset


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_json_has_floor_ratios_and_flags():
    done = subprocess.run([sys.executable, "bench/losses.py", "--json", "--repeats", "3", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    assert result["device"] == "cpu" and result["threads"] == 2 and result["repeats"] == 3
    assert positive(result["floor_ms"])
    assert result["targets"] == {"proxy_max_ratio": 1.5, "tuple_max_ms": 2.0}
    pairs = result["ms"]
    assert {pair.split("+")[0] for pair in pairs} >= PROXY_LOSSES | NEWER_TUPLE_LOSSES | {"triplet", "margin", "multisimilarity"}
    assert all(positive(ms) for ms in pairs.values())
    assert set(result["kind"]) == set(result["pass"]) == set(pairs)

    proxies = {pair for pair, kind in result["kind"].items() if kind == "proxy"}
    assert {pair.split("+")[0] for pair in proxies} == PROXY_LOSSES
    assert all(pair.endswith("+none") for pair in proxies)
    assert set(result["ratio_to_floor"]) == set(result["proxy_rows"]) == proxies
    floors = result["floor_ms_by_rows"]
    assert floors["100"] == result["floor_ms"] and all(positive(ms) for ms in floors.values())
    assert result["proxy_rows"]["softtriplet+none"] == 200 and result["proxy_rows"]["softmax+none"] == 100  # K = 2 centres
    assert result["proxy_rows"]["subcenter_arcface+none"] == 300 and result["proxy_rows"]["proxy_anchor+none"] == 100
    for pair, ratio in result["ratio_to_floor"].items():
        floor = floors[str(result["proxy_rows"][pair])]  # the floor of the loss's own shape
        assert positive(ratio) and math.isclose(ratio, pairs[pair] / floor, rel_tol=0.01, abs_tol=0.002)
        assert math.isclose(result["ratio_to_100_row_floor"][pair], pairs[pair] / result["floor_ms"], rel_tol=0.01,
                            abs_tol=0.002)
        assert result["pass"][pair] == (ratio <= 1.5)
    for pair in set(pairs) - proxies:
        assert result["kind"][pair] == "tuple" and result["pass"][pair] == (pairs[pair] <= 2.0)
    assert all(isinstance(flag, bool) for flag in result["pass"].values())
    assert result["all_pass"] == all(result["pass"].values())

"""Median milliseconds per forward+backward of every loss+miner pair the presets use, and of the losses of issue 13.

    uv run python bench/losses.py [--json] [--repeats 50] [--device cpu|cuda]

Batch 112 (56 classes x 2), dim 128, 100 training classes, L2-normalised embeddings
(un-normalised for npair/lifted/angular, as their presets), 2 CPU threads.

Targets (CPU, 2 threads):

* Tuple losses (those that compare the samples of the batch; with or without a miner):
  every pair <= 2 ms. The original's loop-based code takes on a 2-core machine 15 ms
  (triplet+distance), 16 ms (margin+distance), 19 ms (multisimilarity), 38 ms (lifted),
  62 ms (npair) and 108 ms (angular+npair) per step.
* Proxy losses (no miner, trainable vectors per training class: proxynca, softmax,
  arcface, softtriplet, proxy_anchor, cosface, subcenter_arcface): every pair <= 1.5x the floor of the same shapes, the
  forward+backward of the simplest proxy loss,
  ``F.cross_entropy(16 * F.linear(F.normalize(x), F.normalize(W)), y)`` with x 112x128 and
  W as many rows x 128 as the loss has proxies, both requiring grad, measured in the same
  process: 100 rows for most, 100 x K for SoftTriple's K centres and Sub-center ArcFace's
  K sub-centres per class (``floor_ms``
  is the 100-row floor, ``floor_ms_by_rows`` every one measured). The floor's x is the
  raw leaf, so its normalisation is timed forward and backward; a pair's normalised
  embeddings are made before the clock starts (their backward counts).

A shared machine is noisy, so a pair's floor is measured in chunks interleaved with the
chunks of the pair (floor, pair, floor, next pair, ... over several rounds); each
reported time is the median of its samples after 5 warm-up steps, and the ratios use
the median of all samples of the floor of the pair's shape. The JSON output
(``--json``) holds ``floor_ms``, ``floor_ms_by_rows``, ``ms``, ``kind`` and ``proxy_rows``
per pair, ``ratio_to_floor`` for the proxy pairs (to the floor of the same shape) and
``ratio_to_100_row_floor``, ``targets``, ``pass`` per pair and ``all_pass``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import tomllib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine import catalog, losses, miners
from engine.config.presets import bundled_presets_dir, resolve

PEER_MS = {"triplet+distance": 15, "margin+distance": 16, "multisimilarity+none": 19, "lifted+lifted": 38,
           "npair+npair": 62, "angular+npair": 108}
# The newer losses (issue 13) at their defaults, whether or not a preset uses them; all normalise inside.
NEWER_PAIRS = [(name, "none", True) for name in ("proxy_anchor", "supcon", "ntxent", "cosface", "subcenter_arcface",
                                                 "circle", "fastap", "smoothap")]
BATCH, DIM, NUM_CLASSES = 112, 128, 100
WARMUP = 5
ROUNDS = 5  # chunks per pair, each preceded by an equal chunk of floor steps
FLOOR_SCALE = 16.0
TUPLE_MAX_MS = 2.0
PROXY_MAX_RATIO = 1.5

Step = Callable[[], float]


def preset_pairs() -> list[tuple[str, str, bool]]:
    """(loss, miner or 'none', normalised) for every method preset, and the newer losses."""
    pairs = {}
    for path in sorted(bundled_presets_dir().glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        if "loss" not in raw:
            continue
        config = resolve([path.stem, "cub200"]).config
        miner = config.miner.name if catalog.uses_miner(config.loss.name) else "none"
        pairs[(config.loss.name, miner)] = config.model.arch.endswith("normalize")
    for loss, miner, normalised in NEWER_PAIRS:
        pairs.setdefault((loss, miner), normalised)
    return [(loss, miner, normalised) for (loss, miner), normalised in sorted(pairs.items())]


def timed(device: torch.device, params: list[nn.Parameter], run: Callable[[], None]) -> float:
    """Milliseconds of one call of *run*; parameter gradients are cleared first, as zero_grad does."""
    for p in params:
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000


def pair_step(loss_name: str, miner_name: str, normalised: bool, device: torch.device) -> tuple[Step, str, int]:
    """A function timing one forward+backward of the pair, the pair's kind ('proxy' or 'tuple'), and the number of
    proxy vectors its floor gets (the rows of its largest embedding-wide parameter; the class count otherwise)."""
    torch.manual_seed(0)
    config = resolve(["cub200"], [f"loss.name='{loss_name}'", f"miner.name='{'distance' if miner_name == 'none' else miner_name}'"]).config
    miner = miners.create(miner_name) if miner_name != "none" else None
    loss = losses.LOSSES.get(loss_name).from_config(config, NUM_CLASSES, miner).to(device)
    params = list(loss.parameters())
    kind = "proxy" if params and not loss.REQUIRES_MINER else "tuple"
    rows = max([p.numel() // DIM for p in params if p.ndim >= 2 and DIM in p.shape], default=NUM_CLASSES)
    labels = torch.randint(0, NUM_CLASSES, (BATCH // 2,), device=device).repeat_interleave(2)
    base = torch.randn(BATCH, DIM, device=device)

    def step() -> float:
        x = base.clone().requires_grad_()
        embeddings = F.normalize(x, dim=1) if normalised else x
        return timed(device, params, lambda: loss(embeddings, labels).backward())

    return step, kind, rows


def floor_loss(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The floor: cross-entropy of scaled cosines between the embeddings and the class weights."""
    return F.cross_entropy(FLOOR_SCALE * F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1)), labels)


def floor_step(device: torch.device, rows: int = NUM_CLASSES) -> Step:
    """A function timing one forward+backward of the floor with *rows* proxies (see the module docstring)."""
    torch.manual_seed(0)
    bound = 1.0 / math.sqrt(DIM)
    weight = nn.Parameter(torch.empty(rows, DIM, device=device).uniform_(-bound, bound))
    labels = torch.randint(0, NUM_CLASSES, (BATCH // 2,), device=device).repeat_interleave(2)
    base = torch.randn(BATCH, DIM, device=device)

    def step() -> float:
        x = base.clone().requires_grad_()
        return timed(device, [weight], lambda: floor_loss(x, weight, labels).backward())

    return step


def measure(floors: dict[int, Step], steps: dict[str, tuple[Step, int]], repeats: int) -> tuple[dict[int, float], dict[str, float]]:
    """Median ms of every floor and every step, each pair's chunks interleaved with chunks of its floor."""
    for step in (*floors.values(), *(step for step, _ in steps.values())):
        for _ in range(WARMUP):
            step()
    chunk = max(1, math.ceil(repeats / ROUNDS))
    floor_samples: dict[int, list[float]] = {rows: [] for rows in floors}
    samples: dict[str, list[float]] = {name: [] for name in steps}
    while any(len(s) < repeats for s in samples.values()):
        for name, (step, rows) in steps.items():
            n = min(chunk, repeats - len(samples[name]))
            floor_samples[rows] += [floors[rows]() for _ in range(n)]
            samples[name] += [step() for _ in range(n)]
    return ({rows: statistics.median(s) for rows, s in floor_samples.items() if s},
            {name: statistics.median(s) for name, s in samples.items()})


def report(device: torch.device, repeats: int) -> dict:
    """The measurements, ratios and pass/fail flags (the JSON output)."""
    steps, kinds, rows = {}, {}, {}
    for loss, miner, normalised in preset_pairs():
        name = f"{loss}+{miner}"
        step, kinds[name], rows[name] = pair_step(loss, miner, normalised, device)
        steps[name] = (step, rows[name] if kinds[name] == "proxy" else NUM_CLASSES)
    floors = {count: floor_step(device, count) for count in {NUM_CLASSES, *(r for _, r in steps.values())}}
    floor_ms, ms = measure(floors, steps, repeats)
    proxies = [name for name in steps if kinds[name] == "proxy"]
    ratios = {name: round(ms[name] / floor_ms[rows[name]], 3) for name in proxies}
    ms = {name: round(value, 3) for name, value in ms.items()}
    passed = {name: ratios[name] <= PROXY_MAX_RATIO if kinds[name] == "proxy" else ms[name] <= TUPLE_MAX_MS for name in steps}
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "floor_ms": round(floor_ms[NUM_CLASSES], 3),
        "floor_ms_by_rows": {str(count): round(value, 3) for count, value in sorted(floor_ms.items())},
        "ms": ms,
        "kind": kinds,
        "proxy_rows": {name: rows[name] for name in proxies},
        "ratio_to_floor": ratios,
        "ratio_to_100_row_floor": {name: round(ms[name] / floor_ms[NUM_CLASSES], 3) for name in proxies},
        "targets": {"proxy_max_ratio": PROXY_MAX_RATIO, "tuple_max_ms": TUPLE_MAX_MS},
        "pass": passed,
        "all_pass": all(passed.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = report(torch.device(args.device), max(1, args.repeats))
    if args.json:
        print(json.dumps(result))
        return
    print(f"device {result['device']}, {result['threads']} threads, median of {result['repeats']} steps")
    for rows, floor in result["floor_ms_by_rows"].items():
        print(f"{'floor ' + rows + ' rows':>28}: {floor:7.3f} ms  (cross-entropy of {FLOOR_SCALE:g}x cosines to {rows} proxies)")
    for pair, ms in result["ms"].items():
        verdict = "ok" if result["pass"][pair] else "ABOVE"
        if result["kind"][pair] == "proxy":
            ratio = result["ratio_to_floor"][pair]
            print(f"{pair:>28}: {ms:7.3f} ms  {ratio:4.2f}x the {result['proxy_rows'][pair]}-row floor  {verdict} "
                  f"(target {PROXY_MAX_RATIO}x)")
            continue
        peer = PEER_MS.get(pair)
        original = f"  original {peer} ms ({peer / ms:.0f}x)" if peer else ""
        print(f"{pair:>28}: {ms:7.3f} ms  {verdict} (target {TUPLE_MAX_MS:g} ms){original}")
    missed = [pair for pair, ok in result["pass"].items() if not ok]
    print("all targets met" if not missed else f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()

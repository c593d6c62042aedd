"""Median milliseconds per forward+backward of every loss+miner pair the presets use.

    uv run python bench/losses.py [--json] [--repeats 50] [--device cpu|cuda]

Batch 112 (56 classes x 2), dim 128, 100 training classes, L2-normalised embeddings
(un-normalised for npair/lifted/angular, as their presets), 2 CPU threads. Target:
every pair <= 2 ms on CPU. The original's loop-based code takes on a 2-core machine
15 ms (triplet+distance), 16 ms (margin+distance), 19 ms (multisimilarity), 38 ms
(lifted), 62 ms (npair) and 108 ms (angular+npair) per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tomllib

import torch
import torch.nn.functional as F

from engine import losses, miners
from engine.config.presets import bundled_presets_dir, resolve

PEER_MS = {"triplet+distance": 15, "margin+distance": 16, "multisimilarity+none": 19, "lifted+lifted": 38,
           "npair+npair": 62, "angular+npair": 108}


def preset_pairs() -> list[tuple[str, str, bool]]:
    """(loss, miner or 'none', normalised) for every method preset."""
    pairs = {}
    for path in sorted(bundled_presets_dir().glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        if "loss" not in raw:
            continue
        config = resolve([path.stem, "cub200"]).config
        miner = config.miner.name if losses.uses_miner(config.loss.name) else "none"
        pairs[(config.loss.name, miner)] = config.model.arch.endswith("normalize")
    return [(loss, miner, normalised) for (loss, miner), normalised in sorted(pairs.items())]


def time_pair(loss_name: str, miner_name: str, normalised: bool, device: torch.device, repeats: int) -> float:
    torch.manual_seed(0)
    config = resolve(["cub200"], [f"loss.name='{loss_name}'", f"miner.name='{'distance' if miner_name == 'none' else miner_name}'"]).config
    miner = miners.create(miner_name) if miner_name != "none" else None
    loss_cls = losses.LOSSES.get(loss_name)
    loss = loss_cls.from_config(config, 100, miner).to(device)
    labels = torch.randint(0, 100, (56,), device=device).repeat_interleave(2)
    base = torch.randn(112, 128, device=device)
    samples = []
    for i in range(repeats + 5):
        x = base.clone().requires_grad_()
        embeddings = F.normalize(x, dim=1) if normalised else x
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        value = loss(embeddings, labels)
        value.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:  # warm-up
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device(args.device)
    results = {f"{loss}+{miner}": round(time_pair(loss, miner, n, device, args.repeats), 3) for loss, miner, n in preset_pairs()}
    if args.json:
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "ms": results}))
        return
    print(f"device {device}, {torch.get_num_threads()} threads, median of {args.repeats} steps")
    for pair, ms in results.items():
        peer = PEER_MS.get(pair)
        ratio = f"  original {peer} ms ({peer / ms:.0f}x)" if peer else ""
        verdict = "ok" if device.type != "cpu" or ms <= 2.0 else "ABOVE 2 ms"
        print(f"{pair:>28}: {ms:7.3f} ms  {verdict}{ratio}")


if __name__ == "__main__":
    main()

"""Batch samplers: composition, seeding and resume, and that the storage samplers really use their memory."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.spatial.distance import pdist

from engine import samplers
from engine.config.schema import Config
from engine.samplers import SAMPLERS

N_CLUSTERS, CLASSES_PER_CLUSTER, PER_CLASS, DIM = 10, 4, 15, 8
LABELS = np.repeat(np.arange(N_CLUSTERS * CLASSES_PER_CLUSTER), PER_CLASS)  # 600 samples, 40 classes
CLUSTER = LABELS // CLASSES_PER_CLUSTER
N = len(LABELS)
BS, SPC, BIGBS = 20, 2, 200
MEMORY_SAMPLERS = ["greedy_coreset", "d2_coreset", "disthist_batchmatch", "fid_batchmatch"]
ALL = ["class_random", "random", "full_random", *MEMORY_SAMPLERS]
STRUCTURED = ["class_random", *MEMORY_SAMPLERS]


def clustered_memory(seed: int = 0, dim: int = DIM, spread: float = 20.0) -> np.ndarray:
    """Well separated clusters (one per 4 classes), unit noise inside each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, dim)) * spread
    return (centres[CLUSTER] + rng.standard_normal((N, dim))).astype(np.float32)


def make(name: str, seed: int = 3, memory: np.ndarray | None = None, **params):
    if name in MEMORY_SAMPLERS:
        params.setdefault("batchmatch_bigbs", BIGBS)
    sampler = samplers.create(name, LABELS, batch_size=BS, samples_per_class=SPC, seed=seed, **params)
    if sampler.needs_memory:
        sampler.init_memory(torch.from_numpy(clustered_memory() if memory is None else memory))
    return sampler


def epoch(sampler, e: int, start_batch: int = 0) -> list[list[int]]:
    sampler.set_epoch(e, start_batch=start_batch)
    return list(sampler)


# ------------------------------------------------------------------ composition, seeding, resume


def test_registry_names_and_alias():
    assert set(ALL) <= set(samplers.list_samplers())
    assert SAMPLERS.get("full_random") is SAMPLERS.get("random")
    assert [samplers.needs_memory(n) for n in ALL] == [False, False, False, True, True, True, True]


@pytest.mark.parametrize("name", ALL)
def test_batch_composition(name):
    sampler = make(name)
    batches = epoch(sampler, 1)
    assert len(batches) == len(sampler) == N // BS
    for batch in batches:
        assert len(batch) == BS
        assert all(isinstance(i, int) and 0 <= i < N for i in batch)
        if name in STRUCTURED:  # runs of samples_per_class samples of one class
            runs = LABELS[batch].reshape(-1, SPC)
            assert (runs == runs[:, :1]).all()
    if name.endswith("coreset"):  # the partners are other samples of the anchor's class
        assert all(len(set(b[i:i + SPC])) == SPC for b in batches for i in range(0, BS, SPC))


@pytest.mark.parametrize("name", ALL)
def test_determinism_epochs_and_seeds(name):
    first = epoch(make(name, seed=3), 1)
    assert epoch(make(name, seed=3), 1) == first
    sampler = make(name, seed=3)
    assert epoch(sampler, 2) != first
    assert epoch(sampler, 1) == first  # set_epoch goes back
    assert epoch(make(name, seed=4), 1) != first


@pytest.mark.parametrize("name", ALL)
def test_start_batch_gives_the_tail(name):
    full = epoch(make(name), 5)
    sampler = make(name)
    tail = epoch(sampler, 5, start_batch=7)
    assert len(sampler) == N // BS - 7
    assert tail == full[7:]
    assert epoch(sampler, 5, start_batch=N // BS) == []
    with pytest.raises(ValueError):
        sampler.set_epoch(5, start_batch=N // BS + 1)


@pytest.mark.parametrize("name", ["random", "full_random"])
def test_random_sampler_always_has_a_positive_pair(name):
    labels = np.repeat(np.arange(400), 2)  # 400 classes: 19 uniform draws repeat a class in ~35% of batches
    sampler = samplers.create(name, labels, batch_size=BS, samples_per_class=SPC, seed=0)
    by_chance = 0
    for e in range(5):
        for batch in epoch(sampler, e):
            assert len(batch) == BS
            assert len(set(labels[batch])) < BS  # some class twice
            last = batch[-1]  # a partner: another sample of an earlier sample's class
            assert any(labels[j] == labels[last] and j != last for j in batch[:-1])
            by_chance += len(set(labels[batch[:-1]])) < BS - 1
    assert by_chance < 0.6 * 5 * len(sampler)  # the pair comes from the last sample, not from luck


def test_errors_for_bad_sizes():
    with pytest.raises(ValueError, match="not a multiple"):
        samplers.create("random", LABELS, batch_size=10, samples_per_class=3)
    with pytest.raises(ValueError, match="batchmatch_bigbs"):
        samplers.create("greedy_coreset", LABELS, batch_size=40, samples_per_class=2, batchmatch_bigbs=8)
    with pytest.raises(ValueError, match="batchmatch_bigbs"):
        samplers.create("fid_batchmatch", LABELS, batch_size=40, samples_per_class=2, batchmatch_bigbs=20)
    with pytest.raises(RuntimeError, match="init_memory"):
        list(samplers.create("d2_coreset", LABELS, batch_size=BS, samples_per_class=SPC, batchmatch_bigbs=BIGBS))
    with pytest.raises(ValueError, match="600 training samples"):
        samplers.create("d2_coreset", LABELS, batch_size=BS, samples_per_class=SPC).init_memory(torch.zeros(5, 3))


# ------------------------------------------------------------------ the storage samplers use their memory


def covers_all_clusters(batch: list[int]) -> bool:
    return len(set(CLUSTER[batch[::SPC]])) == N_CLUSTERS


@pytest.mark.parametrize("softened", [False, True])
def test_greedy_coreset_covers_the_clusters(softened):
    batches = [b for e in range(3) for b in epoch(make("greedy_coreset", gc_softened=softened), e)]
    coreset = np.mean([covers_all_clusters(b) for b in batches])
    # Random baseline: 10 anchors drawn uniformly from random 200-subsets, as the sampler's big batch.
    rng = np.random.default_rng(0)
    baseline = np.mean([covers_all_clusters(list(np.repeat(rng.choice(rng.choice(N, BIGBS, replace=False), 10, replace=False), SPC)))
                        for _ in range(2000)])
    assert baseline < 0.01  # 10!/10^10 = 0.00036 with equal clusters
    assert coreset == 1.0


def anchor_spread(batches) -> float:
    memory = clustered_memory(dim=2)
    return float(np.mean([pdist(memory[b[::SPC]]).mean() for b in batches]))


def test_d2_coreset_spread_follows_lambda():
    """p ∝ N(x; μ, Σ) · (Σ_s ‖x − s‖²)^λ: λ = 0 is density sampling (tighter than random), a large λ
    pushes the picks apart (wider than random); the spread grows with λ."""
    memory = clustered_memory(dim=2)
    rng = np.random.default_rng(1)
    random_spread = float(np.mean([pdist(memory[rng.choice(N, BS // SPC, replace=False)]).mean() for _ in range(1000)]))
    spreads = {lam: anchor_spread([b for e in range(3) for b in epoch(make("d2_coreset", memory=memory, d2_coreset_lambda=lam), e)])
               for lam in (0.0, 1.0, 4.0, 8.0)}
    assert spreads[0.0] < 0.8 * random_spread
    assert spreads[8.0] > 1.3 * random_spread
    assert spreads[0.0] < spreads[1.0] < spreads[4.0] < spreads[8.0]


def reference_disthist_cost(big: np.ndarray, cand: np.ndarray) -> float:
    big_d, cand_d = pdist(big), pdist(cand)
    edges = np.linspace(big_d.min(), big_d.max(), 51)
    h_big = np.histogram(big_d, edges)[0] / len(big_d)
    h_cand = np.histogram(cand_d, edges)[0] / len(cand_d)
    w1 = np.abs(np.cumsum(h_big - h_cand)[:-1]).sum() * (edges[1] - edges[0])  # W1 of distributions on the bin centres
    return float(np.linalg.norm(big.mean(0) - cand.mean(0)) + np.linalg.norm(big.std(0) - cand.std(0)) + 75 * w1)


def reference_fid_cost(big: np.ndarray, cand: np.ndarray) -> float:
    c1, c2 = np.cov(big, rowvar=False), np.cov(cand, rowvar=False)
    root = sqrtm(c1 @ c2)
    return float(((big.mean(0) - cand.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(root)))


@pytest.mark.parametrize("name,reference", [("disthist_batchmatch", reference_disthist_cost), ("fid_batchmatch", reference_fid_cost)])
def test_batchmatch_picks_the_lowest_cost_candidate(name, reference):
    memory = clustered_memory()
    sampler = make(name, memory=memory, batchmatch_ncomps=6)
    batches = epoch(sampler, 2)
    picked_first = 0
    for index in range(0, len(batches), 3):
        big, candidates, costs = sampler.candidate_costs(2, index)
        assert len(big) == BIGBS and len(candidates) == 6
        for cand in candidates:
            assert set(cand) <= set(big) and len(cand) == BS
        direct = [reference(memory[big].astype(np.float64), memory[c].astype(np.float64)) for c in candidates]
        np.testing.assert_allclose(costs, direct, rtol=1e-6, atol=1e-6)
        assert batches[index] == candidates[int(np.argmin(direct))]
        picked_first += int(np.argmin(direct)) == 0
    assert picked_first < len(range(0, len(batches), 3))  # the choice is not always the first candidate


@pytest.mark.parametrize("name", MEMORY_SAMPLERS)
def test_update_memory_changes_later_batches(name):
    sampler = make(name)
    before = epoch(sampler, 1)
    moved = np.flatnonzero(CLUSTER < 5)
    far = torch.from_numpy(clustered_memory(seed=9)[moved] * 3 + 100)
    sampler.update_memory(torch.from_numpy(moved), far)
    assert torch.equal(sampler.memory[moved], far)
    assert epoch(sampler, 1) != before

    frozen = make(name, storage_no_update=True)
    frozen.update_memory(torch.from_numpy(moved), far)
    assert epoch(frozen, 1) == before


def test_memory_momentum_projection_and_duplicates():
    memory = clustered_memory()
    sampler = make("greedy_coreset", memory=memory, mb_mom=0.75)
    new = torch.ones(3, DIM)
    sampler.update_memory(torch.tensor([4, 9, 4]), new * torch.tensor([[1.0], [2.0], [5.0]]))
    np.testing.assert_allclose(sampler.memory[4].numpy(), 0.75 * memory[4] + 0.25, rtol=1e-6)  # first occurrence of 4
    np.testing.assert_allclose(sampler.memory[9].numpy(), 0.75 * memory[9] + 0.5, rtol=1e-6)

    projected = make("d2_coreset", memory=memory, lowproj_dim=3)
    assert projected.memory.shape == (N, 3)
    assert torch.equal(make("d2_coreset", memory=memory, lowproj_dim=3).memory, projected.memory)
    assert len(epoch(projected, 0)) == N // BS


@pytest.mark.parametrize("name", MEMORY_SAMPLERS)
def test_state_dict_resume_is_exact_with_prefetch_and_updates(name):
    """A DataLoader with workers asks for batches ahead of the training step; a resume from
    state_dict (memory + generated batches) continues the interrupted sequence exactly."""
    prefetch, stop_after = 3, 8

    def run(sampler, start_batch, stop_at=None):
        sampler.set_epoch(4, start_batch=start_batch)
        it = iter(sampler)
        queue = [b for _, b in zip(range(prefetch), it)]
        done, state = [], None
        while queue:
            batch = queue.pop(0)
            queue += [b for _, b in zip(range(1), it)]  # the loader asks for the next index before the step
            done.append(batch)
            step = start_batch + len(done)
            rows = torch.from_numpy(clustered_memory(seed=100 + step)[batch])
            sampler.update_memory(torch.tensor(batch), rows)
            if stop_at is not None and step == stop_at:
                state = copy.deepcopy(sampler.state_dict())
        return done, state

    full, state = run(make(name), 0, stop_at=stop_after)
    resumed = make(name)
    resumed.load_state_dict(state)
    tail, _ = run(resumed, stop_after)
    assert tail == full[stop_after:]
    assert len(state["batches"]) == stop_after + prefetch  # the prefetched ones were recorded


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name", ALL)
def test_from_config(name):
    config = Config.model_validate({
        "run": {"seed": 11},
        "sampler": {"name": name, "batch_size": BS, "samples_per_class": SPC, "batchmatch_bigbs": BIGBS,
                    "batchmatch_ncomps": 4, "gc_softened": True, "d2_coreset_lambda": 2.5, "lowproj_dim": 4, "mb_mom": 0.5},
    })
    sampler = samplers.from_config(config, LABELS)
    assert isinstance(sampler, SAMPLERS.get(name))
    assert (sampler.seed, sampler.batch_size, sampler.samples_per_class) == (11, BS, SPC)
    if name in MEMORY_SAMPLERS:
        assert (sampler.bigbs, sampler.lowproj_dim, sampler.mb_mom) == (BIGBS, 4, 0.5)
    extra = {"greedy_coreset": ("gc_softened", True), "d2_coreset": ("lam", 2.5),
             "disthist_batchmatch": ("ncomps", 4), "fid_batchmatch": ("ncomps", 4)}
    if name in extra:
        assert getattr(sampler, extra[name][0]) == extra[name][1]
    sampler.init_memory(torch.from_numpy(clustered_memory()))  # a no-op for memoryless samplers
    assert len(epoch(sampler, 1)) == N // BS

"""Cross-batch memory (loss.xbm, Wang et al. 2020): FIFO semantics against a deque, the memory term against
hand-built losses over cat(batch, memory) and against pytorch-metric-learning's CrossBatchMemory, the config
refusal for losses it cannot feed, checkpoints and exact resume, and the DDP path (gathered batches)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import engine_cli
from pytorch_metric_learning import losses as pml

from engine import catalog, distributed, losses, miners, trainer
from engine.config.presets import resolve
from engine.config.schema import Config
from engine.losses.xbm import BatchAnchorMiner, CrossBatchMemory
from engine.rundir import RunDir

DIM = 5


def make(name: str = "supcon", *, size: int = 10, start_iteration: int = 0, weight: float = 0.7, miner=None, **params):
    loss = losses.create(name, num_classes=6, embed_dim=DIM, miner=miner, **params)
    return CrossBatchMemory(loss, size=size, start_iteration=start_iteration, weight=weight).double()


def batches(count: int, size: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        labels = torch.randint(0, 4, (size,), generator=generator)
        yield torch.randn(size, DIM, generator=generator, dtype=torch.float64), labels


# ----------------------------------------------------------------------------- the FIFO


def test_fifo_matches_a_deque_with_maxlen():
    memory = make(size=7)
    reference: deque[tuple[list[float], int]] = deque(maxlen=7)
    generator = torch.Generator().manual_seed(3)
    for step, count in enumerate([3, 2, 4, 1, 9, 7, 5, 2]):  # fills, wraps, and one batch larger than the memory
        x = torch.randn(count, DIM, generator=generator, dtype=torch.float64)
        labels = torch.arange(count) + 10 * step
        memory.enqueue(x, labels)
        reference.extend(zip(x.tolist(), labels.tolist(), strict=True))
        stored, stored_labels = memory.contents()
        assert stored.tolist() == [row for row, _ in reference] and stored_labels.tolist() == [y for _, y in reference]
        assert int(memory.filled) == len(reference)
        assert int(memory.pointer) == sum([3, 2, 4, 1, 9, 7, 5, 2][: step + 1]) % 7


def test_memory_starts_at_the_start_iteration_and_enqueues_detached_batches():
    memory = make(start_iteration=2, weight=0.5)
    inner = memory.loss
    for step, (x, labels) in enumerate(batches(4)):
        x = x.requires_grad_()
        before, before_labels = memory.contents()
        value = memory(x, labels)
        plain = inner(x, labels)
        if step < 2:
            assert value.item() == plain.item() and int(memory.filled) == 0
            continue
        references = torch.cat([x, before])
        expected = plain + 0.5 * inner.compute_against(x, labels, references, torch.cat([labels, before_labels]))
        assert value.item() == pytest.approx(expected.item(), rel=1e-12)
        assert int(memory.filled) == min(6 * (step - 1), 10) and not memory.memory_embeddings.requires_grad
    assert int(memory.iteration) == 4


# ----------------------------------------------------------------------------- the memory term


def supcon_against_reference(x, labels, refs, ref_labels, temperature):
    """SupCon with anchors from the batch and positives/negatives from refs (refs[:B] is the batch)."""
    def cos(a, b):
        return a @ b / (a.norm() * b.norm())

    terms = []
    for i in range(len(x)):
        others = [j for j in range(len(refs)) if j != i]
        positives = [j for j in others if ref_labels[j] == labels[i]]
        if positives:
            log_denominator = torch.log(sum(torch.exp(cos(x[i], refs[a]) / temperature) for a in others))
            terms.append(-sum(cos(x[i], refs[p]) / temperature - log_denominator for p in positives) / len(positives))
    return sum(terms) / len(terms)


def test_pair_loss_memory_term_matches_a_loop_over_batch_and_memory():
    memory = make("supcon", size=9, weight=1.0, temperature=0.3)
    steps = list(batches(3, seed=1))
    for x, labels in steps[:2]:
        memory(x, labels)
    stored, stored_labels = memory.contents()
    x, labels = steps[2]
    x = x.clone().requires_grad_()
    value = memory(x, labels)
    refs, ref_labels = torch.cat([x, stored]), torch.cat([labels, stored_labels])
    expected = supcon_against_reference(x, labels, x, labels, 0.3) + supcon_against_reference(x, labels, refs, ref_labels, 0.3)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    (grad,) = torch.autograd.grad(value, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_tuple_loss_memory_term_is_the_loss_over_the_concatenated_reference_set():
    """lifted + lifted miner (deterministic): the memory term is the lifted loss on cat(batch, memory) with the
    anchors restricted to the batch, written out here as loops over the reference set."""
    memory = make("lifted", size=8, weight=0.4, miner=miners.create("lifted"), neg_margin=0.8, l2=0.01)
    steps = list(batches(3, seed=2))
    for x, labels in steps[:2]:
        memory(x, labels)
    stored, stored_labels = memory.contents()
    x, labels = steps[2]
    x = x.clone().requires_grad_()
    value = memory(x, labels)

    def lifted(anchors_from, refs, ref_labels):
        terms = []
        for a in range(anchors_from):
            pos = [torch.exp((refs[a] - refs[p]).norm()) for p in range(len(refs)) if p != a and ref_labels[p] == ref_labels[a]]
            neg = [torch.exp(0.8 - (refs[a] - refs[n]).norm()) for n in range(len(refs)) if ref_labels[n] != ref_labels[a]]
            if pos and neg:
                terms.append(torch.relu(torch.log(sum(pos)) + torch.log(sum(neg))))
        return sum(terms) / len(terms) + 0.01 * refs.norm(dim=1).mean()

    refs, ref_labels = torch.cat([x, stored]), torch.cat([labels, stored_labels])
    expected = lifted(len(x), x, labels) + 0.4 * lifted(len(x), refs, ref_labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    (grad,) = torch.autograd.grad(value, x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_a_random_miner_sees_the_reference_set_and_keeps_batch_anchors():
    memory = make("triplet", size=12, weight=1.0, miner=miners.create("random"), margin=0.3)
    steps = list(batches(3, seed=4))
    for x, labels in steps[:2]:
        memory(x, labels)
    stored, stored_labels = memory.contents()
    x, labels = steps[2]
    refs, ref_labels = torch.cat([x, stored]), torch.cat([labels, stored_labels])
    torch.manual_seed(9)
    value = memory(x, labels)
    torch.manual_seed(9)
    plain = miners.create("random")(x, labels)
    mined = miners.create("random")(refs, ref_labels)
    keep = mined.anchors < len(x)
    assert keep.any() and not keep.all()  # the miner ran on the reference set; memory anchors were dropped

    def triplet(e, t):
        return torch.relu((e[t[0]] - e[t[1]]).pow(2).sum(1) - (e[t[0]] - e[t[2]]).pow(2).sum(1) + 0.3).mean()

    expected = triplet(x, (plain.anchors, plain.positives, plain.negatives)) + triplet(
        refs, (mined.anchors[keep], mined.positives[keep], mined.negatives[keep]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_batch_anchor_miner_filters_anchor_sets_and_keeps_the_output_kind():
    restricted = BatchAnchorMiner(miners.create("lifted"), 3)
    sets = restricted(torch.randn(7, DIM), torch.tensor([0, 1, 0, 1, 0, 2, 2]))
    assert restricted.OUTPUT == "lifted" and sets.anchors.tolist() == [0, 1, 2] and sets.positives.shape == (3, 7)


@pytest.mark.parametrize("name, theirs", [("supcon", pml.SupConLoss(temperature=0.2)),
                                          ("ntxent", pml.NTXentLoss(temperature=0.2))])
def test_memory_term_matches_pytorch_metric_learning_cross_batch_memory(name, theirs):
    """PML's memory already holds the current batch (its self-pairs removed); ours is cat(batch, earlier memory).
    With a memory larger than everything enqueued, both are the same set, so the values agree."""
    ours = make(name, size=64, weight=1.0, temperature=0.2)
    reference = pml.CrossBatchMemory(theirs, embedding_size=DIM, memory_size=64).double()
    for x, labels in batches(4, seed=6):
        total = ours(x, labels)
        term = total - ours.loss(x, labels)
        assert term.item() == pytest.approx(reference(x, labels).item(), rel=1e-5)


# ----------------------------------------------------------------------------- config


def test_config_refuses_a_loss_without_pairs_in_one_line():
    with pytest.raises(ValueError, match=r"loss\.xbm cannot feed loss\.name='proxy_anchor'.*allowed losses: angular, "):
        Config(loss={"name": "proxy_anchor", "xbm": {"enabled": True}})
    assert Config(loss={"name": "proxy_anchor", "xbm": {"enabled": False}}).loss.name == "proxy_anchor"
    allowed = catalog.memory_losses()
    assert {"triplet", "margin", "multisimilarity", "supcon", "ntxent", "circle", "fastap", "smoothap"} <= set(allowed)
    assert not {"proxynca", "proxy_anchor", "softmax", "arcface", "cosface", "subcenter_arcface", "softtriplet",
                "histogram"} & set(allowed)
    with pytest.raises(ValueError, match="loss.xbm cannot feed loss.name='softmax'"):
        CrossBatchMemory(losses.create("softmax", num_classes=3, embed_dim=4))

    result = engine_cli("--preset", "softmax", "--preset", "cub200", "--set", "loss.xbm.enabled=true", "--print-config")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "loss.xbm cannot feed loss.name='softmax'" in line and "allowed losses: angular, circle, contrastive" in line


def test_from_config_wraps_and_keeps_the_loss_parameters_in_their_groups():
    config = resolve(["multisimilarity-xbm", "cub200"], ["loss.xbm.size=50", "loss.name='margin'"]).config
    built = losses.from_config(config, num_classes=4)
    assert isinstance(built, CrossBatchMemory) and built.loss.name == "margin" and built.size == 50
    assert (built.start_iteration, built.weight) == (1000, 1.0)
    assert built.param_groups(1e-5)[0]["name"] == "loss.margin.beta" and built.beta is built.loss.beta
    assert {"memory_embeddings", "memory_labels", "pointer", "filled", "iteration", "loss.beta"} <= set(built.state_dict())


# ----------------------------------------------------------------------------- checkpoints and resume


def _comparable(run_dir: Path) -> list:
    return [(r["kind"], r["epoch"], r["split"], {k: v for k, v in r["metrics"].items() if k != "epoch_time_s"})
            for r in RunDir(run_dir).read_metrics()]


@pytest.mark.parametrize("loss, miner", [("multisimilarity", "distance"), ("triplet", "random")])
def test_resume_with_xbm_continues_exactly(tmp_path, monkeypatch, loss, miner):
    config = resolve(["quickstart", "digits"], [
        f"loss.name='{loss}'", f"miner.name='{miner}'", "loss.xbm.enabled=true", "loss.xbm.size=100",
        "loss.xbm.start_iteration=3", "optim.epochs=2", "sampler.batch_size=64", "sampler.samples_per_class=4",
        "data.image_size=8", "eval.metrics=['e_recall@1', 'nmi']", "eval.at_start=false", "eval.raw_pixel_baseline=false",
    ]).config
    assert trainer.run(config, tmp_path / "straight", show_progress=False).state == "finished"
    calls = {"n": 0}

    def stop_after(self) -> bool:
        calls["n"] += 1
        return calls["n"] >= 19  # 14 batches per epoch: inside epoch 2, with a full, wrapped memory

    with monkeypatch.context() as patch:
        patch.setattr(trainer.StopRequested, "__bool__", stop_after)
        assert trainer.run(config, tmp_path / "resumed", show_progress=False).state == "stopped"
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)["loss"]
    assert int(state["iteration"]) == 19 and int(state["filled"]) == 100 and int(state["pointer"]) == (16 * 64) % 100
    assert state["memory_embeddings"].shape == (100, 64) and state["memory_embeddings"].abs().sum() > 0
    assert trainer.run(config, tmp_path / "resumed", show_progress=False, resume=True).state == "finished"
    assert _comparable(tmp_path / "resumed") == _comparable(tmp_path / "straight")
    final = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)["loss"]
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)["loss"]
    assert torch.equal(final["memory_embeddings"], resumed["memory_embeddings"])
    assert torch.equal(final["memory_labels"], resumed["memory_labels"])


# ----------------------------------------------------------------------------- DDP


def _ddp_rank(rank: int, world_size: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    context = distributed.Context(rank, world_size, rank)
    memory = make(size=20, weight=0.5)
    values = []
    for x, labels in batches(5, size=8, seed=7):
        part = slice(rank * 4, (rank + 1) * 4)  # this rank's half of the global batch, as RankSlice gives it
        local = x[part].clone().requires_grad_()
        gathered = distributed.gather_with_grad(local, context)  # what the trainer hands the loss
        values.append(memory(gathered, distributed.gather_with_grad(labels[part], context)).item())
    stored, stored_labels = memory.contents()
    torch.save({"values": values, "memory": stored, "labels": stored_labels}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ddp_ranks_enqueue_the_gathered_global_batch(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    single = make(size=20, weight=0.5)
    values = [single(x, labels).item() for x, labels in batches(5, size=8, seed=7)]
    stored, stored_labels = single.contents()
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert result["values"] == pytest.approx(values, rel=1e-12)
        assert torch.equal(result["memory"], stored) and torch.equal(result["labels"], stored_labels)


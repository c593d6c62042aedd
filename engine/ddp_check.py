"""One training step under torchrun compared with the same step in one process: the gathered batch, the global loss
and the summed gradients must be the single process's (what tests/test_engine_run.py checks for gloo through the whole
trainer). ``dmltui doctor --bench`` runs it on NCCL across the machine's GPUs (gloo on a CPU-only machine):

    python -m torch.distributed.run --standalone --nproc-per-node=2 -m engine.ddp_check OUT.json

Every rank builds the same seeded model and global batch (whole classes per rank, as the trainer's rank slices), keeps
its slice, gathers the embeddings (engine.distributed.gather_with_grad) and backpropagates the global loss through DDP
with the trainer's SUM hook. Rank 0 then repeats the step on the whole batch alone and writes what it compared to OUT.
The comparison runs in float32 without TF32 and with deterministic kernels: only the order of additions differs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from engine import distributed, losses
from engine.config.schema import Config
from engine.models import create_model

CLASSES, PER_CLASS, IMAGE_SIZE, EMBED_DIM = 16, 4, 32, 64
CONFIG = {"model": {"arch": "smallcnn_frozen_normalize", "embed_dim": EMBED_DIM, "pretrained": False},
          "loss": {"name": "multisimilarity"}, "sampler": {"batch_size": CLASSES * PER_CLASS, "samples_per_class": PER_CLASS}}


def one_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, context: distributed.Context,
             criterion: torch.nn.Module) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """(global loss, gathered embeddings, gradients) of one forward + backward."""
    embeddings = model(images)
    gathered = distributed.gather_with_grad(embeddings, context)
    loss = criterion(gathered, distributed.gather_with_grad(labels, context))
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    return float(loss.detach()), gathered.detach(), grads


def main(out: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    context = distributed.init()
    device = torch.device("cuda", context.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    config = Config.model_validate(CONFIG)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(CLASSES * PER_CLASS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    per_rank = images.shape[0] // context.world_size
    mine = slice(context.rank * per_rank, (context.rank + 1) * per_rank)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model(config.model.arch, embed_dim=EMBED_DIM, pretrained=False).to(device).train()

    criterion = losses.from_config(config, CLASSES).to(device)
    started = time.perf_counter()
    model = fresh_model()
    wrapped = model
    if context.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped.register_comm_hook(None, distributed.sum_gradients_hook)
    loss, gathered, grads = one_step(wrapped, images[mine].to(device), labels[mine].to(device), context, criterion)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step_s = time.perf_counter() - started
    if context.is_main:
        ref_loss, ref_embeddings, ref_grads = one_step(fresh_model(), images.to(device), labels.to(device),
                                                       distributed.Context(), criterion)
        relative = [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(grads, ref_grads, strict=True)]
        report = {
            "backend": torch.distributed.get_backend() if context.enabled else "none",
            "ranks": context.world_size,
            "device": device.type,
            "step_s": round(step_s, 4),
            "loss": loss,
            "reference_loss": ref_loss,
            "loss_rel_diff": abs(loss - ref_loss) / max(abs(ref_loss), 1e-30),
            "embeddings_max_abs_diff": float((gathered - ref_embeddings).abs().max()),
            "grads": len(grads),
            "grads_max_rel_diff": max(relative),
        }
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report))
        os.replace(tmp, out)
    distributed.barrier(context)
    distributed.shutdown(context)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

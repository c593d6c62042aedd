"""`dmltui doctor --bench`: the self-test's parts on this CPU (the GPU parts skipped by name, with the reason), its
marks against floors and targets, NVML through the stand-in of tests/fake_nvml, and the whole command through its
real entry point (slow: about a minute)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from conftest import FAKE_NVML, dmltui

from dmltui import doctor_bench
from dmltui.doctor_bench import Report, Sizes

CPU = torch.device("cpu")
SMALL = Sizes(batch=4, warmup=1, steps=1, images=40, workers=0, eval_n=3000)


@pytest.fixture
def fake_nvml(monkeypatch, isolated_env):
    """The stand-in pynvml imported in this process, reporting *count* GPUs."""

    def pretend(count: int):
        monkeypatch.setenv("FAKE_NVML_GPUS", str(count))
        monkeypatch.syspath_prepend(str(FAKE_NVML))
        monkeypatch.delitem(sys.modules, "pynvml", raising=False)
        import pynvml

        assert pynvml.__file__.startswith(str(FAKE_NVML))
        return pynvml

    yield pretend
    sys.modules.pop("pynvml", None)  # the next import finds the real one again


def test_every_gpu_is_listed_with_versions_and_a_held_lease_is_marked_short(fake_nvml):
    from dmltui import gpus

    fake_nvml(2)
    held = gpus.try_lease(1)  # a run holds GPU 1
    try:
        report = Report()
        found = doctor_bench.gpu_part(report, torch)
    finally:
        os.close(held)
    assert [(g["index"], g["name"], g["memory_mb"], g["driver"], g["cuda_driver"], g["nvml"], g["lease"]) for g in found] == [
        (0, "Fake GPU", 80 * 1024, "550.54.15", "12.4", True, "usable"),
        (1, "Fake GPU", 80 * 1024, "550.54.15", "12.4", True, "held by a run"),
    ]
    assert gpus.try_lease(0) is not None  # the bench gave GPU 0's lease back
    assert {(s["part"], s["figure"]) for s in report.short} == {("gpus", "gpu1.lease"), ("gpus", "cuda")}
    cuda = next(s for s in report.short if s["figure"] == "cuda")
    assert cuda["why"].startswith("NVML sees 2 GPU(s) but torch cannot use CUDA")  # a CPU-only torch on a GPU box


def test_without_nvml_the_gpu_part_is_skipped_with_the_reason(fake_nvml):
    fake_nvml(0)
    report = Report()
    assert doctor_bench.gpu_part(report, torch) == []
    assert report.skipped == [{"part": "gpus", "reason": "NVML does not answer (NVML Shared Library Not Found): no "
                                                         "NVIDIA driver or GPU on this machine"}]
    assert report.short == []


def test_the_pipeline_is_compared_with_the_fastest_step_measured(tmp_path):
    report = Report()
    slow_step = doctor_bench.pipeline_part(report, CPU, SMALL, {"fp32_img_s": 0.001}, lambda _: None)
    assert slow_step["floor"] == "fp32_img_s" and slow_step["files_keep_up"] and slow_step["cache_keeps_up"]
    assert slow_step["images"] == SMALL.images and slow_step["files_img_s"] > 0 and slow_step["cached_img_s"] > 0
    assert report.short == []
    fast_step = doctor_bench.pipeline_part(report, CPU, SMALL, {"fp32_img_s": 1.0, "bf16_cl_img_s": 1e9},
                                           lambda _: None)
    assert fast_step["floor"] == "bf16_cl_img_s" and not fast_step["cache_keeps_up"]
    assert [(s["part"], s["figure"]) for s in report.short] == [("pipeline", "cached_img_s")]
    report = Report()
    doctor_bench.pipeline_part(report, CPU, SMALL, {}, lambda _: None)
    assert report.skipped == [{"part": "pipeline.keeps_up", "reason": "no train step was measured to compare with"}]


def test_the_eval_suite_is_compared_with_the_bare_gemm_of_its_knn():
    from engine import metrics, perf

    report = Report()
    [row] = doctor_bench.eval_part(report, CPU, SMALL, lambda _: None)
    assert row["backend"] == "torch" and row["device"] == "cpu" and row["n"] == SMALL.eval_n
    assert set(row["stages_s"]) == {"retrieval", "kmeans", "nmi", "f1"}
    assert row["seconds"] == pytest.approx(sum(row["stages_s"].values()), abs=0.01)
    assert row["retrieval_gemm_ratio"] == pytest.approx(row["stages_s"]["retrieval"] / row["gemm_floor_s"], rel=0.05)
    x, y = perf.sop_like(SMALL.eval_n)
    values, _ = metrics.compute_metrics(torch.from_numpy(x), y, ["e_recall@1"])
    assert row["e_recall@1"] == pytest.approx(values["e_recall@1"], abs=1e-4)  # the suite ran on the SOP-like set
    assert report.skipped[0]["part"] == "eval.gpu"
    marked = ("eval", "retrieval_gemm_ratio") in {(s["part"], s["figure"]) for s in report.short}
    assert marked == (row["retrieval_gemm_ratio"] > doctor_bench.RETRIEVAL_MAX_GEMM_RATIO)


def test_a_gpu_box_is_measured_at_the_issues_sizes_and_a_cpu_at_small_ones():
    gpu, cpu = doctor_bench.sizes_for(cuda=True), doctor_bench.sizes_for(cuda=False)
    assert (gpu.batch, gpu.warmup, gpu.steps, gpu.images, gpu.eval_n) == (112, 10, 30, 2000, 60_502)
    assert gpu.workers == min(os.cpu_count(), 16)
    assert cpu.eval_n < gpu.eval_n and cpu.batch < gpu.batch


def test_the_table_marks_short_skipped_and_failed_parts():
    report = {
        "machine": {"device_name": "CPU (2 cores)", "torch": "2.9", "cuda_build": None, "cudnn": None},
        "gpus": [], "train_step": {"fp32_img_s": 3.0}, "pipeline": {"files_img_s": 2.0, "cached_img_s": 5.0,
                                                                    "floor_img_s": 3.0},
        "eval": [], "ddp": {},
        "short": [{"part": "pipeline", "figure": "files_img_s", "why": "from JPEG files the workers cannot feed it"}],
        "skipped": [{"part": "ddp.nccl", "reason": "no CUDA GPU"}],
        "failed": [{"part": "eval", "error": "RuntimeError: out of memory"}],
    }
    rows = doctor_bench.table_rows(report)
    assert ("pipeline", "files_img_s", "2.0 (step: 3.0)", "SHORT") in rows
    assert ("pipeline", "cached_img_s", "5.0 (step: 3.0)", "ok") in rows
    assert ("pipeline", "files_img_s", "from JPEG files the workers cannot feed it", "SHORT") in rows
    assert ("ddp.nccl", "", "no CUDA GPU", "skipped") in rows
    assert ("eval", "", "RuntimeError: out of memory", "FAILED") in rows
    assert ("machine", "torch / CUDA / cuDNN", "2.9 / none / none", "ok") in rows


@pytest.mark.slow
def test_doctor_bench_runs_the_cpu_parts_and_names_the_gpu_parts_it_skipped(isolated_env):
    done = dmltui("doctor", "--bench", "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout is the object alone; progress went to stderr
    assert set(report) == {"checks", "machine", "gpus", "train_step", "pipeline", "eval", "ddp", "skipped", "short",
                           "failed", "seconds"}
    assert report["failed"] == [] and report["short"] == []
    assert report["machine"]["device"] == "cpu" and report["gpus"] == []
    assert {s["part"] for s in report["skipped"]} == {"gpus", "train_step.bf16_channels_last", "train_step.compile",
                                                      "eval.gpu", "ddp.nccl"}
    assert all(s["reason"] for s in report["skipped"])
    assert report["train_step"]["fp32_img_s"] > 0 and "bf16_cl_img_s" not in report["train_step"]
    assert report["pipeline"]["floor"] == "fp32_img_s" and report["pipeline"]["cache_keeps_up"] is True
    [suite] = report["eval"]
    assert suite["n"] == 15_000 and 0.5 < suite["e_recall@1"] <= 1
    ddp = report["ddp"]
    assert (ddp["backend"], ddp["ranks"], ddp["equal"]) == ("gloo", 2, True)
    assert ddp["grads_max_rel_diff"] <= doctor_bench.DDP_MAX_REL_DIFF and ddp["loss_rel_diff"] <= 1e-6
    assert "bench: ddp" in done.stderr
    human = dmltui("doctor", "--bench", timeout=600)
    assert human.returncode == 0 and "Traceback" not in human.stderr
    assert "skipped" in human.stdout and "0 short" in human.stdout and "0 failed" in human.stdout

"""A study whose fold runs train on the real one-node SLURM cluster (`.ci/slurm-up`): each trial's folds are one job
array, and the tuner on the 'login node' reads them back as `runs list` does."""

from __future__ import annotations

import json

import pytest
from conftest import dmltui
from slurm_cluster import SLURM_TESTS

from engine.rundir import RunDir

pytestmark = SLURM_TESTS


@pytest.mark.timeout(600)  # two minutes alone; the one-node cluster is shared with the other SLURM tests
def test_a_study_on_slurm_sends_each_trials_folds_as_one_job_array(slurm_home):  # noqa: F811
    result = dmltui("tune", "tiny", "--name", "onslurm", "--space", "optim.lr=loguniform(1e-4,1e-2)", "--trials", "2",
                    "--folds", "2", "--metric", "e_recall@1", "--pruner", "none", "--parallel", "2", "--poll", "0.5",
                    "--on", "slurm", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    for trial in summary["trials"]:
        runs = [json.loads(dmltui("runs", "show", run_id, "--json").stdout) for run_id in trial["runs"]]
        assert [r["state"] for r in runs] == ["finished", "finished"]
        jobs = {RunDir(r["run_dir"]).read_status()["slurm_job_id"].split("_")[0] for r in runs}
        # every trial's folds start together, one array (one sbatch call): a new trial waits for slots for all its folds
        assert len(jobs) == 1, (trial["number"], jobs)
        for record in runs:
            assert all(json.loads(line).get("split") != "test"
                       for line in open(f"{record['run_dir']}/metrics.jsonl") if line.strip())

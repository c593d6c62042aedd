"""The one-node SLURM cluster the slow tests submit to (`.ci/slurm-up` starts it): whether it is up, the settings that
bound how long its requeues take, and the user config that fits it. The tests that use it run on one pytest worker
(the xdist group "slurm"): its two CPUs are shared by their jobs, and a job waiting for another test's CPU would read as
a fault of the run under test."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _cluster_up() -> str | None:
    """None when a SLURM node accepts jobs; else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM here: run .ci/slurm-up (needs root and apt) to start a one-node cluster"
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True)
    if result.returncode != 0 or not any(state.strip().rstrip("*") in ("idle", "mixed", "allocated")
                                         for state in result.stdout.split()):
        return f"the SLURM cluster does not answer ({(result.stderr or result.stdout).strip()[:120]}): run .ci/slurm-up"
    return None


def slurm_timings() -> dict[str, int]:
    """Seconds from `scontrol show config` that bound how long requeues take, with Slurm's defaults where unset:
    cred_expire (AuthInfo; a requeued job's BeginTime is cred_expire + 1 s after its end), kill_wait (KillWait: a job
    still running at its limit is killed this long after SIGTERM) and scheduled (how soon an eligible job is looked at:
    sched_interval, or bf_interval under sched/backfill)."""
    lines = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    config = {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in lines) if sep}

    def option(key: str, name: str, default: int) -> int:  # "a=1,b=2" lists such as AuthInfo, SchedulerParameters
        found = dict(item.partition("=")[::2] for item in config.get(key, "").split(",") if "=" in item)
        return int(found[name]) if found.get(name, "").isdigit() else default

    scheduled = option("SchedulerParameters", "sched_interval", 60)
    if config.get("SchedulerType") == "sched/backfill":
        scheduled = min(scheduled, option("SchedulerParameters", "bf_interval", 30))
    kill_wait = config.get("KillWait", "30").split()[0]
    return {"cred_expire": option("AuthInfo", "cred_expire", 120), "kill_wait": int(kill_wait) if kill_wait.isdigit() else 30,
            "scheduled": scheduled}


# every module that submits to the cluster: slow, skipped with the reason when no cluster answers, on one worker
SLURM_TESTS = [pytest.mark.slow, pytest.mark.skipif(_cluster_up() is not None, reason=_cluster_up() or ""),
               pytest.mark.xdist_group("slurm")]

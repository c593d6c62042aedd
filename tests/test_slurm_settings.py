"""SLURM settings without a cluster: what a run keeps of its submission, and what a resume or rerun reads back."""

from __future__ import annotations

from dataclasses import asdict

from dmltui.executors.slurm import SlurmSettings


def test_settings_kept_in_the_run_dir_outlast_changes_to_the_config_file(isolated_env, tmp_path, monkeypatch):
    config = tmp_path / "settings.toml"
    config.write_text('[slurm]\npartition = "short"\ntime = 30\n')
    monkeypatch.setenv("DMLTUI_CONFIG", str(config))
    submitted = SlurmSettings.load(["time=7", 'sbatch=["--hold"]', "gpus_per_task=2"])
    status = {"executor": "slurm", "slurm_settings": asdict(submitted)}
    config.write_text('[slurm]\npartition = "long"\ntime = 600\n')  # the table changed since
    again = SlurmSettings.of_run(status)
    assert again == submitted and again.partition == "short" and again.time == 7 and again.sbatch == ["--hold"]
    assert SlurmSettings.of_run({"executor": "slurm"}).partition == "long"  # submitted before settings were kept

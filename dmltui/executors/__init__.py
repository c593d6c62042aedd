"""Where runs execute. ``local``: a detached launcher on this machine with its GPU leases (``dmltui.runs`` and
``dmltui.worker``). ``slurm``: a job array on a SLURM cluster through submitit (``dmltui.executors.slurm``).
Either way the run is ``python -m engine --run-dir DIR`` and its directory is the truth."""

PLACES = ("local", "slurm")

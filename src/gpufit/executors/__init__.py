"""Executors: where a planned campaign's jobs run.

- :func:`run`: the jobs that are missing or broken, in this process (``"local"``), on an
  embedded Dask cluster (``"dask"``) or on an existing scheduler (``"dask://HOST:PORT"``);
- :func:`write_submit_script`: ready-to-edit SLURM, HTCondor and PanDA scripts that run
  one job file per batch job (``gpufit campaign run-job``).

>>> from gpufit import campaign, executors
>>> campaign.plan(ws, "camp", mus=[0.5, 1, 2], ntoys=10_000, toys_per_job=2_000, seed=1)
>>> executors.run("camp", executor="dask")
>>> campaign.merge("camp")["observed"]
"""

from .runner import job_files, pending, run, visible_gpus
from .submit import SYSTEMS, write_submit_script

__all__ = ["run", "pending", "job_files", "visible_gpus", "write_submit_script", "SYSTEMS"]

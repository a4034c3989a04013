"""Toy campaigns: (mu points x toys) split into jobs that run anywhere and merge exactly.

>>> from gpufit import campaign
>>> campaign.plan(ws, "camp", mus=[0.5, 1, 2], ntoys=10_000, toys_per_job=2_000, seed=1)
>>> gpufit.executors.run("camp", executor="dask")  # or "local", "dask://HOST:PORT"
>>> campaign.merge("camp")["observed"]
"""

from ._files import BrokenResult, CampaignError
from .job import run_job
from .merge import merge
from .plan import plan

__all__ = ["plan", "run_job", "merge", "CampaignError", "BrokenResult"]

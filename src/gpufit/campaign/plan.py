"""``plan``: split (mu points x toys) into self-contained job files.

    DIR/campaign.json        settings, workspace digest, campaign id, gpufit version
    DIR/workspace.json       the (patched) workspace every job reads
    DIR/jobs/job-NNNN.json   one job: mu indices, toy range, seed, the settings again
    DIR/results/             filled by run-job: job-NNNN.npz (+ checkpoints while running)
    DIR/submit/              ready-to-edit SLURM / HTCondor / PanDA scripts (``submit=``)

A toy depends only on (workspace, seed, hypothesis, mu index, toy index), so any split
gives the same test statistics.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .._version import __version__
from ..infer.hypotest import check_poi
from ..infer.intervals import check_grid
from ..infer.test_statistics import normalize_test_stat
from ..infer.toys import check_toy_options
from ._files import CampaignError, atomic_write_bytes, atomic_write_json, read_json

CAMPAIGN_FORMAT = "gpufit-campaign/1"
JOB_FORMAT = "gpufit-job/1"


def job_name(index: int) -> str:
    return f"job-{index:04d}"


def plan(ws, out: str, mus, ntoys: int, toys_per_job: int, seed: int = 0, *, test_stat: str = "qtilde",
         toy_pars: str = "profiled", measurement: str | None = None, modifier_settings: dict | None = None,
         chunk_size: int | None = None, submit: str | None = None, gpu: bool = False,
         container: str | None = None) -> dict:
    """Write a campaign into ``out`` and return its ``campaign.json`` content.

    Args:
        ws: a :class:`gpufit.Workspace` (patches already applied).
        mus: POI values [M]; ntoys: toys per hypothesis and mu; toys_per_job: K.
        submit: also write a batch script: ``"slurm"``, ``"htcondor"`` or ``"panda"``.
        gpu: ask the batch system for one GPU per job.
        container: image for the submit scripts (default: the CPU image name).
    """

    mus = [float(m) for m in np.atleast_1d(np.asarray(mus, dtype=float))]
    if not mus:
        raise CampaignError("a campaign needs at least one mu point")
    check_toy_options(ntoys=ntoys, seed=seed, toy_pars=toy_pars, chunk_size=chunk_size)
    if isinstance(toys_per_job, bool) or not isinstance(toys_per_job, (int, np.integer)) or toys_per_job < 1:
        raise CampaignError(f"toys_per_job must be an integer >= 1, got {toys_per_job!r}")
    test_stat = normalize_test_stat(test_stat)
    model = ws.model(measurement=measurement, modifier_settings=modifier_settings)  # validates the setup
    poi_range = check_poi(model, mus=mus)  # the rules of hypotest and upper_limit
    if len(mus) > 1:
        check_grid(mus, poi_range)
    if os.path.exists(os.path.join(out, "campaign.json")):
        raise CampaignError(f"{out} already holds a campaign; plan into a new directory")
    settings = {
        "workspace": "workspace.json",
        "workspace_digest": ws.digest(),
        "measurement": model.measurement,
        "modifier_settings": model.modifier_settings,
        "poi_name": model.poi_name,
        "mus": mus,
        "ntoys": int(ntoys),
        "toys_per_job": int(toys_per_job),
        "seed": int(seed),
        "test_stat": test_stat,
        "toy_pars": toy_pars,
        "chunk_size": chunk_size,
    }
    campaign_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    jobs = planned_jobs(settings)
    campaign = {"format": CAMPAIGN_FORMAT, "campaign_id": campaign_id, "gpufit_version": __version__,
                "n_jobs": len(jobs), **settings}
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    atomic_write_bytes(os.path.join(out, "workspace.json"), ws.to_json().encode())
    for job in jobs:
        atomic_write_json(os.path.join(out, "jobs", job["job"] + ".json"), {
            "format": JOB_FORMAT, "campaign_id": campaign_id,
            **{k: v for k, v in settings.items() if k != "workspace"},
            "workspace": "../workspace.json", **job,
        })
    atomic_write_json(os.path.join(out, "campaign.json"), campaign)
    if submit:
        from .submit import write_submit_script

        campaign["submit_script"] = write_submit_script(out, submit, len(jobs), gpu=gpu, container=container)
    return campaign


def load_campaign(directory: str) -> dict:
    campaign = read_json(os.path.join(directory, "campaign.json"), "campaign file")
    if campaign.get("format") != CAMPAIGN_FORMAT:
        raise CampaignError(f"{directory}/campaign.json is not a {CAMPAIGN_FORMAT} file")
    return campaign


def planned_jobs(campaign: dict) -> list[dict]:
    """The jobs a campaign's settings imply (independent of the job files on disk):
    for each mu index, consecutive toy ranges of ``toys_per_job``."""
    jobs = []
    for i in range(len(campaign["mus"])):
        for start in range(0, campaign["ntoys"], campaign["toys_per_job"]):
            jobs.append({"job": job_name(len(jobs)), "mu_indices": [i], "toy_start": start,
                         "toy_stop": min(start + campaign["toys_per_job"], campaign["ntoys"])})
    return jobs

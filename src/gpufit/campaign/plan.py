"""``plan``: split (mu points x toys) into self-contained job files.

    DIR/campaign.json        settings, workspace digest, campaign id, gpufit version
    DIR/workspace.json       the (patched) workspace every job reads
    DIR/jobs/job-NNNN.json   one job: mu indices, toy range, seed, the settings again
    DIR/results/             filled by run-job: job-NNNN.npz (+ checkpoints while running)
    DIR/submit/              batch scripts, where ``gpufit.executors.write_submit_script`` wrote them

A toy depends only on (workspace, seed, hypothesis, mu index, toy index), so any split
gives the same test statistics.

A signal grid (``patchset=``) is (point x mu points x toys): DIR/workspace.json is the
background-only workspace, DIR/patches/point-NNNN.json each point's patch (checked
against the workspace when planned), and each job names its point; a point's toys use the seed :func:`point_seed` (seed, point index), so they equal
``gpufit.hypotest(..., seed=point_seed(seed, p))`` on that point. The points are laid
out in the union of their parameters and padded to one shape (``gpufit.model.union_layout``
and ``pad_shape``, kept in the plan: one per family, where points differ in what neither
reconciles), so every job runs the same compiled kernels.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyhf

from .._version import __version__
from ..infer.hypotest import check_poi
from ..infer.intervals import check_grid
from ..infer.test_statistics import normalize_test_stat
from ..infer.scan import select_patches
from ..infer.toy_pvalues import DEFAULT_MAX_FAILED
from ..infer.toys import check_toy_options
from ..model import families, in_union, pad_shape
from ..workspace import load_patchset
from ..workspace import read_json as read_spec
from ._files import CampaignError, atomic_write_bytes, atomic_write_json, read_json

CAMPAIGN_FORMAT = "gpufit-campaign/1"
JOB_FORMAT = "gpufit-job/1"


def job_name(index: int) -> str:
    return f"job-{index:04d}"


def point_seed(seed: int, point: int) -> int:
    """The toy seed of point ``point`` of a grid campaign with seed ``seed`` (a 32-bit
    integer drawn from both by NumPy's SeedSequence: distinct points, independent toys)."""
    return int(np.random.SeedSequence([int(seed), int(point)]).generate_state(1, np.uint32)[0])


def _grid(ws, patchset, patches, mus, seed, measurement, modifier_settings, workers) -> tuple[dict, dict, object]:
    """The points of a grid campaign (checked: each builds, each tests ``mus``), the
    patchset spec to write and the first point's model: ``({"labels", "points",
    "shapes", "layouts"}, spec, model)``."""
    spec = patchset if isinstance(patchset, dict) else read_spec(patchset)
    ps = load_patchset(spec)
    points, models = [], []
    for index, (patch, model, _) in enumerate(ws.signal_points(ps, select_patches(ps, patches), measurement=measurement,
                                                               workers=workers, modifier_settings=modifier_settings)):
        if isinstance(model, Exception):
            raise CampaignError(f"point {patch.name}: {model}")
        check_poi(model, mus=mus)
        models.append(model)
        points.append({"name": patch.name, "values": list(patch.values), "seed": point_seed(seed, index)})
    shapes, layouts = [], []
    for family, (indices, layout) in enumerate(families(models)):
        layouts.append(layout)
        shapes.append(pad_shape([in_union(models[i], layout).compiled_numpy for i in indices]))
        for i in indices:
            points[i]["family"] = family
    return {"labels": list(ps.labels), "points": points, "shapes": shapes, "layouts": layouts}, spec, models[0]


def plan(ws, out: str, mus, ntoys: int, toys_per_job: int, seed: int = 0, *, test_stat: str = "qtilde",
         toy_pars: str = "profiled", measurement: str | None = None, modifier_settings: dict | None = None,
         chunk_size: int | None = None, max_failed: float = DEFAULT_MAX_FAILED, patchset=None, patches=None,
         mu: float = 1.0, cache_dir: str | None = "cache", workers: int | None = 1) -> dict:
    """Write a campaign into ``out`` and return its ``campaign.json`` content.

    Args:
        ws: a :class:`gpufit.Workspace` (patches already applied).
        mus: POI values [M]; ntoys: toys per hypothesis and mu; toys_per_job: K.
        max_failed: the fraction of toys whose fits may fail, above which ``merge``
            refuses the answer as ``hypotest`` does (``gpufit.ToyFitsFailed``).
        patchset, patches: a signal grid: ``ws`` is the background-only workspace,
            ``patchset`` a pyhf patchset (path or dict) and ``patches`` a glob or list
            of the points to plan (default: all); ``mu`` is the POI value whose CLs the
            merged table shows (one of ``mus``; the limits need two mus or more).
        cache_dir: JAX's persistent compilation cache of the jobs, relative to ``out``
            or absolute (a shared file system: jobs and Dask workers load what the first
            one compiled); None: the jobs' own setting.
        workers: processes that build the grid's point models to check them (None:
            from the CPUs; :meth:`gpufit.Workspace.signal_points`).
    """

    mus = [float(m) for m in np.atleast_1d(np.asarray(mus, dtype=float))]
    if not mus:
        raise CampaignError("a campaign needs at least one mu point")
    check_toy_options(ntoys=ntoys, seed=seed, toy_pars=toy_pars, chunk_size=chunk_size, max_failed=max_failed)
    if isinstance(toys_per_job, bool) or not isinstance(toys_per_job, (int, np.integer)) or toys_per_job < 1:
        raise CampaignError(f"toys_per_job must be an integer >= 1, got {toys_per_job!r}")
    test_stat = normalize_test_stat(test_stat)
    grid = spec = None
    if patchset is not None:
        if len(mus) > 1:
            check_grid(mus)
        grid, spec, model = _grid(ws, patchset, patches, mus, seed, measurement, modifier_settings, workers)
    else:
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
        "max_failed": float(max_failed),
        "compilation_cache": cache_dir,
    }
    if grid is not None:
        settings |= {"patchset_digest": digest(spec), "mu": float(mu), **grid}
    campaign_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    jobs = planned_jobs(settings)
    campaign = {"format": CAMPAIGN_FORMAT, "campaign_id": campaign_id, "gpufit_version": __version__,
                "n_jobs": len(jobs), **settings}
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    atomic_write_bytes(os.path.join(out, "workspace.json"), ws.to_json().encode())
    if grid is not None:  # each point's patch in a file of its own: a job reads its own alone
        operations = {p["metadata"]["name"]: p["patch"] for p in spec["patches"]}
        for index, point in enumerate(grid["points"]):
            atomic_write_json(os.path.join(out, "patches", _patch_file(index)), operations[point["name"]])
            point["patch_digest"] = digest(operations[point["name"]])
    shared = {k: v for k, v in settings.items() if k not in ("workspace", "points", "shapes", "layouts", "labels")}
    for job in jobs:
        extra = {}
        if grid is not None:
            extra = {"patch_file": "../patches/" + _patch_file(job["point"]), "pad_shape": settings["shapes"][job["family"]],
                     "pad_layout": settings["layouts"][job["family"]],
                     "patch_digest": grid["points"][job["point"]]["patch_digest"]}
        atomic_write_json(os.path.join(out, "jobs", job["job"] + ".json"), {
            "format": JOB_FORMAT, "campaign_id": campaign_id, **shared,
            "workspace": "../workspace.json", **extra, **job,
        })
    atomic_write_json(os.path.join(out, "campaign.json"), campaign)
    return campaign


def load_campaign(directory: str) -> dict:
    campaign = read_json(os.path.join(directory, "campaign.json"), "campaign file")
    if campaign.get("format") != CAMPAIGN_FORMAT:
        raise CampaignError(f"{directory}/campaign.json is not a {CAMPAIGN_FORMAT} file")
    return campaign


def planned_jobs(campaign: dict) -> list[dict]:
    """The jobs a campaign's settings imply (independent of the job files on disk): for
    each point of a grid (else the one workspace) and mu index, consecutive toy ranges
    of ``toys_per_job``. A grid's job also names its ``point`` (index), ``patch``,
    ``family`` and ``seed`` (:func:`point_seed`)."""
    jobs = []
    points = campaign.get("points") or [None]
    for p, point in enumerate(points):
        for i in range(len(campaign["mus"])):
            for start in range(0, campaign["ntoys"], campaign["toys_per_job"]):
                job = {"job": job_name(len(jobs)), "mu_indices": [i], "toy_start": start,
                       "toy_stop": min(start + campaign["toys_per_job"], campaign["ntoys"])}
                if point is not None:
                    job |= {"point": p, "patch": point["name"], "family": point["family"], "seed": point["seed"]}
                jobs.append(job)
    return jobs


def _patch_file(point: int) -> str:
    return f"point-{point:04d}.json"


def digest(spec) -> str:
    """The digest of a JSON document (a patchset, one patch), as pyhf digests workspaces."""
    return pyhf.utils.digest(spec)

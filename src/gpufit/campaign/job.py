"""``run_job``: one job of a campaign, checkpointed, resumable, written atomically.

The job's toys are processed in blocks of ``checkpoint_every`` chunks; after each block
the finished rows go to ``results/job-NNNN.checkpoint.npz`` (atomically, checksummed).
A job started again resumes after the last checkpoint; a job whose result exists and
verifies is a no-op. The result file ``results/job-NNNN.npz`` appears only when every
toy of the job is done.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from .. import _device
from .._version import __version__
from ..exceptions import GpufitError
from ..infer.sampling import BACKGROUND_ONLY, SIGNAL_PLUS_BACKGROUND
from ..infer.toys import ToyCalculator, progress_bar
from ..model import pad_models, union_data
from ..workspace import Workspace
from ._files import IDENTITY, BrokenResult, CampaignError, read_json, read_result, write_result
from .plan import JOB_FORMAT, digest

CHECKPOINT_EVERY = 4  # chunks per checkpoint


def result_path(job_path: str, job: dict) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(job_path))), "results", job["job"] + ".npz")


def checkpoint_path(job_path: str, job: dict) -> str:
    return result_path(job_path, job)[: -len(".npz")] + ".checkpoint.npz"


def load_job(job_path: str) -> dict:
    job = read_json(job_path, "job file")
    if job.get("format") != JOB_FORMAT:
        raise CampaignError(f"{job_path} is not a {JOB_FORMAT} file")
    return job


def identity(job: dict) -> dict:
    return {k: job[k] for k in IDENTITY}


def job_status(job_path: str) -> str:
    """``"done"`` (a result that verifies), ``"broken"`` (one that does not), or ``"missing"``."""
    job = load_job(job_path)
    path = result_path(job_path, job)
    if not os.path.exists(path):
        return "missing"
    try:
        meta, *_ = read_result(path, extra=("teststat_obs",))
    except BrokenResult:
        return "broken"
    return "done" if identity(meta) == identity(job) else "broken"


def _rows(job: dict):
    """The job's rows in a fixed order: for each mu index, s+b toys then b toys."""
    n = job["toy_stop"] - job["toy_start"]
    toys = np.arange(job["toy_start"], job["toy_stop"])
    hyp, mu, toy = [], [], []
    for i in job["mu_indices"]:
        for h in (SIGNAL_PLUS_BACKGROUND, BACKGROUND_ONLY):
            hyp.append(np.full(n, h))
            mu.append(np.full(n, i))
            toy.append(toys)
    return np.concatenate(hyp), np.concatenate(mu), np.concatenate(toy)


def _split(ts, job):
    """Rows [mus * 2 * toys] -> (teststat_sb, teststat_b), each [mus, toys]."""
    per_mu = ts.reshape(len(job["mu_indices"]), 2, job["toy_stop"] - job["toy_start"])
    return per_mu[:, 0], per_mu[:, 1]


def _grid_point(job_path: str, job: dict, ws):
    """The model (in the family's planned parameter layout and padded to its shape, so
    that every job of the family runs the same compiled kernels) and data of a grid
    job's point, from its own patch."""
    path = os.path.join(os.path.dirname(os.path.abspath(job_path)), job["patch_file"])
    operations = read_json(path, "patch file")
    if digest(operations) != job["patch_digest"]:
        raise CampaignError(f"{path} is not the patch job {job['job']} was planned with: it changed after planning")
    try:
        model, data = ws.point(operations, measurement=job["measurement"], modifier_settings=job["modifier_settings"])
    except GpufitError as err:
        raise CampaignError(f"point {job['patch']} of job {job['job']}: {err}") from err
    padded = pad_models([model], job["pad_shape"], job.get("pad_layout"))[1][0]  # None: its own layout
    return padded, union_data(padded, data)


def run_job(job_path: str, progress: bool | None = False, checkpoint_every: int = CHECKPOINT_EVERY,
            stop_after_blocks: int | None = None, require_gpu: bool = False) -> dict:
    """Run one job file; return a summary (``status``: "done", "skipped" or "stopped").

    ``stop_after_blocks`` stops after that many checkpointed blocks (for tests of
    resuming; a killed job behaves the same). ``require_gpu``: refuse (before any work)
    unless JAX computes on a GPU here.
    """
    if require_gpu:
        _device.require_gpu("a job that needs a GPU")
    job = load_job(job_path)
    final = result_path(job_path, job)
    if job_status(job_path) == "done":
        return {"job": job["job"], "status": "skipped", "path": final}
    started = time.perf_counter()
    campaign_dir = os.path.dirname(os.path.dirname(os.path.abspath(job_path)))
    kernel_dir = None
    if job.get("compilation_cache"):  # before this job compiles anything
        kernel_dir = os.path.join(campaign_dir, job["compilation_cache"])
        _device.use_compilation_cache(kernel_dir)
    ws_path = os.path.join(os.path.dirname(os.path.abspath(job_path)), job["workspace"])
    ws = Workspace.load(ws_path, validate=False)  # validated when planned: the digest says it is that one
    if ws.digest() != job["workspace_digest"]:
        raise CampaignError(
            f"{ws_path} has digest {ws.digest()}, but job {job['job']} was planned for "
            f"{job['workspace_digest']}: the workspace changed after planning"
        )
    if "patch" in job:
        model, data = _grid_point(job_path, job, ws)
    else:
        model = ws.model(measurement=job["measurement"], modifier_settings=job["modifier_settings"])
        data = ws.data(model)
    calc = ToyCalculator(model, data, job["mus"], job["test_stat"], ntoys=None, seed=job["seed"],
                         toy_pars=job["toy_pars"], chunk_size=job.get("chunk_size"), max_failed=1.0,
                         progress=False, kernel_dir=kernel_dir)
    teststat_obs = calc.teststat_obs[job["mu_indices"]]  # the observed fits run here: part of the set-up
    setup_seconds = time.perf_counter() - started  # reading, model, observed fits (compiles included)
    hyp, mu, toy = _rows(job)
    ts = np.full(hyp.size, np.nan)
    done = 0
    meta = identity(job) | {"gpufit_version": __version__, "device": _device.describe(jax.devices()[0])}
    checkpoint = checkpoint_path(job_path, job)
    resumed = {}
    if os.path.exists(checkpoint):
        try:
            cmeta, csb, cb, _ = read_result(checkpoint, extra=("teststat_obs",))
            if identity(cmeta) == identity(job):
                ts, done = np.stack([csb, cb], axis=1).reshape(-1), int(cmeta["rows_done"])
                resumed = {"resumed_from_row": done}
            else:
                resumed = {"checkpoint_discarded": f"{checkpoint} belongs to another job"}
        except BrokenResult as err:  # a checkpoint torn by the kill: start over
            resumed = {"checkpoint_discarded": str(err)}
    block = max(1, checkpoint_every) * calc.chunk_size
    blocks = 0
    with progress_bar(progress, hyp.size) as bar:
        bar.update(done)
        while done < hyp.size:
            stop = min(done + block, hyp.size)
            ts[done:stop], _ = calc.teststats(hyp[done:stop], mu[done:stop], toy[done:stop], bar)
            done = stop
            blocks += 1
            if done < hyp.size:
                sb, b = _split(ts, job)
                write_result(checkpoint, meta | {"rows_done": done}, sb, b,
                             {"teststat_obs": teststat_obs})
                if stop_after_blocks is not None and blocks >= stop_after_blocks:
                    return {"job": job["job"], "status": "stopped", "rows_done": done, **resumed}
    sb, b = _split(ts, job)
    meta |= {"rows_done": int(hyp.size), "n_failed": int(np.isnan(ts).sum()), "seconds": time.perf_counter() - started,
             "setup_seconds": setup_seconds, "stats": calc.stats.to_dict()}
    write_result(final, meta, sb, b, {"teststat_obs": teststat_obs})
    if os.path.exists(checkpoint):
        os.unlink(checkpoint)
    return {"job": job["job"], "status": "done", "path": final, "n_failed": meta["n_failed"], **resumed}

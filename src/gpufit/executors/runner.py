"""``run``: the jobs of a campaign that are missing or broken, in this process or on Dask.

* ``"local"``: one job after another in this process;
* ``"dask"``: a ``distributed.LocalCluster`` started here (``workers`` processes, one
  thread each);
* ``"dask://HOST:PORT"`` (or ``tcp://...``): an existing scheduler, e.g. one whose
  workers dask-jobqueue started on SLURM or PBS nodes.

Dask tasks are keyed by campaign and job, so a retried or resubmitted task is the same
task; a worker that dies mid-job loses only the rows after the job's last checkpoint
(another worker resumes from it).

With ``gpu=True`` each task asks for the worker resource ``GPU=1`` and checks that JAX
computes on a GPU where it lands (a worker that fell back to its CPU fails the task with
one line instead of running it slowly). The embedded cluster then starts one worker per
visible GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``) and allocating GPU memory
as it needs it (``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX would otherwise take 75% of
the card at start); the local executor checks this process. Workers of an existing
scheduler are started with ``dask worker ADDRESS --resources GPU=1``, one per GPU.
"""

from __future__ import annotations

import glob
import os
import subprocess

from ..campaign.job import identity, job_status, load_job, result_path, run_job
from ..campaign.plan import load_campaign
from ..exceptions import CampaignError

CONNECT_TIMEOUT = "10s"
GPU_WORKER_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def visible_gpus() -> list[str]:
    """GPU ids this process may hand to workers: ``CUDA_VISIBLE_DEVICES`` where set, else
    nvidia-smi's list (asked without initialising CUDA here, which would take memory)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def job_files(directory: str) -> list[str]:
    """The campaign's job files, one per job identity (a duplicated file runs once)."""
    campaign = load_campaign(directory)
    seen, out = set(), []
    for path in sorted(glob.glob(os.path.join(directory, "jobs", "*.json"))):
        job = load_job(path)
        if job["campaign_id"] != campaign["campaign_id"]:
            raise CampaignError(
                f"{path} belongs to campaign {job['campaign_id']}, not {campaign['campaign_id']} ({directory})"
            )
        key = (job["job"], tuple(job["mu_indices"]), job["toy_start"], job["toy_stop"])
        if key in seen:
            continue
        seen.add(key)
        out.append(path)
    return out


def pending(directory: str, files: list[str] | None = None, broken: list | None = None) -> list[str]:
    """Job files (default: all of ``directory``'s) whose result is missing or broken
    (a broken result is removed, and its path appended to ``broken``)."""
    todo = []
    for path in job_files(directory) if files is None else files:
        status = job_status(path)
        if status == "broken":
            result = result_path(path, load_job(path))
            os.unlink(result)
            if broken is not None:
                broken.append(result)
        if status != "done":
            todo.append(path)
    return todo


# embedded workers import gpufit as they start, not when their first job arrives (~2 s)
PRELOAD = ["gpufit.executors.runner"]


def _task(path: str, require_gpu: bool = False) -> dict:
    return run_job(path, progress=False, require_gpu=require_gpu)


def run(directory: str, executor: str = "local", workers: int = 2, gpu: bool = False,
        progress: bool | None = None, gpus: list[str] | None = None) -> dict:
    """Run what is missing; return ``{"ran": [...], "skipped": n, "executor": ...}``.

    ``gpus``: with ``gpu=True`` and the embedded Dask cluster, the GPU ids to start one
    worker each for (default: :func:`visible_gpus`; ``workers`` is then ignored). Naming
    them also skips each task's check that JAX runs on a GPU (how a test runs the GPU set-up
    on a CPU).
    """
    if int(workers) < 1:
        raise CampaignError(f"workers must be at least 1, got {workers}")
    if not (executor in ("local", "dask") or executor.startswith(("dask://", "tcp://"))):
        raise CampaignError(f"unknown executor {executor!r}; use local, dask or dask://HOST:PORT")
    files = job_files(directory)
    broken: list[str] = []
    todo = pending(directory, files, broken)
    total = len(files)
    summary = {"executor": executor, "jobs": total, "skipped": total - len(todo), "ran": [],
               "broken_redone": broken}
    check_gpu = gpu and gpus is None
    if gpu and executor == "dask" and gpus is None:
        gpus = visible_gpus()
        if not gpus:
            raise CampaignError("--gpu: no GPU visible here (CUDA_VISIBLE_DEVICES and nvidia-smi list none); "
                                "run on a GPU node, or drop --gpu")
    if not todo:
        return summary
    if executor == "local":
        for path in todo:
            summary["ran"].append(run_job(path, progress=progress, require_gpu=check_gpu))
        return summary
    summary["ran"] = _run_dask(directory, todo, executor, workers, gpu, gpus, check_gpu)
    return summary


def _gpu_cluster(gpus: list[str]):
    """An embedded cluster of one worker per GPU, each seeing its own GPU alone."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{g}": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, "preload": PRELOAD,
                                             "env": {"CUDA_VISIBLE_DEVICES": g, **GPU_WORKER_ENV}}}
        for g in gpus
    }
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                       silence_logs=40)


def _run_dask(directory, todo, executor, workers, gpu, gpus, check_gpu):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CampaignError("the dask executor needs dask.distributed: pip install 'gpufit[dask]'") from None
    campaign = load_campaign(directory)
    keys = [f"gpufit-{campaign['campaign_id']}-{load_job(p)['job']}" for p in todo]
    options = {"resources": {"GPU": 1}} if gpu else {}
    if executor == "dask":
        if gpu:
            cluster = _gpu_cluster(gpus)
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40, preload=PRELOAD)
        client = Client(cluster)
    else:
        address = executor.replace("dask://", "tcp://", 1)
        try:
            cluster, client = None, Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as err:
            raise CampaignError(
                f"cannot reach a Dask scheduler at {address} within {CONNECT_TIMEOUT} ({type(err).__name__}); "
                "start one ('dask scheduler', then 'dask worker ADDRESS') or use --executor dask for a local cluster"
            ) from None
    try:
        futures = client.map(_task, [os.path.abspath(p) for p in todo], [check_gpu] * len(todo), key=keys, retries=3,
                             pure=False, **options)
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["run", "pending", "job_files", "identity"]

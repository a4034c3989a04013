"""Ready-to-edit batch scripts for a planned campaign: SLURM, HTCondor, PanDA.

Each batch job runs one job file, ``gpufit campaign run-job DIR/jobs/job-NNNN.json``,
directly or in the container (``apptainer exec IMAGE gpufit ...``); the results land in
``DIR/results`` and ``gpufit campaign merge DIR`` combines them. A resubmitted job whose
result exists is a no-op; a killed one resumes from its checkpoint.
"""

from __future__ import annotations

import os
import stat

from ..exceptions import InvalidArgument

DEFAULT_IMAGE = "gpufit:cpu"
SYSTEMS = ("slurm", "htcondor", "panda")


def _slurm(directory, n_jobs, gpu, image):
    gres = "#SBATCH --gres=gpu:1\n" if gpu else ""
    nv = "--nv " if gpu else ""
    return f"""#!/bin/bash
# SLURM array job: one array task per gpufit campaign job.
#   sbatch {directory}/submit/slurm.sh        then: gpufit campaign merge {directory}
#SBATCH --job-name=gpufit-toys
#SBATCH --array=0-{n_jobs - 1}
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output={directory}/submit/logs/%A_%a.out
{gres}set -euo pipefail
DIR={directory}
JOB=$(printf "$DIR/jobs/job-%04d.json" "$SLURM_ARRAY_TASK_ID")
if command -v apptainer >/dev/null && [ -n "${{GPUFIT_IMAGE:-}}" ]; then
    # GPUFIT_IMAGE: a .sif built from containers/gpufit.def, or {image}
    apptainer exec {nv}--bind "$DIR" "$GPUFIT_IMAGE" gpufit campaign run-job "$JOB"
else
    gpufit campaign run-job "$JOB"
fi
"""


def _htcondor(directory, n_jobs, gpu, image):
    gpus = "request_gpus            = 1\n" if gpu else ""
    if image:
        where = f"""universe                = container
container_image         = {image}
"""
    else:
        where = """universe                = vanilla
getenv                  = true
"""
    return f"""# HTCondor submit file: one job per gpufit campaign job.
#   condor_submit {directory}/submit/htcondor.sub      then: gpufit campaign merge {directory}
# The campaign directory must be on a shared file system (or transfer it and the
# results back with transfer_input_files / transfer_output_remaps).
{where}executable              = gpufit
transfer_executable     = false
arguments               = campaign run-job {directory}/jobs/job-$INT(Process,%04d).json
request_cpus            = 2
request_memory          = 8GB
{gpus}output                  = {directory}/submit/logs/job-$(Process).out
error                   = {directory}/submit/logs/job-$(Process).err
log                     = {directory}/submit/logs/condor.log
queue {n_jobs}
"""


def _panda(directory, n_jobs, gpu, image):
    site = " --site ANALY_GPU_SITE" if gpu else ""
    return f"""#!/bin/bash
# PanDA: one grid job per gpufit campaign job, in the container image.
# Upload the campaign directory with the job (--extFile) and fetch results/ back with
# the output dataset; merge locally with: gpufit campaign merge {os.path.basename(directory)}
# %RNDM:0 is PanDA's per-job counter (0 .. nJobs-1).
prun --containerImage {image}{site} \\
     --exec 'gpufit campaign run-job {os.path.basename(directory)}/jobs/job-$(printf %04d %RNDM:0).json' \\
     --nJobs {n_jobs} --outDS user.$RUCIO_ACCOUNT.gpufit.$(date +%Y%m%d%H%M) \\
     --outputs '{os.path.basename(directory)}/results/*.npz' \\
     --extFile '{os.path.basename(directory)}/*' --noBuild
"""


def image_uri(container: str) -> str:
    """``gpufit:cuda`` -> ``docker://gpufit:cuda``; a URI with a scheme (``docker://``,
    ``oras://``, ``library://``) or a path to a ``.sif`` file stays as it is."""
    if "://" in container or container.endswith(".sif") or container.startswith(("/", "./")):
        return container
    return "docker://" + container


def write_submit_script(directory: str, system: str, n_jobs: int, gpu: bool = False, container: str | None = None) -> str:
    """Write ``DIR/submit/<system>.*`` and return its path."""
    if system not in SYSTEMS:
        raise InvalidArgument(f"unknown batch system {system!r}; choose one of {', '.join(SYSTEMS)}")
    directory = os.path.abspath(directory)
    if system == "htcondor":  # without --container the job runs the gpufit installed on the node
        image = image_uri(container) if container else None
    else:
        image = image_uri(container or ("gpufit:cuda" if gpu else DEFAULT_IMAGE))
    text = {"slurm": _slurm, "htcondor": _htcondor, "panda": _panda}[system](directory, n_jobs, gpu, image)
    name = {"slurm": "slurm.sh", "htcondor": "htcondor.sub", "panda": "panda.sh"}[system]
    os.makedirs(os.path.join(directory, "submit", "logs"), exist_ok=True)
    path = os.path.join(directory, "submit", name)
    with open(path, "w") as handle:
        handle.write(text)
    if name.endswith(".sh"):
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return path

"""Command definitions."""

from __future__ import annotations

import platform
import sys
import time

import click
import numpy as np

from .._device import describe
from .._version import __version__
from ..exceptions import GpufitError
from ._common import (
    emit,
    enable_compilation_cache,
    parse_assignments,
    parse_range,
    toy_options,
    toy_report,
    workspace_options,
)


class _Group(click.Group):
    """Turn gpufit's own errors into one-line messages and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (GpufitError, FileNotFoundError) as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="gpufit")
def main():
    """Batched HistFactory fits, CLs and limits on JAX (pyhf JSON workspaces).

    WS is a workspace file (.json, .json.gz), '-' for stdin, or a bundled example:
    example:sbottom (ATLAS sbottom RegionA + sbottom_1300_205_60), example:docs.
    """
    enable_compilation_cache()


@main.command()
@workspace_options
@click.option("--fixed", "fixed", multiple=True, metavar="NAME=VALUE", help="Fix a parameter (repeatable).")
@click.option("--no-hesse", is_flag=True, help="Skip the uncertainties.")
def fit(ws, model, data, as_json, fixed, no_hesse):
    """Maximum-likelihood fit: parameters, twice_nll, converged."""
    from ..optimize import fit as run_fit

    result = run_fit(model, data, fixed=parse_assignments(fixed, "--fixed"), hesse=not no_hesse)
    payload = result.to_dict()

    def table(p):
        click.echo(f"twice_nll = {p['twice_nll']:.6f}   converged = {p['converged']} ({p['status']})")
        if p.get("hesse_valid") is False:
            click.echo("warning: the Hessian is not positive definite at this point; the errors are not reliable")
        errors = p.get("uncertainties", {})
        limits = p.get("at_limit", {})
        for name, value in p["parameters"].items():
            err = errors.get(name)
            click.echo(f"  {name:40s} {value: .6f}" + (f" +/- {err:.6f}" if err is not None else "")
                       + ("   (at limit)" if limits.get(name) else ""))

    emit(payload, as_json, table)


@main.command()
@workspace_options
@click.option("--mu", type=float, default=1.0, show_default=True, help="POI value to test.")
@click.option("--test-stat", type=click.Choice(["qtilde", "q", "q0"]), default="qtilde", show_default=True)
@click.option("--calculator", type=click.Choice(["asymptotic", "toys"]), default="asymptotic", show_default=True)
@toy_options
def hypotest(ws, model, data, as_json, mu, test_stat, calculator, toy_options):
    """CLs hypothesis test at one POI value: cls_obs, clsb_obs, clb_obs, cls_exp."""
    from ..infer import hypotest as run

    start = time.perf_counter()
    result = run(model, data, mu=mu, test_stat=test_stat, calculator=calculator, **toy_options)
    payload = result.to_dict() | {"seconds": time.perf_counter() - start}

    def table(p):
        click.echo(f"mu = {p['mu']}  ({p['test_stat']}, {p['calculator']})")
        click.echo(f"  CLs  obs = {p['cls_obs']:.6g}   CLsb = {p['clsb_obs']:.6g}   CLb = {p['clb_obs']:.6g}")
        if p["calculator"] == "toys":
            click.echo(f"       +/- {p['cls_obs_err']:.2g}        +/- {p['clsb_obs_err']:.2g}        "
                       f"+/- {p['clb_obs_err']:.2g}   (binomial)")
        bands = "  ".join(f"{v:.6g}" for v in p["cls_exp"])
        click.echo(f"  CLs  exp (-2..+2 sigma) = {bands}")
        toy_report(p)
        if p["n_failed"] and p["calculator"] != "toys":
            click.echo(f"  warning: {p['n_failed']} fits did not converge")

    emit(payload, as_json, table)


@main.command()
@workspace_options
@click.option("--mus", default=None, metavar="START:STOP:COUNT", help="Scan grid (default: root finding).")
@click.option("--level", type=float, default=0.05, show_default=True, help="CLs level (0.05 = 95% CL).")
@click.option("--test-stat", type=click.Choice(["qtilde", "q"]), default="qtilde", show_default=True)
@click.option("--calculator", type=click.Choice(["asymptotic", "toys"]), default="asymptotic", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a Brazil-band plot.")
@toy_options
def limit(ws, model, data, as_json, mus, level, test_stat, calculator, plot, toy_options):
    """Upper limit on the POI: observed, expected (-2..+2 sigma), and the scan.

    With --calculator toys, every (mu point x toy) fit of the scan runs batched; the
    default grid is 11 points up to 1.5 times the largest asymptotic limit.
    """
    from ..infer import upper_limit

    start = time.perf_counter()
    result = upper_limit(model, data, mus=parse_range(mus) if mus else None, calculator=calculator,
                         level=level, test_stat=test_stat, **toy_options)
    payload = result.to_dict() | {"seconds": time.perf_counter() - start}
    if plot:
        from ..plotting import brazil_plot

        brazil_plot(result, plot)
        payload["plot"] = plot

    def table(p):
        click.echo(f"{100 * (1 - p['level']):.0f}% CL upper limit on {model.poi_name} ({p['calculator']}, {p['test_stat']})")
        click.echo(f"  observed: {p['observed']:.4f}")
        for label, value in zip(["-2 sigma", "-1 sigma", "median", "+1 sigma", "+2 sigma"], p["expected"]):
            click.echo(f"  expected {label:>8s}: {value:.4f}")
        toy_report(p)
        if p["n_failed"] and p["calculator"] != "toys":
            click.echo(f"  warning: {p['n_failed']} fits did not converge")

    emit(payload, as_json, table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(as_json):
    """Version, JAX devices and backend, precision, and a GPU sanity check."""
    import jax
    import jax.numpy as jnp

    devices = jax.devices()
    x = jnp.arange(1024.0)
    check = float(jnp.sum(x * x))
    payload = {
        "gpufit": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [describe(d) for d in devices],
        "x64": bool(jax.config.read("jax_enable_x64")),
        "default_dtype": str(x.dtype),
        "sanity_check": check == float(np.sum(np.arange(1024.0) ** 2)),
    }
    try:
        import cupy

        payload["cupy"] = cupy.__version__
        payload["cupy_devices"] = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - optional, absent on CPU machines
        payload["cupy"] = None

    def table(p):
        for key, value in p.items():
            click.echo(f"{key:15s} {value}")

    emit(payload, as_json, table)


@main.group()
def campaign():
    """Toy campaigns split into jobs: plan, run-job, run, merge."""


@campaign.command("plan")
@workspace_options
@click.option("--mus", required=True, metavar="START:STOP:COUNT", help="POI values (or a,b,c).")
@click.option("--ntoys", type=int, required=True, help="Toys per hypothesis and mu point.")
@click.option("--toys-per-job", type=int, required=True, help="Toys of one mu point per job.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-stat", type=click.Choice(["qtilde", "q", "q0"]), default="qtilde", show_default=True)
@click.option("--toy-pars", type=click.Choice(["profiled", "init"]), default="profiled", show_default=True)
@click.option("--chunk-size", type=int, default=None, help="Toys per compiled call in each job.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New campaign directory.")
@click.option("--submit", type=click.Choice(["slurm", "htcondor", "panda"]), default=None,
              help="Also write a batch submit script into OUT/submit/.")
@click.option("--gpu", is_flag=True, help="Ask the batch system for one GPU per job.")
@click.option("--container", default=None, help="Container image for the submit script.")
def campaign_plan(ws, model, data, as_json, mus, ntoys, toys_per_job, seed, test_stat, toy_pars, chunk_size,
                  out, submit, gpu, container):
    """Write OUT/campaign.json and one OUT/jobs/job-NNNN.json per job."""
    from ..campaign import plan

    payload = plan(ws, out, parse_range(mus), ntoys, toys_per_job, seed, test_stat=test_stat, toy_pars=toy_pars,
                   measurement=model.measurement, modifier_settings=model.modifier_settings,
                   chunk_size=chunk_size, submit=submit, gpu=gpu, container=container)

    def table(p):
        click.echo(f"campaign {p['campaign_id']}: {p['n_jobs']} jobs in {out}/jobs "
                   f"({len(p['mus'])} mu points x {p['ntoys']} toys, {p['toys_per_job']} per job, seed {p['seed']})")
        if p.get("submit_script"):
            click.echo(f"submit script: {p['submit_script']}")

    emit(payload, as_json, table)


@campaign.command("run-job")
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_run_job(job, quiet, as_json):
    """Run one job file (the container entry point); resumes from its checkpoint."""
    from ..campaign import run_job

    payload = run_job(job, progress=False if quiet else None)
    emit(payload, as_json, lambda p: click.echo(f"{p['job']}: {p['status']}" + (f" -> {p['path']}" if p.get("path") else "")))


@campaign.command("run")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--executor", default="local", show_default=True, help="local | dask | dask://HOST:PORT")
@click.option("--workers", type=int, default=2, show_default=True, help="Workers of the embedded Dask cluster.")
@click.option("--gpu", is_flag=True, help="Dask: each job needs the worker resource GPU=1.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_run(directory, executor, workers, gpu, as_json):
    """Run the jobs whose results are missing or broken."""
    from ..campaign import run

    start = time.perf_counter()
    payload = run(directory, executor=executor, workers=workers, gpu=gpu) | {"seconds": time.perf_counter() - start}
    emit(payload, as_json, lambda p: click.echo(
        f"{len(p['ran'])} jobs run, {p['skipped']} already done, of {p['jobs']} ({p['executor']}, {p['seconds']:.1f} s)"))


@campaign.command("merge")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--allow-partial", is_flag=True, help="Answer from the toys there are when jobs are missing.")
@click.option("--level", type=float, default=0.05, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Brazil-band plot (several mu).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def campaign_merge(directory, allow_partial, level, plot, as_json):
    """Check and combine the results: hypotest keys (one mu) or limit keys (several)."""
    from ..campaign import merge

    payload = merge(directory, allow_partial=allow_partial, level=level)
    if plot and "observed" in payload:
        from ..infer.intervals import UpperLimitResult
        from ..plotting import brazil_plot

        brazil_plot(UpperLimitResult(
            observed=payload["observed"], expected=np.asarray(payload["expected"]), mus=np.asarray(payload["mus"]),
            cls_obs=np.asarray(payload["cls_obs"]), cls_exp=np.asarray(payload["cls_exp"]), level=level,
            test_stat=payload["test_stat"], calculator="toys"), plot)
        payload["plot"] = plot

    def table(p):
        t = p["toys"]
        if "observed" in p:
            click.echo(f"observed limit {p['observed']:.4f}; expected " + "  ".join(f"{v:.4f}" for v in p["expected"]))
        else:
            click.echo(f"mu = {p['mu']}: CLs = {p['cls_obs']:.6g} +/- {p['cls_obs_err']:.2g}  CLsb = {p['clsb_obs']:.6g}  "
                       f"CLb = {p['clb_obs']:.6g}")
            click.echo("  CLs exp (-2..+2 sigma) = " + "  ".join(f"{v:.6g}" for v in p["cls_exp"]))
        click.echo(f"  toys counted per mu: {t['counted_per_mu']} of {t['expected_per_mu']}; failed {t['n_failed']}"
                   + (f"; PARTIAL, missing {len(t['missing_jobs'])} jobs" if t["partial"] else ""))

    emit(payload, as_json, table)

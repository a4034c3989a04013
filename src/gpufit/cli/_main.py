"""Command definitions.

Exit status: 0 a result; 2 bad input (usage, workspace, option values), refused before
any work; 3 a computed result that is not trustworthy (a fit that did not converge,
more failed toys than ``--max-failed``); 1 an internal error (a bug: please report it,
``GPUFIT_DEBUG=1`` shows the traceback). Under ``--json`` errors are one JSON object
``{"error": ..., "type": ..., "exit_code": ...}`` on stdout as well.

``--plot`` needs matplotlib (the optional ``plot`` extra, imported by ``gpufit.plotting``
only when it draws): every command runs without it, and ``--plot`` says what to install.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from importlib import metadata

import click
import jax
import numpy as np

from .._device import describe
from .._version import __version__
from ..campaign import merge as merge_campaign, plan as plan_campaign, run_job
from ..exceptions import GpufitError, LimitOutsideGrid, ToyFitsFailed
from ..executors import run as run_jobs, write_submit_script
from ..infer import hypotest as run_hypotest, upper_limit
from ..infer.device_check import TOLERANCE, check_devices
from ..infer.intervals import UpperLimitResult
from ..infer.scan import ScanResult, scan as run_scan
from ..optimize import fit as run_fit
from ..plotting import brazil_plot, contour_plot, correlation_plot as draw_correlations, pulls_plot, teststat_plot
from ..workspace import inspect_workspace, load_patchset
from ._common import (
    check_plot,
    check_writable,
    emit,
    enable_compilation_cache,
    load_workspace,
    model_options,
    output_options,
    parse_assignments,
    parse_range,
    require_gpu_option,
    toy_options,
    toy_report,
    workspace_options,
)

BAD_INPUT, UNTRUSTWORTHY, INTERNAL = 2, 3, 1
SIGMAS = ["-2 sigma", "-1 sigma", "median", "+1 sigma", "+2 sigma"]


class AfterResult(click.ClickException):
    """A problem found after the result was printed (so under ``--json`` the one JSON
    object on stdout stays the result; the message goes to stderr)."""

    exit_code = INTERNAL


class ResultNotTrustworthy(AfterResult):
    """A result was printed, but it must not be used as it is (exit status 3)."""

    exit_code = UNTRUSTWORTHY


class _Group(click.Group):
    """One-line errors for everything a user can get wrong, JSON errors under ``--json``."""

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in args
        try:
            extra.setdefault("obj", {"argv": args})  # the command line, for results that record it
            code = super().main(args=args, prog_name=prog_name or "gpufit", standalone_mode=False, **extra)
        except ToyFitsFailed as err:
            _fail(as_json, err, UNTRUSTWORTHY, (
                f"{err.n_failed} of {err.n_toys} toys ({err.n_failed / max(err.n_toys, 1):.2%}) have a fit that "
                f"failed after every retry, more than --max-failed {err.max_failed:g}. Check the model with "
                "'gpufit fit WS', or accept them with a larger --max-failed (they are then counted in n_failed)"))
        except AfterResult as err:
            _fail(False, err, err.exit_code, err.format_message())
        except click.ClickException as err:
            if not as_json:
                err.show()  # click's usage line and hint
                sys.exit(err.exit_code)
            _fail(as_json, err, err.exit_code, err.format_message())
        except (GpufitError, OSError) as err:
            _fail(as_json, err, BAD_INPUT, str(err))
        except click.Abort:
            _fail(as_json, KeyboardInterrupt(), 130, "interrupted")
        except Exception as err:  # noqa: BLE001 - a bug: one line, and the traceback on request
            if os.environ.get("GPUFIT_DEBUG"):
                raise
            _fail(as_json, err, INTERNAL, f"internal error {type(err).__name__}: {err} "
                  "(a gpufit bug; rerun with GPUFIT_DEBUG=1 for the traceback and report it)")
        sys.exit(code or 0)


def _fail(as_json: bool, err: BaseException, code: int, message: str) -> None:
    message = " ".join(str(message).split("\n"))
    if as_json:
        click.echo(json.dumps({"error": message, "type": type(err).__name__, "exit_code": code}))
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpufit")
def main():
    """Batched HistFactory fits, CLs and limits on JAX (pyhf JSON workspaces).

    WS is a workspace file (.json, .json.gz), '-' for stdin, or a bundled example:
    example:sbottom (ATLAS sbottom RegionA + sbottom_1300_205_60), example:1lbb (ATLAS
    1Lbb + C1N2_Wh_hbb_700_300), example:2ljets (ATLAS 2L+jets EWK), example:docs.
    """
    enable_compilation_cache()


def fit_options(func):
    """``--tol`` and ``--maxiter`` of the fits (``gpufit.fit``'s options of the same name)."""
    func = click.option("--maxiter", type=click.IntRange(min=1), default=None,
                        help="Cap on solver steps per fit (default 300).")(func)
    return click.option("--tol", type=click.FloatRange(min=0.0, min_open=True), default=None,
                        help="Convergence threshold on the edm of -2 log L (default 1e-8).")(func)


def _fit_kwargs(tol, maxiter) -> dict:
    return {k: v for k, v in {"tol": tol, "maxiter": maxiter}.items() if v is not None}


@main.command()
@require_gpu_option
@workspace_options
@click.option("--fixed", "fixed", multiple=True, metavar="NAME=VALUE", help="Fix a parameter (repeatable).")
@click.option("--no-hesse", is_flag=True, help="Skip the uncertainties and correlations.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write the pulls of the constrained parameters (.png, .pdf, ...).")
@click.option("--correlation-plot", type=click.Path(dir_okay=False), default=None,
              help="Write the correlation matrix of the free parameters.")
@fit_options
@output_options
def fit(ws, model, data, fixed, no_hesse, plot, correlation_plot, tol, maxiter):
    """Maximum-likelihood fit: parameters, twice_nll, converged (exit 3 if it did not)."""
    for path, option in ((plot, "--plot"), (correlation_plot, "--correlation-plot")):
        check_plot(path, option)
        if path and no_hesse:
            raise click.UsageError(f"{option} draws the fit's uncertainties: drop --no-hesse")
    result = run_fit(model, data, fixed=parse_assignments(fixed, "--fixed"), hesse=not no_hesse,
                     **_fit_kwargs(tol, maxiter))
    payload = result.to_dict()
    if result.correlations is not None:
        payload["correlation"] = {"parameters": list(result.parameter_names), "matrix": result.correlations}
    plot_error = _write_plot(lambda p: pulls_plot(result, model, p), plot, payload)
    plot_error = _write_plot(lambda p: draw_correlations(result, p), correlation_plot, payload,
                             "correlation_plot") or plot_error

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

    emit(payload, table)
    if not bool(result.converged):
        raise ResultNotTrustworthy(
            f"the fit did not converge ({payload['status']}: {result.messages.item()}); "
            "the numbers above are where it stopped, not a minimum"
        )
    _plot_failed(plot_error)


@main.command()
@require_gpu_option
@workspace_options
@click.option("--mu", type=float, default=1.0, show_default=True, help="POI value to test.")
@click.option("--test-stat", type=click.Choice(["qtilde", "q", "q0"]), default="qtilde", show_default=True,
              help="q0 tests discovery (mu = 0) and reports p0 and Z.")
@click.option("--calculator", type=click.Choice(["asymptotic", "toys"]), default="asymptotic", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="With --calculator toys: write the toys' test-statistic distributions, the asymptotic "
                   "ones drawn over them (.png, .pdf, ...).")
@toy_options
@fit_options
@output_options
def hypotest(ws, model, data, mu, test_stat, calculator, plot, toy_options, tol, maxiter):
    """CLs hypothesis test at one POI value: cls_obs, clsb_obs, clb_obs, cls_exp.

    The JSON also carries pyhf's keys (CLs_obs, CLs_exp), and p0/Z for q0.
    """
    check_plot(plot)
    if plot and calculator != "toys":
        raise click.UsageError("--plot draws the toys' distributions: add --calculator toys")
    start = time.perf_counter()
    result = run_hypotest(model, data, mu=mu, test_stat=test_stat, calculator=calculator, **toy_options,
                 **_fit_kwargs(tol, maxiter))
    payload = result.to_dict() | {"seconds": time.perf_counter() - start,
                                  "CLs_obs": result.cls_obs, "CLs_exp": np.asarray(result.cls_exp).tolist()}

    def draw(path):
        # the asymptotic distributions need the Asimov statistic: a few fits more (inside
        # the plot, whose failure keeps the toys' result)
        asymptotic = run_hypotest(model, data, mu=mu, test_stat=test_stat, **_fit_kwargs(tol, maxiter)) \
            if test_stat in ("q", "qtilde") else None
        teststat_plot(result, asymptotic, path)

    plot_error = _write_plot(draw, plot, payload)

    def table(p):
        if p["test_stat"] == "q0":
            click.echo(f"discovery test, q0 ({p['calculator']})")
            click.echo(f"  p0 obs = {p['p0_obs']:.6g}   Z = {p['z_obs']:.3f} sigma")
            if p["calculator"] == "toys":
                click.echo(f"         +/- {p['cls_obs_err']:.2g}   (binomial)")
            click.echo("  p0 exp (-2..+2 sigma) = " + "  ".join(f"{v:.6g}" for v in p["p0_exp"]))
            click.echo("  Z  exp (-2..+2 sigma) = " + "  ".join(f"{v:.3f}" for v in p["z_exp"]))
        else:
            click.echo(f"mu = {p['mu']}  ({p['test_stat']}, {p['calculator']})")
            click.echo(f"  CLs  obs = {p['cls_obs']:.6g}   CLsb = {p['clsb_obs']:.6g}   CLb = {p['clb_obs']:.6g}")
            if p["calculator"] == "toys":
                click.echo(f"       +/- {p['cls_obs_err']:.2g}        +/- {p['clsb_obs_err']:.2g}        "
                           f"+/- {p['clb_obs_err']:.2g}   (binomial)")
            click.echo("  CLs  exp (-2..+2 sigma) = " + "  ".join(f"{v:.6g}" for v in p["cls_exp"]))
        toy_report(p)

    emit(payload, table)
    _warn_failed_fits(payload)
    _plot_failed(plot_error)


def _warn_failed_fits(p: dict) -> None:
    if p["n_failed"] and p["calculator"] != "toys":
        click.echo(f"warning: {p['n_failed']} fits to the observed or Asimov data did not converge; "
                   "the p-values may be wrong (try --maxiter or --tol)", err=True)


def limit_options(func):
    """``--mus --level --test-stat --calculator`` of an upper limit (``limit``, ``scan``)."""
    func = click.option("--calculator", type=click.Choice(["asymptotic", "toys"]), default="asymptotic",
                        show_default=True)(func)
    func = click.option("--test-stat", type=click.Choice(["qtilde", "q"]), default="qtilde", show_default=True)(func)
    func = click.option("--level", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05,
                        show_default=True, help="CLs level (0.05 = 95% CL).")(func)
    return click.option("--mus", default=None, metavar="START:STOP:COUNT",
                        help="Scan grid, increasing, inside the POI's bounds, or a,b,c "
                             "(default: each limit solved by root finding).")(func)


@main.command()
@require_gpu_option
@workspace_options
@limit_options
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a Brazil-band plot (.png, .pdf, ...).")
@toy_options
@fit_options
@output_options
def limit(ws, model, data, mus, level, test_stat, calculator, plot, toy_options, tol, maxiter):
    """Upper limit on the POI: observed, expected (-2..+2 sigma), and the scan.

    With --calculator toys, every (mu point x toy) fit of the scan runs batched; the
    default grid is 11 points up to 1.5 times the largest asymptotic limit. A limit the
    scan does not bracket is printed as a bound ("> 2.0") with a warning.
    """
    check_plot(plot)
    grid = parse_range(mus) if mus else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LimitOutsideGrid)  # the table and JSON carry the bound flags
        result = upper_limit(model, data, mus=grid, calculator=calculator, level=level, test_stat=test_stat,
                             **toy_options, **_fit_kwargs(tol, maxiter))
    payload = result.to_dict() | {"seconds": time.perf_counter() - start}
    plot_error = _plot_limit(result, plot, payload)

    def table(p):
        click.echo(f"{100 * (1 - p['level']):g}% CL upper limit on {model.poi_name} ({p['calculator']}, {p['test_stat']})")
        click.echo(f"  observed: {_limit_text(p['observed'], p['observed_bound'])}")
        for label, value, bound in zip(SIGMAS, p["expected"], p["expected_bound"]):
            click.echo(f"  expected {label:>8s}: {_limit_text(value, bound)}")
        toy_report(p)

    emit(payload, table)
    _warn_bounds(payload, "--mus" if mus else "the POI's bounds")
    _warn_failed_fits(payload)
    _plot_failed(plot_error)


def _limit_text(value, bound) -> str:
    return {None: f"{value:.4f}", "above": f"> {value:.4f}", "below": f"< {value:.4f}"}[bound]


def _warn_bounds(p: dict, scanned: str) -> None:
    if p.get("observed_bound") or any(p.get("expected_bound", [])):
        click.echo(f"warning: CLs does not cross {p['level']:g} inside {scanned} ({p['mus'][0]:g} to "
                   f"{p['mus'][-1]:g}); limits marked > or < are bounds, not crossings. "
                   "Extend the scan to bracket them", err=True)


def _write_plot(draw, path, payload, key="plot") -> str | None:
    """Run ``draw(path)`` (a :mod:`gpufit.plotting` call) and note it in ``payload[key]``;
    on failure return why (the computed result is kept and printed first)."""
    if not path:
        return None
    try:
        draw(path)
    except Exception as err:  # noqa: BLE001 - whatever matplotlib raises, the result survives
        payload[f"{key}_error"] = f"{type(err).__name__}: {err}"
        return payload[f"{key}_error"]
    payload[key] = path
    return None


def _plot_failed(plot_error: str | None) -> None:
    if plot_error:
        raise AfterResult(f"the result above is complete, but the plot failed: {plot_error}")


def _plot_limit(result, path, payload) -> str | None:
    """Write the Brazil plot."""
    return _write_plot(lambda p: brazil_plot(result, p), path, payload)


@main.command()
@require_gpu_option
@click.argument("workspace", metavar="BKG")
@click.option("--patchset", required=True, type=click.Path(exists=True, dir_okay=False),
              help="pyhf patchset (.json or .json.gz) of the signal points.")
@click.option("--patches", "patches", multiple=True, metavar="GLOB",
              help="Patch names or globs to scan (repeatable; default: every patch).")
@model_options
@click.option("--mu", type=float, default=1.0, show_default=True, help="POI value of the CLs column.")
@limit_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for scan.json and scan.csv (made if missing).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write the exclusion contour in the plane of the patchset's labels (.png, .pdf, ...).")
@click.option("--build-workers", type=click.IntRange(min=1), default=None,
              help="Processes that build the points' models (pyhf's model build is pure Python) "
                   "[default: the CPUs, at least 8 points each].")
@toy_options
@fit_options
@output_options
def scan(workspace, patchset, patches, measurement, modifier_settings, mu, mus, level, test_stat, calculator,
         out_dir, plot, build_workers, toy_options, tol, maxiter):
    """CLs at --mu and upper limits for every signal point of a patchset.

    The points are compiled once (padded to one shape) and, with the asymptotic
    calculator, fitted together. Rows go to OUT/scan.json and OUT/scan.csv; a point
    whose model or fits fail is a row with its error (exit status 3 after the rest).
    """
    check_plot(plot)
    check_writable(os.path.abspath(out_dir), "--out")
    grid = parse_range(mus) if mus else None
    result = run_scan(load_workspace(workspace), patchset, patches=list(patches) or None, calculator=calculator,
                      mu=mu, level=level, test_stat=test_stat, mus=grid, measurement=measurement,
                      modifier_settings=modifier_settings, workers=build_workers, **toy_options,
                      **_fit_kwargs(tol, maxiter))
    _emit_grid(result, out_dir, plot, lambda p: (
        f"{p['info']['n_points']} points, {p['info']['n_shapes']} compiled shape(s), {p['info']['seconds']:.1f} s "
        f"on {p['device']}"))


def _command_line(fallback: tuple = ()) -> str:
    """This invocation's command line (``gpufit ...``), for the files that record it."""
    argv = (click.get_current_context().find_root().obj or {}).get("argv", list(fallback))
    return shlex.join(["gpufit", *argv])


def _emit_grid(result, out_dir, plot, summary) -> None:
    """Print a grid's rows (``gpufit scan``, a merged grid campaign), write them into
    ``out_dir`` and the contour to ``plot``; exit 3 after them where a point has none."""
    payload = result.to_dict() | {"files": result.write(out_dir, command=_command_line())}
    plot_error = _write_plot(lambda path: contour_plot(result, path), plot, payload)

    def table(p):
        labels = " ".join(f"{name:>8s}" for name in p["labels"])
        click.echo(f"{'point':<28s} {labels}  {'CLs obs':>9s} {'CLs exp':>9s}  {'UL obs':>8s} {'UL exp':>8s}")
        for row in p["points"]:
            values = " ".join(f"{v:>8g}" for v in row["values"])
            if row["error"]:
                click.echo(f"{row['name']:<28s} {values}  error: {row['error']}")
                continue
            numbers = [row["cls_obs"], row["cls_exp"][2], row["upper_limit_obs"], row["upper_limit_exp"][2]]
            cls_obs, cls_exp, ul_obs, ul_exp = ("-" if v is None else f"{v:.4g}" for v in numbers)
            click.echo(f"{row['name']:<28s} {values}  {cls_obs:>9s} {cls_exp:>9s}  {ul_obs:>8s} {ul_exp:>8s}")
        click.echo(f"{summary(p)}; rows in {p['files']['csv']}")

    emit(payload, table)
    _plot_failed(plot_error)
    errors = [row["name"] for row in result.points if row["error"]]
    if errors:
        raise ResultNotTrustworthy(f"{len(errors)} of {len(result.points)} points have no result "
                                   f"({', '.join(errors[:3])}{', ...' if len(errors) > 3 else ''}): see their error")


@main.command()
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run toys of a bundled model (sbottom) on every JAX device and the CPU and compare them.")
@click.option("--ntoys", type=click.IntRange(min=16), default=512, show_default=True, help="Toys per device in the check.")
@require_gpu_option
@output_options
def info(check, ntoys):
    """Versions, JAX devices, and a check that each device computes the CPU's toys.

    Exits with status 3 when a device disagrees with the CPU (test statistics beyond 1e-9).
    """
    versions = {}
    for package in ("jax", "jaxlib", "numpy", "scipy", "pyhf", "iminuit", "distributed", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    payload = {
        "command": _command_line(fallback=("info",)),
        "gpufit": __version__,
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "devices": [describe(d) for d in jax.devices()],
        "x64": bool(jax.config.read("jax_enable_x64")),
        "compilation_cache": jax.config.jax_compilation_cache_dir,
        "versions": versions,
    }
    if check:
        ws = load_workspace("example:sbottom")
        model = ws.model()
        payload["check"] = {"model": "example:sbottom (RegionA, 1300_205_60)", "tolerance": TOLERANCE,
                            "rows": check_devices(model, ws.data(model), ntoys=ntoys)}

    def table(p):
        for key, value in p.items():
            if key == "versions":
                click.echo("versions        " + ", ".join(f"{k} {v}" for k, v in value.items() if v))
            elif key != "check":
                click.echo(f"{key:15s} {value}")
        if "check" in p:
            c = p["check"]
            click.echo(f"check: {ntoys} toys of {c['model']} per device, test statistics against the CPU's")
            for r in c["rows"]:
                memory = f"{r['memory_bytes'] / 2**30:6.1f} GiB" if r["memory_bytes"] else "       n/a"
                verdict = "ok" if r["agrees"] else "DISAGREES"
                click.echo(f"  {r['device']:34s} {memory}  chunk {r['chunk_size']:6d}  {r['toys_per_s']:9.1f} toys/s "
                           f"(compile {r['compile_seconds']:.1f} s)  max |diff| {r['max_abs_diff']:.1e}  {verdict}")

    emit(payload, table)
    if check and not all(r["agrees"] for r in payload["check"]["rows"]):
        bad = ", ".join(r["device"] for r in payload["check"]["rows"] if not r["agrees"])
        raise ResultNotTrustworthy(f"{bad} computed other test statistics than the CPU (beyond {TOLERANCE:g})")


@main.command()
@click.argument("workspace", metavar="WS")
@click.option("--measurement", default=None, help="Measurement whose parameters to list (default: the first).")
@output_options
def inspect(workspace, measurement):
    """Channels, samples, modifiers, parameters and measurements of a workspace (as pyhf inspect)."""
    payload = inspect_workspace(load_workspace(workspace), measurement)

    def table(p):
        click.echo(f"channels ({len(p['channels'])}), {sum(c['bins'] for c in p['channels'])} bins:")
        for c in p["channels"]:
            click.echo(f"  {c['name']:40s} {c['bins']:4d} bins  samples: {', '.join(c['samples'])}")
        click.echo(f"modifiers ({len(p['modifiers'])}):")
        for m in p["modifiers"]:
            click.echo(f"  {m['name']:40s} {m['type']}")
        click.echo("measurements: " + ", ".join(f"{m['name']} (POI {m['poi']})" for m in p["measurements"]))
        click.echo(f"parameters of measurement {p['measurement']!r} ({len(p['parameters'])} groups):")
        for par in p["parameters"]:
            bounds = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in par["bounds"][:1])
            click.echo(f"  {par['name']:40s} n={par['n']:<3d} {par['constraint'] or 'unconstrained':9s} "
                       f"init {par['init'][0]:g}  bounds {bounds}" + ("  fixed" if par["fixed"] else ""))

    emit(payload, table)


@main.group()
def patchset():
    """pyhf patchsets: the signal points a workspace can be patched with."""


@patchset.command("inspect")
@click.argument("patchset_file", metavar="PS")
@output_options
def patchset_inspect(patchset_file):
    """Names and labelled values of every patch (as pyhf patchset inspect)."""
    ps = load_patchset(patchset_file)
    payload = {
        "description": ps.description,
        "digests": ps.digests,
        "labels": list(ps.labels),
        "patches": [{"name": p.name, "values": dict(zip(ps.labels, p.values))} for p in ps.patches],
    }

    def table(p):
        click.echo(f"{p['description']}")
        click.echo(f"{len(p['patches'])} patches, labels: {', '.join(p['labels'])}")
        for patch in p["patches"]:
            click.echo(f"  {patch['name']:40s} " + "  ".join(f"{k}={v:g}" for k, v in patch["values"].items()))

    emit(payload, table)


@main.group()
def campaign():
    """Toy campaigns split into jobs: plan, run-job, run, merge."""


@campaign.command("plan")
@workspace_options(grid=True)
@click.option("--patches", "grid_patches", multiple=True, metavar="GLOB",
              help="With --patchset and no --patch-name: the points of the grid to plan (default: all).")
@click.option("--mu", type=float, default=1.0, show_default=True,
              help="Grid: the POI value (one of --mus) whose CLs the merged table shows.")
@click.option("--mus", required=True, metavar="START:STOP:COUNT",
              help="POI values, increasing, inside the POI's bounds (or a,b,c).")
@click.option("--ntoys", type=click.IntRange(min=1), required=True, help="Toys per hypothesis and mu point.")
@click.option("--toys-per-job", type=click.IntRange(min=1), required=True, help="Toys of one mu point per job.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--test-stat", type=click.Choice(["qtilde", "q", "q0"]), default="qtilde", show_default=True)
@click.option("--toy-pars", type=click.Choice(["profiled", "init"]), default="profiled", show_default=True)
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Toys per compiled call in each job.")
@click.option("--max-failed", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="Largest fraction of toys whose fits may fail after every retry; merge refuses more (exit 3).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New campaign directory.")
@click.option("--cache-dir", default="cache", show_default=True,
              help="JAX's compilation cache of the jobs, relative to OUT or absolute: on a shared file system "
                   "jobs and workers load the kernels the first one compiled ('' : each job's own).")
@click.option("--submit", type=click.Choice(["slurm", "htcondor", "panda"]), default=None,
              help="Also write a batch submit script into OUT/submit/.")
@click.option("--gpu", is_flag=True, help="Ask the batch system for one GPU per job.")
@click.option("--build-workers", type=click.IntRange(min=1), default=None,
              help="Processes that build the points' models (pyhf's model build is pure Python) "
                   "[default: the CPUs, at least 8 points each].")
@click.option("--container", default=None,
              help="Container image for the submit script: NAME:TAG (pulled as docker://NAME:TAG) or a full URI.")
@output_options
def campaign_plan(ws, model, data, patchset, grid_patches, mu, mus, ntoys, toys_per_job, seed, test_stat, toy_pars,
                  chunk_size, max_failed, out, cache_dir, submit, gpu, build_workers, container, measurement=None,
                  modifier_settings=None):
    """Write OUT/campaign.json and one OUT/jobs/job-NNNN.json per job.

    With --patchset and no --patch-name, WS is the background-only workspace and the
    campaign is a signal grid: (point x mu x toys) jobs, merged into one row per point
    and the exclusion contour, as 'gpufit scan' writes them.
    """
    if model is not None:
        measurement, modifier_settings = model.measurement, model.modifier_settings
    payload = plan_campaign(ws, out, parse_range(mus), ntoys, toys_per_job, seed, test_stat=test_stat, toy_pars=toy_pars,
                   measurement=measurement, modifier_settings=modifier_settings,
                   chunk_size=chunk_size, max_failed=max_failed,
                   patchset=patchset, patches=list(grid_patches) or None, mu=mu, cache_dir=cache_dir or None,
                   workers=build_workers)
    if submit:
        payload["submit_script"] = write_submit_script(out, submit, payload["n_jobs"], gpu=gpu, container=container)

    def table(p):
        grid = f"{len(p['points'])} points x " if p.get("points") else ""
        click.echo(f"campaign {p['campaign_id']}: {p['n_jobs']} jobs in {out}/jobs ({grid}"
                   f"{len(p['mus'])} mu points x {p['ntoys']} toys, {p['toys_per_job']} per job, seed {p['seed']})")
        if p.get("submit_script"):
            click.echo(f"submit script: {p['submit_script']}")

    emit(payload, table)


@campaign.command("run-job")
@require_gpu_option
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@output_options
def campaign_run_job(job, quiet):
    """Run one job file (the container entry point); resumes from its checkpoint."""
    payload = run_job(job, progress=False if quiet else None)
    emit(payload, lambda p: click.echo(_job_line(p)))


def _job_line(p: dict) -> str:
    line = f"{p['job']}: {p['status']}" + (f" -> {p['path']}" if p.get("path") else "")
    if "resumed_from_row" in p:
        line += f" (resumed from its checkpoint at row {p['resumed_from_row']})"
    if "checkpoint_discarded" in p:
        line += f" (checkpoint discarded, started over: {p['checkpoint_discarded']})"
    return line


@campaign.command("run")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--executor", default="local", show_default=True, help="local | dask | dask://HOST:PORT")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Workers of the embedded Dask cluster (with --gpu: one per visible GPU instead).")
@click.option("--gpu", is_flag=True,
              help="Run every job on a GPU: refuse where JAX computes on none; Dask tasks ask for the worker "
                   "resource GPU=1 (the embedded cluster starts one worker per visible GPU).")
@output_options
def campaign_run(directory, executor, workers, gpu):
    """Run the jobs whose results are missing or broken (saying which)."""
    start = time.perf_counter()
    payload = run_jobs(directory, executor=executor, workers=workers, gpu=gpu) | {"seconds": time.perf_counter() - start}

    def table(p):
        for path in p["broken_redone"]:
            click.echo(f"broken result removed and its job run again: {path}")
        for job in p["ran"]:
            if "resumed_from_row" in job or "checkpoint_discarded" in job:
                click.echo(_job_line(job))
        click.echo(f"{len(p['ran'])} jobs run, {p['skipped']} already done, of {p['jobs']} "
                   f"({p['executor']}, {p['seconds']:.1f} s)")

    emit(payload, table)


@campaign.command("merge")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--allow-partial", is_flag=True, help="Answer from the toys there are when jobs are missing.")
@click.option("--level", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.05,
              show_default=True)
@click.option("--max-failed", type=click.FloatRange(0.0, 1.0), default=None,
              help="Largest fraction of failed toys (default: the campaign's, as planned); more: exit 3.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Brazil-band plot (several mu).")
@output_options
def campaign_merge(directory, allow_partial, level, max_failed, plot):
    """Check and combine the results: hypotest keys (one mu) or limit keys (several);
    a signal grid's rows as 'gpufit scan' prints and writes them (DIR/merged/)."""
    check_plot(plot)
    payload = merge_campaign(directory, allow_partial=allow_partial, level=level, max_failed=max_failed)
    if "points" in payload:
        info = {"n_points": len(payload["points"]), "toys": payload["toys"], "devices": payload["devices"]}
        result = ScanResult(points=payload["points"], labels=payload["labels"], calculator="toys",
                            test_stat=payload["test_stat"], mu=payload["mu"], level=level, device=payload["device"],
                            info=info)
        t = payload["toys"]
        _emit_grid(result, os.path.join(directory, "merged"), plot, lambda p: (
            f"{len(p['points'])} points, {t['n_failed']} failed toys"
            + (f", PARTIAL: missing {len(t['missing_jobs'])} jobs" if t["partial"] else "")
            + "; computed on " + ", ".join(f"{d} ({n} results)" for d, n in sorted(payload["devices"].items()))))
        return
    plot_error = None
    if plot and "observed" in payload:
        plot_error = _plot_limit(UpperLimitResult.from_dict(payload, level=level), plot, payload)
    if "observed" not in payload:
        payload |= {"CLs_obs": payload["cls_obs"], "CLs_exp": payload["cls_exp"]}

    def table(p):
        t = p["toys"]
        if "observed" in p:
            click.echo(f"observed limit {_limit_text(p['observed'], p['observed_bound'])}; expected "
                       + "  ".join(_limit_text(v, b) for v, b in zip(p["expected"], p["expected_bound"])))
        else:
            click.echo(f"mu = {p['mu']}: CLs = {p['cls_obs']:.6g} +/- {p['cls_obs_err']:.2g}  CLsb = {p['clsb_obs']:.6g}  "
                       f"CLb = {p['clb_obs']:.6g}")
            click.echo("  CLs exp (-2..+2 sigma) = " + "  ".join(f"{v:.6g}" for v in p["cls_exp"]))
        click.echo(f"  toys counted per mu: {t['counted_per_mu']} of {t['expected_per_mu']}; failed {t['n_failed']}"
                   + (f"; PARTIAL, missing {len(t['missing_jobs'])} jobs" if t["partial"] else ""))
        click.echo("  computed on: " + ", ".join(f"{d} ({n} results)" for d, n in sorted(p["devices"].items())))

    emit(payload, table)
    if "observed" in payload:
        _warn_bounds(payload, "the campaign's mu points")
    _plot_failed(plot_error)

"""Options shared by the commands: the workspace argument, patches, output."""

from __future__ import annotations

import functools
import json
import os
import sys

import click
import numpy as np

from .. import _device
from ..model import DEFAULT_MODIFIER_SETTINGS, HISTOSYS_CODES, NORMSYS_CODES
from ..workspace import EXAMPLES, Workspace


def enable_compilation_cache() -> None:
    """Keep compiled kernels between runs (JAX's persistent cache) unless disabled."""
    if os.environ.get("GPUFIT_NO_COMPILATION_CACHE"):
        return
    _device.use_compilation_cache(os.environ.get("GPUFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gpufit", "jax"))


def load_workspace(source: str):
    """``WS``: a workspace file, ``-`` (stdin), or ``example:NAME`` (a bundled example)."""
    if source.startswith("example:"):
        name = source.split(":", 1)[1]
        if name not in EXAMPLES:
            raise click.BadParameter(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
        return Workspace.example(name)
    return Workspace.load(source)


_DEFAULT_CODE = {mtype: setting["interpcode"] for mtype, setting in DEFAULT_MODIFIER_SETTINGS.items()}


def model_options(func):
    """``--measurement``, ``--normsys-code``, ``--histosys-code`` -> ``measurement``,
    ``modifier_settings``."""

    @click.option("--measurement", default=None, help="Measurement name (default: the first).")
    @click.option("--normsys-code", type=click.Choice(NORMSYS_CODES), default=None,
                  help=f"normsys interpolation (pyhf default: {_DEFAULT_CODE['normsys']}).")
    @click.option("--histosys-code", type=click.Choice(HISTOSYS_CODES), default=None,
                  help=f"histosys interpolation (pyhf default: {_DEFAULT_CODE['histosys']}).")
    @functools.wraps(func)
    def wrapper(normsys_code, histosys_code, **kwargs):
        settings = None
        if normsys_code or histosys_code:  # the one not given keeps pyhf's default
            settings = {"normsys": {"interpcode": normsys_code or _DEFAULT_CODE["normsys"]},
                        "histosys": {"interpcode": histosys_code or _DEFAULT_CODE["histosys"]}}
        return func(modifier_settings=settings, **kwargs)

    return wrapper


def workspace_options(func=None, *, grid: bool = False):
    """``WS`` plus ``--measurement``, ``--patch``, ``--patchset/--patch-name``, codes.

    ``grid=True`` (``campaign plan``, which has ``--patches GLOB`` as ``grid_patches``):
    ``--patchset`` without ``--patch-name`` is a grid of every point (of ``--patches``):
    WS is then the background-only workspace, and the command gets ``patchset``,
    ``measurement``, ``modifier_settings`` and ``model=None``; else ``patchset=None``."""
    if func is None:
        return functools.partial(workspace_options, grid=grid)

    @click.argument("workspace", metavar="WS")
    @click.option("--patch", "patches", multiple=True, type=click.Path(exists=True, dir_okay=False),
                  help="JSON patch file to apply to the workspace (repeatable).")
    @click.option("--patchset", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="pyhf patchset (.json or .json.gz); pick the patch with --patch-name.")
    @click.option("--patch-name", default=None, help="Name of the patch in --patchset.")
    @model_options
    @click.option("--backend", type=click.Choice(["jax", "numpy"]), default="jax", show_default=True)
    @click.option("--float32", "single", is_flag=True, help="Single precision (default: float64).")
    @functools.wraps(func)
    def wrapper(workspace, measurement, patches, patchset, patch_name, modifier_settings, backend, single, **kwargs):
        if patch_name and not patchset:
            raise click.UsageError("--patch-name picks a patch of a --patchset; give --patchset FILE too")

        ws = load_workspace(workspace)
        if patches:
            ws = ws.patched(*patches)
        if grid:
            if patchset and not patch_name:
                return func(ws=ws, model=None, data=None, patchset=patchset, measurement=measurement,
                            modifier_settings=modifier_settings, **kwargs)
            if kwargs["grid_patches"]:
                raise click.UsageError("--patches picks the points of a --patchset grid; give --patchset FILE "
                                       "(without --patch-name)")
            kwargs["patchset"] = None
        if patchset:
            if not patch_name:
                raise click.UsageError("--patchset needs --patch-name NAME (the signal point)")
            ws = ws.with_patchset(patchset, patch_name)
        model = ws.model(measurement=measurement, modifier_settings=modifier_settings, backend=backend,
                         dtype="float32" if single else "float64")
        return func(ws=ws, model=model, data=ws.data(model), **kwargs)

    return wrapper


def toy_options(func):
    """``--ntoys --seed --toy-pars --chunk-size --max-failed --quiet`` -> ``toy_options``."""

    @click.option("--ntoys", type=click.IntRange(min=1), default=None,
                  help="Toys per hypothesis (and per mu point); default 2000.")
    @click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None, help="Toy seed, 0 <= S < 2**32; default 0.")
    @click.option("--toy-pars", type=click.Choice(["profiled", "init"]), default=None,
                  help="Generate toys at the conditional fit to the data (default) or at the initial values.")
    @click.option("--chunk-size", type=click.IntRange(min=1), default=None,
                  help="Toys per compiled call (default: from device memory).")
    @click.option("--max-failed", type=click.FloatRange(0.0, 1.0), default=None,
                  help="Largest fraction of toys whose fits may fail after every retry (default 0.01).")
    @click.option("--quiet", is_flag=True, help="No progress bar (also off when stderr is not a terminal).")
    @functools.wraps(func)
    def wrapper(ntoys, seed, toy_pars, chunk_size, max_failed, quiet, calculator, **kwargs):
        given = {"ntoys": ntoys, "seed": seed, "toy_pars": toy_pars, "chunk_size": chunk_size,
                 "max_failed": max_failed}
        options = {k: v for k, v in given.items() if v is not None}
        if calculator != "toys":
            if options:
                raise click.UsageError(f"--{'/--'.join(k.replace('_', '-') for k in options)} need --calculator toys")
            return func(calculator=calculator, toy_options={}, **kwargs)
        options["progress"] = False if quiet else None
        return func(calculator=calculator, toy_options=options, **kwargs)

    return wrapper


def toy_report(p: dict) -> None:
    """The toy lines of a table: failures and timing."""
    info = p.get("info")
    if not info:
        return
    click.echo(
        f"  toys: {info['ntoys']} per hypothesis{' and mu' if 'mus' in p else ''} (seed {info['seed']}, "
        f"{info['toy_pars']}), {info['toys']} toys / {info['fits']} fits in {info['seconds']:.1f} s "
        f"(compile {info['compile_seconds']:.1f} s)"
    )
    if info.get("skipped"):  # one-sided statistics: the fixed-POI fits whose result is 0 by muhat
        click.echo(f"  fixed-POI fits not needed (the statistic is 0 by the free fit's mu-hat): {info['skipped']}")
    retried = info["continued"] + info["restarted"] + info["local_minima"]
    click.echo(
        f"  failed toys: {p['n_failed']} (fits retried: {retried}, of which iminuit: {info['minuit']}; "
        f"at an empty bin's edge: {info['at_edge']}, a lower minimum found for {info['lower_at_edge']}, "
        f"and further along the edge for {info['lower_along_edge']})"
    )


def parse_assignments(values, what: str) -> dict:
    """``("mu=1", "lumi=1.02")`` -> ``{"mu": 1.0, "lumi": 1.02}``."""
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{what} takes NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{what} {name}: {value!r} is not a number") from None
    return out


def parse_range(text: str) -> np.ndarray:
    """``"0:3:7"`` (start:stop:count) or ``"0.5,1,2"`` -> array of POI values.

    Only the syntax is checked here; whether the values make a valid scan (increasing,
    inside the POI's bounds) is the library's rule (``gpufit.infer.intervals.check_grid``).
    """
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 1:
                raise click.BadParameter(f"COUNT in START:STOP:COUNT must be at least 1, got {count}", param_hint="--mus")
            values = np.linspace(start, stop, count)
        else:
            values = np.asarray([float(x) for x in text.split(",")])
    except ValueError:
        raise click.BadParameter(
            f"takes START:STOP:COUNT (e.g. 0:5:11) or comma-separated numbers (e.g. 0.5,1,2), got {text!r}",
            param_hint="--mus",
        ) from None
    if not np.all(np.isfinite(values)):
        raise click.BadParameter(f"values must be finite numbers, got {text!r}", param_hint="--mus")
    return values


def require_gpu_option(func):
    """``--require-gpu``: exit with status 2 before any work when JAX runs on no GPU."""

    @click.option("--require-gpu", is_flag=True, help="Refuse to run (exit 2) unless JAX runs on a GPU.")
    @functools.wraps(func)
    def wrapper(require_gpu, **kwargs):
        if require_gpu:
            _device.require_gpu()
        return func(**kwargs)

    return wrapper


def output_options(func):
    """``--json`` and ``--output-file``: how :func:`emit` writes the command's result."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object (non-finite numbers as null).")
    @click.option("--output-file", type=click.Path(dir_okay=False, writable=True), default=None,
                  help="Also write the JSON object to this file.")
    @functools.wraps(func)
    def wrapper(as_json, output_file, **kwargs):
        if output_file:
            check_writable(output_file, "--output-file")
        ctx = click.get_current_context()
        ctx.meta["gpufit.as_json"], ctx.meta["gpufit.output_file"] = as_json, output_file
        return func(**kwargs)

    return wrapper


def check_writable(path: str, option: str) -> None:
    """Refuse, before any work, an output path whose folder does not exist or cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise click.BadParameter(f"folder {folder!r} does not exist; create it first", param_hint=option)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"folder {folder!r} is not writable", param_hint=option)


def check_plot(path: str | None, option: str = "--plot") -> None:
    """Check ``--plot PATH`` before the computation: matplotlib installed, a known
    image format, a writable folder (a failed plot must not throw away a result)."""
    if not path:
        return
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise click.UsageError(f"{option} needs matplotlib: pip install 'gpufit[plot]'") from None
    check_writable(path, option)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if suffix not in formats:
        raise click.BadParameter(f"{path!r} has no image suffix matplotlib writes; use one of "
                                 f"{', '.join(sorted(formats))}", param_hint=option)


def json_ready(value):
    """``value`` with arrays as lists and non-finite floats as None (strict JSON has no
    NaN or Infinity; gpufit writes null wherever a number is not finite)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def emit(payload: dict, table) -> None:
    """Print ``payload`` as one JSON object (``--json``) or as a table (``table(payload)``),
    and write it to ``--output-file`` when given."""
    ctx = click.get_current_context()
    text = json.dumps(json_ready(payload), allow_nan=False)
    if ctx.meta.get("gpufit.as_json"):
        click.echo(text)
    else:
        table(payload)
    sys.stdout.flush()
    path = ctx.meta.get("gpufit.output_file")
    if path:
        with open(path, "w") as handle:
            handle.write(text + "\n")

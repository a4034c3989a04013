"""Options shared by the commands: the workspace argument, patches, output."""

from __future__ import annotations

import functools
import json
import os
import sys

import click
import numpy as np

EXAMPLES = {
    "sbottom": (
        "atlas_sbottom_ins1748602/RegionA/BkgOnly.json",
        "atlas_sbottom_ins1748602/RegionA/patch.sbottom_1300_205_60.json",
    ),
    "docs": ("pyhf_docs_2-bin_1-channel.json", None),
}


def data_path(relative: str) -> str:
    """Path of a bundled workspace file (``gpufit/data/workspaces/...``)."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "workspaces", relative)


def enable_compilation_cache() -> None:
    """Keep compiled kernels between runs (JAX's persistent cache) unless disabled."""
    if os.environ.get("GPUFIT_NO_COMPILATION_CACHE"):
        return
    import jax

    path = os.environ.get("GPUFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gpufit", "jax"
    )
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
    except OSError:
        pass  # read-only home (e.g. a container): compile every time


def workspace_options(func):
    """``WS`` plus ``--measurement``, ``--patch``, ``--patchset/--patch-name``, codes."""

    @click.argument("workspace", metavar="WS")
    @click.option("--measurement", default=None, help="Measurement name (default: the first).")
    @click.option("--patch", "patches", multiple=True, type=click.Path(exists=True, dir_okay=False),
                  help="JSON patch file to apply to the workspace (repeatable).")
    @click.option("--patchset", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="pyhf patchset (.json or .json.gz); pick the patch with --patch-name.")
    @click.option("--patch-name", default=None, help="Name of the patch in --patchset.")
    @click.option("--normsys-code", type=click.Choice(["code1", "code4"]), default=None,
                  help="normsys interpolation (pyhf default: code4).")
    @click.option("--histosys-code", type=click.Choice(["code0", "code2", "code4p"]), default=None,
                  help="histosys interpolation (pyhf default: code4p).")
    @click.option("--backend", type=click.Choice(["jax", "numpy", "cupy"]), default="jax", show_default=True)
    @click.option("--float32", "single", is_flag=True, help="Single precision (default: float64).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @functools.wraps(func)
    def wrapper(workspace, measurement, patches, patchset, patch_name, normsys_code, histosys_code,
                backend, single, as_json, **kwargs):
        from ..workspace import Workspace

        if workspace.startswith("example:"):
            name = workspace.split(":", 1)[1]
            if name not in EXAMPLES:
                raise click.BadParameter(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
            base, patch = EXAMPLES[name]
            ws = Workspace.load(data_path(base))
            if patch:
                ws = ws.patched(data_path(patch))
        else:
            ws = Workspace.load(workspace)
        if patches:
            ws = ws.patched(*patches)
        if patchset:
            if not patch_name:
                raise click.UsageError("--patchset needs --patch-name NAME (the signal point)")
            ws = ws.with_patchset(patchset, patch_name)
        settings = None
        if normsys_code or histosys_code:
            settings = {
                "normsys": {"interpcode": normsys_code or "code4"},
                "histosys": {"interpcode": histosys_code or "code4p"},
            }
        model = ws.model(measurement=measurement, modifier_settings=settings, backend=backend,
                         dtype="float32" if single else "float64")
        return func(ws=ws, model=model, data=ws.data(model), as_json=as_json, **kwargs)

    return wrapper


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
    """``"0:3:7"`` (start:stop:count) or ``"0.5,1,2"`` -> array of POI values."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise click.BadParameter(f"--mus takes START:STOP:COUNT, got {text!r}")
        return np.linspace(float(parts[0]), float(parts[1]), int(parts[2]))
    return np.asarray([float(x) for x in text.split(",")])


def emit(payload: dict, as_json: bool, table) -> None:
    """Print ``payload`` as JSON or as a human-readable table (``table(payload)``)."""
    if as_json:
        click.echo(json.dumps(payload, default=_jsonable))
    else:
        table(payload)
    sys.stdout.flush()


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")

"""Workspaces: the pyhf JSON format, validated by pyhf's own schema.

``Workspace`` wraps :class:`pyhf.Workspace` (schema validation, measurements, patches,
patchsets) and turns its failures into :class:`~gpufit.InvalidWorkspace` or
:class:`~gpufit.UnknownName` errors that name the JSON path or list the valid names.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import gzip
import io
import json
import multiprocessing
import os
import pickle
import sys
import tempfile
from typing import Any, Iterable, Mapping

import jax
import jsonpatch
import numpy as np
import pyhf

from .exceptions import GpufitError, InvalidWorkspace, UnknownName
from .model import Model, check_channel_values

__all__ = ["Workspace", "read_json", "load_patchset", "inspect_workspace", "bundled_path", "EXAMPLES"]

# published likelihoods bundled with gpufit (gpufit/data/workspaces): name -> (workspace,
# patch, patch name in a patchset or None); Workspace.example(name), `gpufit ... example:NAME`
EXAMPLES = {
    "sbottom": ("atlas_sbottom_ins1748602/RegionA/BkgOnly.json",
                "atlas_sbottom_ins1748602/RegionA/patch.sbottom_1300_205_60.json", None),
    "1lbb": ("atlas_1Lbb_ins1755298/BkgOnly.json", "atlas_1Lbb_ins1755298/patchset.json.gz", "C1N2_Wh_hbb_700_300"),
    "2ljets": ("atlas_2Ljets_hepdata116034_ewk_high/workspace.json", None, None),
    "docs": ("pyhf_docs_2-bin_1-channel.json", None, None),
}


def bundled_path(relative: str = "") -> str:
    """Path of a bundled workspace file (under ``gpufit/data/workspaces``)."""
    return os.path.join(os.path.dirname(__file__), "data", "workspaces", relative)


def read_json(source) -> Any:
    """Read JSON from a path (``.json`` or ``.json.gz``), ``"-"`` (stdin) or a file object."""
    if hasattr(source, "read"):
        text = source.read()
        if isinstance(text, bytes):
            text = text.decode()
        name = getattr(source, "name", "<stream>")
    elif str(source) == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        name = os.fspath(source)
        if not os.path.exists(name):
            raise FileNotFoundError(f"workspace file {name!r} does not exist")
        if os.path.isdir(name):
            raise InvalidWorkspace(f"{name!r} is a directory; give the workspace file in it (.json or .json.gz)",
                                   expected="a file")
        with open(name, "rb") as handle:
            raw = handle.read()
        try:
            if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
                raw = gzip.decompress(raw)
            text = raw.decode()
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise InvalidWorkspace(f"{name} is not a JSON text file (gzipped or not): {err}",
                                   expected="a JSON document") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidWorkspace(
            f"{name} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. "
            "Is the file truncated?",
            path=None,
            expected="a JSON document",
        ) from err


def _schema_error(err: pyhf.exceptions.InvalidSpecification, what: str) -> InvalidWorkspace:
    path = err.path or "<root>"
    parent = err.parent
    expected = None
    validator = getattr(parent, "validator", None)
    if validator is not None:
        expected = f"{validator}: {parent.validator_value!r}"
    instance = json.dumps(err.instance)[:200] if err.instance is not None else "null"
    message = (
        f"invalid {what} at {path}: {parent.message} "
        f"(got {instance}"
        + (f"; the schema asks for {expected}" if expected else "")
        + ")"
    )
    return InvalidWorkspace(message, path=path, expected=expected)


def load_patchset(source) -> pyhf.PatchSet:
    """A :class:`pyhf.PatchSet` from a path (``.json``/``.json.gz``) or a dict."""
    spec = source if isinstance(source, Mapping) else read_json(source)
    try:
        return pyhf.PatchSet(spec)
    except pyhf.exceptions.InvalidSpecification as err:
        raise _schema_error(err, "patchset") from err


def _as_patch(patch) -> jsonpatch.JsonPatch:
    if isinstance(patch, jsonpatch.JsonPatch):
        return patch
    if isinstance(patch, (str, os.PathLike)):
        patch = read_json(patch)
    if isinstance(patch, Mapping) and "patch" in patch:  # one entry of a patchset
        patch = patch["patch"]
    if not isinstance(patch, list):
        raise InvalidWorkspace(
            f"a patch must be a JSON patch (a list of operations), got {type(patch).__name__}",
            expected="a list of JSON patch operations",
        )
    return jsonpatch.JsonPatch(patch)


def _apply_sharing(doc: dict, operations: list) -> dict:
    """``doc`` with the JSON patch ``operations`` applied, sharing every container the
    patch does not touch with ``doc`` (which is left unchanged): the containers on each
    operation's path are copied, nothing else. A deep copy of the ATLAS 1Lbb workspace
    costs 0.1 s, a grid of 125 points 15 s."""
    root = copy.copy(doc)
    mine = {id(root)}
    for op in operations:
        for key in ("path", "from"):
            if key not in op:
                continue
            node = root
            for token in jsonpatch.JsonPointer(op[key]).parts[:-1]:
                index = int(token) if isinstance(node, list) else token
                try:
                    child = node[index]
                except (KeyError, IndexError, ValueError, TypeError):
                    break  # jsonpatch reports the bad path below
                if id(child) not in mine:
                    child = copy.copy(child)
                    mine.add(id(child))
                    node[index] = child
                node = child
    try:
        return jsonpatch.JsonPatch(operations).apply(root, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise InvalidWorkspace(f"patch does not apply to this workspace: {err}") from err


def _point_spec(base: dict, operations, measurement):
    """A point's workspace spec (``base`` patched, sharing what the patch leaves alone),
    its measurement and its model spec."""
    spec = _apply_sharing(base, operations)
    meas = _pick_measurement(spec, measurement)
    return spec, meas, {"channels": spec["channels"], "parameters": meas["config"]["parameters"]}


def _point_modelspec(base: dict, operations, measurement) -> dict:
    return _point_spec(base, operations, measurement)[2]


def build_workers(n_points: int) -> int:
    """How many processes build the models of ``n_points`` signal points: the CPUs this
    process may use, with at least 8 points each (a worker's start-up, about a second
    to import gpufit and read the workspace, is worth it from there)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n_points // 8))


def _built(ws, base, operations, measurement, model_options):
    """``(model, data)`` of one point (holding no pyhf model: a grid holds many), or
    ``(error, None)``."""
    try:
        model, data = ws._point(base, operations, measurement, model_options)
    except GpufitError as err:
        return err, None
    return model.forget_pyhf_model(), data


_WORKER: dict = {}  # a build worker's workspace, its point base and the build options


def _start_worker(spec_path: str, measurement, model_options: dict) -> None:
    jax.config.update("jax_platforms", "cpu")  # a worker builds tables; the device is the parent's
    with open(spec_path, "rb") as handle:
        ws = Workspace(pickle.load(handle), validate=False)  # the parent checked it
    _WORKER.update(ws=ws, base=ws._point_base(), measurement=measurement, options=model_options)


def _worker_point(operations):
    model, data = _built(_WORKER["ws"], _WORKER["base"], operations, _WORKER["measurement"], _WORKER["options"])
    if data is not None:
        model.spec = None  # the parent has the spec (shared with its other points); not sent back
    return model, data


def _points_in_processes(spec, base, patches: list, measurement, model_options: dict, workers: int):
    """The points' ``(model, data)`` (or ``(error, None)``) in order, built by
    ``workers`` spawned processes; each model's spec is made again here from ``base``
    when it is asked for (so that its pyhf model can be built)."""
    workers = min(workers, len(patches))
    context = multiprocessing.get_context("spawn")  # fork would copy JAX's threads
    chunk = max(1, len(patches) // (4 * workers))
    with tempfile.TemporaryDirectory(prefix="gpufit-points-") as folder:
        # the workspace goes by file: a worker reads its start-up arguments only after
        # importing gpufit, and a large argument would hold this process at each start
        path = os.path.join(folder, "workspace.pickle")
        with open(path, "wb") as handle:
            pickle.dump(dict(spec), handle, protocol=pickle.HIGHEST_PROTOCOL)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                      initargs=(path, measurement, model_options))
        try:
            for operations, (model, data) in zip(patches, pool.map(_worker_point, patches, chunksize=chunk)):
                if data is not None:  # its spec: made from the base when asked for (pyhf's model, a pickle)
                    model.spec_from(functools.partial(_point_modelspec, base[0], operations, measurement))
                yield model, data
        except concurrent.futures.process.BrokenProcessPool as err:
            raise GpufitError(
                f"a worker process building the point models died ({err}); build them in this process "
                "(--build-workers 1, or workers=1), or give the job more memory"
            ) from None
        finally:  # a caller that stops early (a bad point) waits for the running chunks only
            pool.shutdown(wait=True, cancel_futures=True)


def _with_arrays(spec: dict) -> dict:
    """A shallow copy of a validated spec whose per-bin lists (sample yields, histosys,
    staterror and shapesys data) are NumPy arrays: pyhf's model deep-copies its spec, and
    copying an array is one memcpy where a list copies every number (half of a 1Lbb
    point's model build). For models built with ``validate=False`` only: the schema
    wants lists."""
    def modifier(m):
        data = m["data"]
        if m["type"] == "histosys":
            data = {"hi_data": np.asarray(data["hi_data"], float), "lo_data": np.asarray(data["lo_data"], float)}
        elif m["type"] in ("staterror", "shapesys"):
            data = np.asarray(data, float)
        return dict(m, data=data)

    out = dict(spec)
    out["channels"] = [dict(c, samples=[dict(x, data=np.asarray(x["data"], float),
                                             modifiers=[modifier(m) for m in x["modifiers"]])
                                        for x in c["samples"]])
                       for c in spec["channels"]]
    return out


class Workspace:
    """A validated HistFactory workspace in the pyhf JSON format.

    >>> ws = Workspace.load("BkgOnly.json").patched("patch.sbottom_1300_205_60.json")
    >>> model = ws.model()
    >>> data = ws.data(model)
    """

    def __init__(self, spec: Mapping, validate: bool = True):
        if not isinstance(spec, Mapping):
            raise InvalidWorkspace(
                f"a workspace spec is a JSON object, got {type(spec).__name__}",
                path="<root>",
                expected="object",
            )
        try:
            self._pyhf = pyhf.Workspace(dict(spec), validate=validate)
        except pyhf.exceptions.InvalidSpecification as err:
            raise _schema_error(err, "workspace") from err
        except (KeyError, TypeError) as err:
            raise InvalidWorkspace(
                f"workspace spec is missing or has a malformed {err}; "
                "run with validate=True to see the JSON path",
            ) from err
        self._check_observations()

    def _check_observations(self) -> None:
        """Every channel has an observation; samples and observations agree on the bin
        count (the odd one out is blamed); every number is finite and of the right sign."""
        channels = self._pyhf["channels"]
        obs_index = {o["name"]: i for i, o in enumerate(self._pyhf["observations"])}
        for index, channel in enumerate(channels):
            name = channel["name"]
            if name not in obs_index:
                raise InvalidWorkspace(
                    f"channel {name!r} has no observation; add one to 'observations'",
                    path="observations",
                    expected=f"an entry named {name!r}",
                )
            observed = self._pyhf["observations"][obs_index[name]]["data"]
            counts = [len(sample["data"]) for sample in channel["samples"]]
            # the bin count most entries agree on (the observation breaks a tie)
            votes = counts + [len(observed)]
            nbins = max(set(votes), key=lambda n: (votes.count(n), n == len(observed)))
            for s_index, sample in enumerate(channel["samples"]):
                if len(sample["data"]) != nbins:
                    raise InvalidWorkspace(
                        f"channels[{index}].samples[{s_index}].data ({sample['name']!r}) has "
                        f"{len(sample['data'])} bins but channel {name!r} has {nbins} "
                        "(its other samples and its observation)",
                        path=f"channels[{index}].samples[{s_index}].data",
                        expected=f"{nbins} bins",
                    )
            path = f"observations[{obs_index[name]}].data"
            if len(observed) != nbins:
                raise InvalidWorkspace(
                    f"{path} of channel {name!r} has {len(observed)} bins but the channel's samples have {nbins}",
                    path=path, expected=f"{nbins} bins",
                )
            values = np.asarray(observed, dtype=float)
            bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
            if bad.size:
                raise InvalidWorkspace(
                    f"{path}[{bad[0]}] (observed count in channel {name!r}) is {values[bad[0]]:g}: "
                    "observations must be finite and >= 0",
                    path=f"{path}[{bad[0]}]", expected="a finite number >= 0",
                )
        check_channel_values(channels)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def load(cls, source, validate: bool = True) -> "Workspace":
        """Read a workspace from a ``.json``/``.json.gz`` path, ``"-"`` (stdin) or a file."""
        return cls(read_json(source), validate=validate)

    @classmethod
    def example(cls, name: str) -> "Workspace":
        """A bundled published likelihood: ``"sbottom"`` (ATLAS sbottom multi-b, RegionA,
        signal 1300_205_60), ``"1lbb"`` (ATLAS 1Lbb, C1N2_Wh_hbb_700_300, 126
        parameters), ``"2ljets"`` (ATLAS 2L+jets electroweak, discovery regions) or
        ``"docs"`` (pyhf's 2-bin documentation example)."""
        if name not in EXAMPLES:
            raise UnknownName("example", name, EXAMPLES)
        base, patch, patch_name = EXAMPLES[name]
        ws = cls.load(bundled_path(base))
        if patch is None:
            return ws
        return ws.with_patchset(bundled_path(patch), patch_name) if patch_name else ws.patched(bundled_path(patch))

    def patched(self, *patches) -> "Workspace":
        """A new workspace with JSON patches applied (paths, lists of operations, or
        entries of a pyhf patchset)."""
        spec = copy.deepcopy(dict(self._pyhf))
        for patch in patches:
            try:
                spec = _as_patch(patch).apply(spec)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise InvalidWorkspace(f"patch does not apply to this workspace: {err}") from err
        return Workspace(spec)

    def with_patchset(self, patchset, name: str) -> "Workspace":
        """A new workspace with the patch ``name`` of a pyhf patchset applied.

        ``patchset`` is a path, a dict or a :class:`pyhf.PatchSet`; unknown names raise
        :class:`~gpufit.UnknownName` listing the valid ones.
        """
        if not isinstance(patchset, pyhf.PatchSet):
            patchset = load_patchset(patchset)
        names = [p.name for p in patchset.patches]
        if name not in names:
            raise UnknownName("patch", name, names)
        try:
            return Workspace(patchset.apply(self._pyhf, name))
        except pyhf.exceptions.PatchSetVerificationError as err:
            raise InvalidWorkspace(f"patchset does not belong to this workspace: {err}") from err

    def signal_points(self, patchset, names=None, measurement: str | None = None, *, workers: int | None = 1,
                      **model_options):
        """The models of the signal points of a pyhf patchset, in the patchset's order.

        The patchset is checked against this workspace once (pyhf's digest
        verification), its schema once; each point's spec is this workspace with the
        patch applied (sharing what the patch leaves alone) and its new samples'
        numbers are checked (:func:`~gpufit.model.check_channel_values`), so a point
        costs its model build only (0.2-0.3 s on 1Lbb instead of 2.5 s), most of it
        pyhf's pure-Python model construction: ``workers`` > 1 builds the points in
        that many worker processes side by side.

        Args:
            patchset: a path, dict or :class:`pyhf.PatchSet`.
            names: patch names (default: all, in the patchset's order).
            measurement, model_options: as :meth:`model`.
            workers: processes building models (None: :func:`build_workers` picks a
                number from the CPUs and the points); 1 builds them in this process.
                The workers are spawned, so a script that asks for them needs Python's
                ``if __name__ == "__main__":`` guard around its work.

        Yields:
            ``(patch, model, data)`` per point (data [N + A]); ``(patch, error, None)``
            where the point's model cannot be built (a :class:`~gpufit.GpufitError`).
        """
        if not isinstance(patchset, pyhf.PatchSet):
            patchset = load_patchset(patchset)
        try:
            patchset.verify(self._pyhf)
        except pyhf.exceptions.PatchSetVerificationError as err:
            raise InvalidWorkspace(f"patchset does not belong to this workspace: {err}") from err
        by_name = {p.name: p for p in patchset.patches}
        names = list(names if names is not None else by_name)
        for name in names:
            if name not in by_name:
                raise UnknownName("patch", name, list(by_name))
        base = self._point_base()
        workers = build_workers(len(names)) if workers is None else int(workers)
        if workers > 1 and len(names) > 1:
            built = _points_in_processes(self._pyhf, base, [by_name[n].patch for n in names], measurement,
                                         model_options, workers)
        else:
            built = (_built(self, base, by_name[n].patch, measurement, model_options) for n in names)
        for name, (model, data) in zip(names, built):
            yield by_name[name], model, data

    def point(self, patch, measurement: str | None = None, **model_options):
        """The model and data [N + A] of this workspace with one JSON patch applied (a
        list of operations, e.g. one point of a patchset that was checked against this
        workspace before), built as :meth:`signal_points` builds each point.

        Raises:
            GpufitError: where the patched workspace makes no model (the JSON path of
                a bad number, or the schema's message).
        """
        return self._point(self._point_base(), patch, measurement, model_options)

    def _point_base(self):
        """This spec with array data, and the ids of its samples (checked already)."""
        base = _with_arrays(dict(self._pyhf))
        return base, {id(sample) for channel in base["channels"] for sample in channel["samples"]}

    def _point(self, base, operations, measurement, model_options):
        base, known = base
        spec, meas, modelspec = _point_spec(base, operations, measurement)
        try:
            check_channel_values(spec["channels"], checked=known)
            model = Model(modelspec, poi_name=meas["config"]["poi"], measurement=meas["name"], validate=False,
                          **model_options)
        except GpufitError:
            raise
        except Exception:  # not a valid spec: let the schema name what is wrong (on lists, as it wants)
            plain = json.loads(json.dumps(spec, default=lambda a: a.tolist()))
            model = Workspace(plain).model(measurement=measurement, **model_options)
        observed = {o["name"]: o["data"] for o in spec["observations"]}
        data = np.asarray([x for c in model.channels for x in observed[c]] + list(model.auxdata), dtype=model.dtype)
        return model, data

    # -- views ------------------------------------------------------------------------
    @property
    def spec(self) -> dict:
        """The workspace as a plain dict (a copy)."""
        return copy.deepcopy(dict(self._pyhf))

    @property
    def pyhf(self) -> pyhf.Workspace:
        """The underlying :class:`pyhf.Workspace`."""
        return self._pyhf

    @property
    def measurement_names(self) -> list[str]:
        return list(self._pyhf.measurement_names)

    @property
    def channels(self) -> list[str]:
        return list(self._pyhf.channels)

    @property
    def samples(self) -> list[str]:
        return list(self._pyhf.samples)

    def digest(self, algorithm: str = "sha256") -> str:
        """A content digest of the spec (key order and whitespace do not matter)."""
        return pyhf.utils.digest(dict(self._pyhf), algorithm=algorithm)

    def _measurement(self, measurement: str | None) -> dict:
        names = self.measurement_names
        if not names:
            raise InvalidWorkspace("workspace has no measurement", path="measurements")
        if measurement is None:
            return self._pyhf.get_measurement()
        if measurement not in names:
            raise UnknownName("measurement", measurement, names)
        return self._pyhf.get_measurement(measurement_name=measurement)

    # -- models -----------------------------------------------------------------------
    def model(
        self,
        measurement: str | None = None,
        patches: Iterable | None = None,
        modifier_settings: Mapping | None = None,
        poi_name: str | None = "__measurement__",
        backend: str = "jax",
        dtype: str = "float64",
    ):
        """Compile the model of a measurement (default: the first).

        ``patches`` are applied to the model spec as in :meth:`pyhf.Workspace.model`;
        ``modifier_settings`` takes pyhf's form, e.g.
        ``{"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}``
        (pyhf's defaults). ``poi_name=None`` builds a POI-less model.
        """
        meas = self._measurement(measurement)
        modelspec = {"channels": self._pyhf["channels"], "parameters": meas["config"]["parameters"]}
        for patch in patches or []:
            try:
                modelspec = _as_patch(patch).apply(modelspec)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise InvalidWorkspace(f"patch does not apply to the model spec: {err}") from err
        if poi_name == "__measurement__":
            poi_name = meas["config"]["poi"]
        return Model(
            modelspec,
            poi_name=poi_name,
            modifier_settings=modifier_settings,
            backend=backend,
            dtype=dtype,
            measurement=meas["name"],
        )

    def data(self, model, include_auxdata: bool = True):
        """Observed main data (channels in the model's order), then auxiliary data.

        Returns a NumPy float array ``[N + A]`` (``[N]`` without auxdata).
        """
        observed = self._pyhf.observations
        missing = [c for c in model.channels if c not in observed]
        if missing:
            raise UnknownName("observation", missing[0], list(observed))
        main = [x for c in model.channels for x in observed[c]]
        values = main + (list(model.auxdata) if include_auxdata else [])
        return np.asarray(values, dtype=model.dtype)

    def __repr__(self) -> str:
        return (
            f"<gpufit.Workspace {len(self.channels)} channels, {len(self.samples)} samples, "
            f"measurements={self.measurement_names}>"
        )

    def to_json(self, path=None, indent: int | None = None) -> str:
        text = json.dumps(dict(self._pyhf), indent=indent, sort_keys=True)
        if path is not None:
            opener = gzip.open if str(path).endswith(".gz") else io.open
            with opener(path, "wt") as handle:
                handle.write(text)
        return text


def _pick_measurement(spec: Mapping, name: str | None) -> dict:
    """A measurement of a spec dict by name (default: the first, as pyhf's)."""
    measurements = spec.get("measurements") or []
    if not measurements:
        raise InvalidWorkspace("workspace has no measurement", path="measurements")
    if name is None:
        return measurements[0]
    for meas in measurements:
        if meas["name"] == name:
            return meas
    raise UnknownName("measurement", name, [m["name"] for m in measurements])


def inspect_workspace(ws: Workspace, measurement: str | None = None) -> dict:
    """What ``gpufit inspect`` shows (as ``pyhf inspect``): channels with their bins and
    samples, modifiers with their types, measurements with their POI, and the parameter
    groups of one measurement (number, constraint, init, bounds, fixed)."""
    spec = ws.pyhf
    meas = ws._measurement(measurement)
    config = spec.model(measurement_name=meas["name"]).config
    modifiers = sorted({(m["name"], m["type"]) for c in spec["channels"] for s in c["samples"] for m in s["modifiers"]})
    parameters = []
    for name in config.par_order:
        paramset = config.param_set(name)
        parameters.append({
            "name": name,
            "n": paramset.n_parameters,
            "constraint": getattr(paramset, "pdf_type", None),
            "init": list(paramset.suggested_init),
            "bounds": [list(b) for b in paramset.suggested_bounds],
            "fixed": bool(paramset.suggested_fixed_as_bool),
        })
    return {
        "channels": [{"name": c["name"], "bins": spec.channel_nbins[c["name"]], "samples": [s["name"] for s in c["samples"]]}
                     for c in spec["channels"]],
        "samples": list(spec.samples),
        "modifiers": [{"name": n, "type": t} for n, t in modifiers],
        "measurements": [{"name": m["name"], "poi": m["config"]["poi"]} for m in spec["measurements"]],
        "measurement": meas["name"],
        "poi": config.poi_name,
        "parameters": parameters,
    }

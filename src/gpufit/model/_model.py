"""``Model``: a compiled HistFactory model with pyhf's parameter conventions."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pyhf

from .._arrays import get_namespace
from .._device import jit
from ..exceptions import InvalidArgument, InvalidShape, InvalidWorkspace, UnknownName, UnspecifiedPOI
from ..likelihood import kernels
from ._checks import check_channel_values, check_poi_scales_something
from ._compile import compile_model
from .interpolation import resolve_modifier_settings

_DTYPES = ("float64", "float32")


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
    if name == "expected_data":
        return jit(kernels.expected_data, static_argnames="include_auxdata")
    return jit(getattr(kernels, name))


def _pyhf_model(modelspec: dict, poi_name, modifier_settings: dict, validate: bool = True) -> pyhf.Model:
    try:
        return pyhf.Model(
            modelspec, poi_name=poi_name, modifier_settings=modifier_settings, validate=validate
        )
    except pyhf.exceptions.InvalidSpecification as err:
        raise InvalidWorkspace(
            f"invalid model spec at {err.path or '<root>'}: {err.parent.message}", path=err.path
        ) from err
    except pyhf.exceptions.InvalidModel as err:
        if poi_name is not None and "parameter of interest" in str(err):
            names = sorted({m["name"] for c in modelspec["channels"] for s in c["samples"] for m in s["modifiers"]})
            raise UnknownName("parameter of interest", poi_name, names) from err
        raise InvalidWorkspace(f"the spec does not form a model: {err}") from err
    except (pyhf.exceptions.InvalidModifier, pyhf.exceptions.InvalidNameReuse) as err:
        raise InvalidWorkspace(f"the spec does not form a model: {err}") from err


class Model:
    """A HistFactory model compiled to static arrays.

    Parameters follow pyhf exactly: ``parameter_names`` equals
    ``pyhf_model.config.par_names``; initial values, bounds, fixed flags and auxiliary
    data are pyhf's. All array methods take any leading batch shape.

    Built by :meth:`gpufit.Workspace.model`; ``Model(modelspec)`` takes the
    ``{"channels": ..., "parameters": ...}`` model spec directly.
    """

    # a grid point's model laid out in the union of the grid's parameters
    # (gpufit.model.in_union): where its own parameters and auxiliary data lie in the
    # union's, (par_map [P_own], aux_map [A_own]); None: the model is in its own layout
    own_layout = None

    def __init__(
        self,
        modelspec: dict,
        poi_name: str | None = None,
        modifier_settings: dict | None = None,
        backend: str = "jax",
        dtype: str = "float64",
        measurement: str | None = None,
        validate: bool = True,
    ):
        if dtype not in _DTYPES:
            raise InvalidArgument(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.modifier_settings = resolve_modifier_settings(modifier_settings)
        self.pyhf_model = _pyhf_model(modelspec, poi_name, self.modifier_settings, validate)
        cfg = self.pyhf_model.config
        if validate:  # False: the caller checked the schema and check_channel_values (a grid's points)
            check_channel_values(modelspec["channels"])
        check_poi_scales_something(modelspec["channels"], cfg.poi_name)
        self.measurement = measurement
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.spec = modelspec
        self.parameter_names: list[str] = list(cfg.par_names)
        self.channels: list[str] = list(cfg.channels)
        self.samples: list[str] = list(cfg.samples)
        self.channel_slices = {c: cfg.channel_slices[c] for c in self.channels}
        self.n_main = int(cfg.nmaindata)
        self.n_aux = int(cfg.nauxdata)
        self.n_pars = int(cfg.npars)
        self.poi_name = cfg.poi_name
        self.poi_index = cfg.poi_index
        self.auxdata = np.asarray(cfg.auxdata, dtype=self.dtype)
        self._init = np.asarray(cfg.suggested_init(), dtype=self.dtype)
        self._bounds = np.asarray(cfg.suggested_bounds(), dtype=self.dtype).reshape(-1, 2)
        self._fixed = np.asarray(cfg.suggested_fixed(), dtype=bool)
        self._groups = {name: cfg.par_slice(name) for name in cfg.par_order}
        self.par_order = list(cfg.par_order)
        host = compile_model(modelspec, cfg, self.modifier_settings, self.dtype)
        self.compiled_numpy = host
        ns = get_namespace(backend)
        self.compiled = host.map_arrays(lambda name, a: ns.put(a))
        self._ns = ns

    @property
    def spec(self) -> dict:
        """The model spec (``{"channels": ..., "parameters": ...}``); for a model whose
        spec was left to a source (:meth:`spec_from`), made when first asked for."""
        if self._spec is None and self._spec_source is not None:
            self._spec, self._spec_source = self._spec_source(), None
        return self._spec

    @spec.setter
    def spec(self, value) -> None:
        self._spec, self._spec_source = value, None

    def spec_from(self, source) -> "Model":
        """Leave the spec to ``source()``, called when the spec is first needed (pyhf's
        model, a pickle): a grid's point models built elsewhere then cost nothing here
        until then."""
        self._spec, self._spec_source = None, source
        return self

    @functools.cached_property
    def pyhf_model(self) -> pyhf.Model:
        """pyhf's model of ``spec``: built with the model (its configuration is pyhf's),
        and built again from ``spec`` when first asked for after unpickling."""
        return _pyhf_model(self.spec, self.poi_name, self.modifier_settings, validate=False)

    def forget_pyhf_model(self) -> "Model":
        """Let go of pyhf's model (built again from ``spec`` when asked for): the models
        of a grid then hold their tables only, not a pyhf model each, whose Python
        objects the garbage collector would walk through every fit of the scan."""
        self.__dict__.pop("pyhf_model", None)
        return self

    def __getstate__(self) -> dict:
        """A pickle carries the NumPy tables and the configuration (a model built in a
        worker process: :meth:`gpufit.Workspace.signal_points`), not pyhf's model nor
        arrays on a device; unpickling puts the tables on the receiving side's default
        device."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("pyhf_model", "compiled", "_ns", "_spec_source")}
        return state | {"_spec": self.spec, "_spec_source": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ns = get_namespace(self.backend)
        self.compiled = self.compiled_numpy.map_arrays(lambda name, a: self._ns.put(a))

    def with_tables(self, host) -> "Model":
        """The same model with other compiled tables ``host`` (NumPy arrays; e.g. padded to
        the shape of a grid, :func:`gpufit.model.pad_models`): a shallow copy."""
        other = copy.copy(self)
        other.compiled_numpy = host
        other.compiled = host.map_arrays(lambda name, a: self._ns.put(a))
        return other

    # -- pyhf-style configuration -----------------------------------------------------
    def suggested_init(self) -> np.ndarray:
        """Initial parameter values [P] (pyhf's ``suggested_init``)."""
        return self._init.copy()

    def suggested_bounds(self) -> np.ndarray:
        """Parameter bounds [P, 2] (pyhf's ``suggested_bounds``)."""
        return self._bounds.copy()

    def fixed_parameters(self) -> np.ndarray:
        """Flags [P] of the parameters the measurement fixes (pyhf's ``suggested_fixed``)."""
        return self._fixed.copy()

    def prior_widths(self) -> np.ndarray:
        """Prior widths [P] of the constrained parameters (pyhf's ``param_set(name).width()``:
        the Gaussian sigma, or 1/sqrt(tau) of a Poisson constraint); NaN for unconstrained
        ones (normfactor, shapefactor). The unit of a pull."""
        host = self.compiled_numpy
        width = np.full(self.n_pars, np.nan)
        width = np.where(host.con_gauss > 0, host.con_sigma, width)
        return np.where(host.con_pois > 0, np.sqrt(1.0 / host.con_tau), width)

    def prior_centers(self) -> np.ndarray:
        """Prior central values [P]: ``suggested_init`` (0 for normsys/histosys, 1 for
        gammas), from which a pull counts."""
        return self.suggested_init().astype(float)

    def parameter_index(self, name: str) -> int:
        """Index of a parameter: ``"mu"``, ``"staterror_SR[2]"`` or a one-component group."""
        if name in self._groups and self._groups[name].stop - self._groups[name].start == 1:
            return self._groups[name].start
        try:
            return self.parameter_names.index(name)
        except ValueError:
            raise UnknownName("parameter", name, self.parameter_names) from None

    def parameter_slice(self, name: str) -> slice:
        """Slice of a parameter group (``"staterror_SR"``) in the parameter vector."""
        if name not in self._groups:
            raise UnknownName("parameter", name, self.par_order)
        return self._groups[name]

    def require_poi(self) -> int:
        if self.poi_index is None:
            raise UnspecifiedPOI(
                "this model has no parameter of interest; build it with "
                "ws.model(poi_name='mu') or name one in the measurement's config.poi"
            )
        return self.poi_index

    # -- kernels ------------------------------------------------------------------------
    def _pars(self, pars):
        pars = self._ns.asarray(pars, dtype=self.dtype)
        if pars.ndim == 0 or pars.shape[-1] != self.n_pars:
            got = pars.shape[-1] if pars.ndim else "a scalar"
            raise InvalidShape(
                f"parameters have length {got} but the model has {self.n_pars} "
                f"({', '.join(self.parameter_names[:5])}{', ...' if self.n_pars > 5 else ''})"
            )
        return pars

    def check_data(self, data):
        """Raise :class:`InvalidShape` unless the last axis of ``data`` is N + A; return it."""
        want = self.n_main + self.n_aux
        if data.ndim == 0 or data.shape[-1] != want:
            got = data.shape[-1] if data.ndim else "a scalar"
            raise InvalidShape(
                f"data have length {got} but the model needs {want} "
                f"({self.n_main} main bins then {self.n_aux} auxiliary data, as ws.data(model) gives)"
            )
        return data

    def _data(self, data):
        return self.check_data(self._ns.asarray(data, dtype=self.dtype))

    def _call(self, name: str, *args, **kwargs):
        if self.backend == "jax":
            return _jitted(name)(self.compiled, *args, **kwargs)
        return getattr(kernels, name)(self.compiled, *args, **kwargs)

    def expected_data(self, pars, include_auxdata: bool = True):
        """Expected counts: pars [..., P] -> [..., N + A] (or [..., N])."""
        return self._call("expected_data", self._pars(pars), include_auxdata=include_auxdata)

    def expected_main(self, pars):
        """Expected main-bin counts: pars [..., P] -> [..., N]."""
        return self._call("expected_main", self._pars(pars))

    def logpdf(self, pars, data):
        """log L: pars [..., P], data [..., N + A] -> [...], equal to pyhf's ``logpdf``."""
        return self._call("logpdf", self._pars(pars), self._data(data))

    def twice_nll(self, pars, data):
        """-2 log L: pars [..., P], data [..., N + A] -> [...]."""
        return self._call("twice_nll", self._pars(pars), self._data(data))

    def __repr__(self) -> str:
        return (
            f"<gpufit.Model {len(self.channels)} channels, {self.n_main} bins, {self.n_pars} "
            f"parameters, poi={self.poi_name!r}, backend={self.backend}, dtype={self.dtype}>"
        )

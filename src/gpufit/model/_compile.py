"""Compile a HistFactory model spec into the dense arrays of a :class:`CompiledModel`.

pyhf's ``_ModelConfig`` is the authority on parameters: their order (``par_names``),
slices, initial values, bounds, fixed flags, auxiliary data and constraint widths. This
module only lays the spec's samples and modifiers out as index tables over those
parameters, once, in NumPy.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..exceptions import InvalidWorkspace
from ._compiled import CompiledModel
from ._tables import constraint_fields, layout_tables
from .interpolation import code4_coefficients

_PER_BIN = ("staterror", "shapesys", "shapefactor")
# staterror/shapesys components follow the bins they act on, in global order (pyhf's
# _reindex_access_field); a shapefactor shared by channels couples bin b of each
_MASKED = ("staterror", "shapesys")
_SCALAR_FACTORS = ("normfactor", "lumi")


def _modifier_bins(spec_channels: dict, config) -> dict:
    """(type, name) -> sorted global main-bin indices where a staterror/shapesys acts."""
    bins: dict = defaultdict(set)
    for channel in config.channels:
        start = config.channel_slices[channel].start
        for sample in spec_channels[channel]["samples"]:
            for mod in sample["modifiers"]:
                if mod["type"] in _MASKED:
                    bins[(mod["type"], mod["name"])].update(
                        range(start, start + config.channel_nbins[channel])
                    )
    return {key: sorted(value) for key, value in bins.items()}


def _rounded_up(n: int) -> int:
    """``n`` rounded up to a step of 1/16 to 1/32 of it (counts below 32 as they are)."""
    step = 1 << max(0, n.bit_length() - 5)
    return -(-n // step) * step


def compile_model(modelspec: dict, config, modifier_settings: dict, dtype) -> CompiledModel:
    """Build the NumPy arrays of a model. ``config`` is the pyhf model's ``config``."""
    spec_channels = {c["name"]: c for c in modelspec["channels"]}
    n_main = config.nmaindata
    per_bin = _modifier_bins(spec_channels, config)
    for (mtype, name), gbins in per_bin.items():
        npar = config.param_set(name).n_parameters
        if npar != len(gbins):
            raise InvalidWorkspace(
                f"{mtype} modifier {name!r} acts on {len(gbins)} bins but its parameter has "
                f"{npar} components; a {mtype} shared across channels must cover one "
                "channel's bins (rename one of them)"
            )
    position = {key: {g: i for i, g in enumerate(gbins)} for key, gbins in per_bin.items()}

    nominal, bin_of = [], []
    factor_rows, delta_rows = [], []
    norm_par, norm_hi, norm_lo = [], [], []
    hist_par, hist_up, hist_down = [], [], []
    npars = config.npars

    for channel in config.channels:
        start = config.channel_slices[channel].start
        nbins = config.channel_nbins[channel]
        for sample in spec_channels[channel]["samples"]:
            nom = np.asarray(sample["data"], dtype=float)
            rows_f = [[] for _ in range(nbins)]
            rows_d = [[] for _ in range(nbins)]
            for mod in sample["modifiers"]:
                mtype, name = mod["type"], mod["name"]
                first = config.par_slice(name).start
                if mtype in _SCALAR_FACTORS:
                    for row in rows_f:
                        row.append(first)
                elif mtype in _MASKED:
                    where = position[(mtype, name)]
                    for b, row in enumerate(rows_f):
                        row.append(first + where[start + b])
                elif mtype == "shapefactor":
                    if nbins > config.param_set(name).n_parameters:
                        raise InvalidWorkspace(
                            f"shapefactor {name!r} has {config.param_set(name).n_parameters} "
                            f"components but channel {channel!r} has {nbins} bins"
                        )
                    for b, row in enumerate(rows_f):
                        row.append(first + b)
                elif mtype == "normsys":
                    term = len(norm_par)
                    norm_par.append(first)
                    norm_hi.append(float(mod["data"]["hi"]))
                    norm_lo.append(float(mod["data"]["lo"]))
                    for row in rows_f:
                        row.append(npars + term)
                elif mtype == "histosys":
                    hi = np.asarray(mod["data"]["hi_data"], dtype=float)
                    lo = np.asarray(mod["data"]["lo_data"], dtype=float)
                    if hi.shape != nom.shape or lo.shape != nom.shape:
                        raise InvalidWorkspace(
                            f"histosys {name!r} of sample {sample['name']!r} in channel "
                            f"{channel!r} has hi_data/lo_data of {hi.size}/{lo.size} bins but "
                            f"the sample has {nom.size}"
                        )
                    for b, row in enumerate(rows_d):
                        if hi[b] == nom[b] and lo[b] == nom[b]:
                            continue  # no shift in this bin, whatever the code
                        row.append(len(hist_par))
                        hist_par.append(first)
                        hist_up.append(hi[b] - nom[b])
                        hist_down.append(nom[b] - lo[b])
                else:  # pragma: no cover - the schema admits only the seven types
                    raise InvalidWorkspace(f"unknown modifier type {mtype!r} ({name!r})")
            nominal.extend(nom)
            bin_of.extend(range(start, start + nbins))
            factor_rows.extend(rows_f)
            delta_rows.extend(rows_d)

    # the term counts rounded up with inert terms (the factor 1, the shift 0; no entry
    # points at them): the points of a patchset carry a few more or fewer signal terms
    # (sbottom's: 1,489 to 1,500 histosys terms), and rounded up they share one shape,
    # so one compiled kernel serves them all instead of one compilation per point
    n_norm, n_hist = _rounded_up(len(norm_par)), _rounded_up(len(hist_par))
    for terms, inert, count in ((norm_par, 0, n_norm), (norm_hi, 1.0, n_norm), (norm_lo, 1.0, n_norm),
                                (hist_par, 0, n_hist), (hist_up, 0.0, n_hist), (hist_down, 0.0, n_hist)):
        terms.extend([inert] * (count - len(terms)))
    n_terms = len(norm_par)
    factor_pad = npars + n_terms  # index of the trailing 1.0
    delta_pad = len(hist_par)  # index of the trailing 0.0
    width_f = max([len(r) for r in factor_rows] + [1])
    width_d = max([len(r) for r in delta_rows] + [1])
    factor_index = np.full((len(nominal), width_f), factor_pad, dtype=np.int32)
    delta_index = np.full((len(nominal), width_d), delta_pad, dtype=np.int32)
    for k, row in enumerate(factor_rows):
        factor_index[k, : len(row)] = row
    for k, row in enumerate(delta_rows):
        delta_index[k, : len(row)] = row

    bin_matrix = np.zeros((len(nominal), n_main))
    bin_matrix[np.arange(len(nominal)), bin_of] = 1.0

    norm_hi_a = np.asarray(norm_hi, dtype=float)
    norm_lo_a = np.asarray(norm_lo, dtype=float)
    coef = code4_coefficients(norm_hi_a, norm_lo_a) if n_terms else np.zeros((0, 6))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_hi, log_lo = np.log(norm_hi_a), np.log(norm_lo_a)

    gauss_par, gauss_aux, gauss_sigma = [], [], []
    pois_par, pois_aux, pois_tau = [], [], []
    offset = 0
    for name in config.auxdata_order:
        pset = config.param_set(name)
        first = config.par_slice(name).start
        count = pset.n_parameters
        if pset.pdf_type == "normal":
            sigmas = getattr(pset, "sigmas", None)
            sigmas = [1.0] * count if sigmas is None else list(sigmas)
            gauss_par.extend(range(first, first + count))
            gauss_aux.extend(range(offset, offset + count))
            gauss_sigma.extend(sigmas)
        elif pset.pdf_type == "poisson":
            pois_par.extend(range(first, first + count))
            pois_aux.extend(range(offset, offset + count))
            pois_tau.extend(pset.factors)
        else:  # pragma: no cover
            raise InvalidWorkspace(f"constraint type {pset.pdf_type!r} of {name!r} is not supported")
        offset += count
    n_aux = offset
    aux_order = np.empty(n_aux, dtype=np.int32)
    aux_order[np.asarray(gauss_aux + pois_aux, dtype=np.int64)] = np.arange(n_aux)

    constrained_mask = np.zeros(npars, dtype=bool)
    constrained_mask[gauss_par + pois_par] = True

    def ints(values):
        return np.asarray(values, dtype=np.int32)

    def floats(values):
        return np.asarray(values, dtype=dtype)

    layout = layout_tables(factor_index, delta_index, bin_of, npars, norm_par, hist_par, n_main)
    return CompiledModel(
        nominal=floats(nominal),
        bin_matrix=floats(bin_matrix),
        factor_index=factor_index,
        delta_index=delta_index,
        normsys_par=ints(norm_par),
        normsys_log_hi=floats(log_hi),
        normsys_log_lo=floats(log_lo),
        normsys_coef=floats(coef).reshape(n_terms, 6),
        histosys_par=ints(hist_par),
        histosys_up=floats(hist_up),
        histosys_down=floats(hist_down),
        gauss_par=ints(gauss_par),
        gauss_sigma=floats(gauss_sigma),
        pois_par=ints(pois_par),
        pois_tau=floats(pois_tau),
        aux_order=aux_order,
        **layout,
        **constraint_fields(npars, n_aux, (gauss_par, gauss_aux, gauss_sigma), (pois_par, pois_aux, pois_tau),
                            constrained_mask, layout, n_main, dtype),
        normsys_code=modifier_settings["normsys"]["interpcode"],
        histosys_code=modifier_settings["histosys"]["interpcode"],
        n_main=int(n_main),
    )

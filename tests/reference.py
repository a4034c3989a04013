"""A slow, obviously-correct NumPy HistFactory logpdf: one loop over channels, samples
and modifiers, straight from the spec, with pyhf's formulas written out."""

from __future__ import annotations

import math

import numpy as np


def _interp_factor(code, alpha, hi, lo):
    if code == "code1":
        return hi**alpha if alpha > 0 else lo ** (-alpha)
    if alpha >= 1:
        return hi**alpha
    if alpha <= -1:
        return lo ** (-alpha)
    # code4: solve the 6x6 system for the polynomial coefficients
    a = np.array([
        [1, 1, 1, 1, 1, 1], [-1, 1, -1, 1, -1, 1], [1, 2, 3, 4, 5, 6], [1, -2, 3, -4, 5, -6],
        [0, 2, 6, 12, 20, 30], [0, 2, -6, 12, -20, 30]], dtype=float)
    b = np.array([hi - 1, lo - 1, math.log(hi) * hi, -math.log(lo) * lo, math.log(hi) ** 2 * hi,
                  math.log(lo) ** 2 * lo])
    coef = np.linalg.solve(a, b)
    return 1 + sum(coef[i] * alpha ** (i + 1) for i in range(6))


def _interp_delta(code, alpha, nom, hi, lo):
    up, down = hi - nom, nom - lo
    if code == "code0":
        return alpha * up if alpha > 0 else alpha * down
    if code == "code2":
        a, b = 0.5 * (hi + lo) - nom, 0.5 * (hi - lo)
        if alpha > 1:
            return (b + 2 * a) * (alpha - 1)
        if alpha < -1:
            return (b - 2 * a) * alpha  # pyhf 0.7's vectorized code2 (ROOT: -(b-2a)(x+1)+lo-nom)
        return a * alpha * alpha + b * alpha
    if alpha > 1:
        return alpha * up
    if alpha < -1:
        return alpha * down
    s, a = 0.5 * (up + down), 0.0625 * (up - down)
    return alpha * (s + alpha * a * (15 + alpha * alpha * (-10 + alpha * alpha * 3)))


def reference_logpdf(model, pars, data) -> float:
    """log L of a gpufit Model at one parameter point, computed from ``model.spec``."""
    pars = np.asarray(pars, dtype=float)
    data = np.asarray(data, dtype=float)
    codes = model.modifier_settings
    value = 0.0
    channels = {c["name"]: c for c in model.spec["channels"]}
    offset = 0
    for cname in model.channels:
        channel = channels[cname]
        nbins = len(channel["samples"][0]["data"])
        expected = np.zeros(nbins)
        for sample in channel["samples"]:
            for b in range(nbins):
                nom = sample["data"][b]
                total, factor = nom, 1.0
                for mod in sample["modifiers"]:
                    kind, name = mod["type"], mod["name"]
                    if kind in ("normfactor", "lumi"):
                        factor *= pars[model.parameter_index(name)]
                    elif kind in ("staterror", "shapesys", "shapefactor"):
                        factor *= pars[model.parameter_slice(name)][b]
                    elif kind == "normsys":
                        alpha = pars[model.parameter_index(name)]
                        factor *= _interp_factor(codes["normsys"]["interpcode"], alpha, mod["data"]["hi"], mod["data"]["lo"])
                    elif kind == "histosys":
                        alpha = pars[model.parameter_index(name)]
                        total += _interp_delta(codes["histosys"]["interpcode"], alpha, nom,
                                               mod["data"]["hi_data"][b], mod["data"]["lo_data"][b])
                expected[b] += total * factor
        for b in range(nbins):
            n, nu = data[offset + b], expected[b]
            value += (n * math.log(nu) if n > 0 else 0.0) - nu - math.lgamma(n + 1)
        offset += nbins
    # constraints, in pyhf's auxdata order
    cfg = model.pyhf_model.config
    aux = data[model.n_main:]
    a = 0
    for name in cfg.auxdata_order:
        pset = cfg.param_set(name)
        sl = cfg.par_slice(name)
        for i in range(pset.n_parameters):
            theta = pars[sl][i]
            if pset.pdf_type == "normal":
                sigma = (pset.sigmas or [1.0] * pset.n_parameters)[i] if getattr(pset, "sigmas", None) is not None else 1.0
                value += -0.5 * ((aux[a] - theta) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
            else:
                rate = theta * pset.factors[i]
                value += aux[a] * math.log(rate) - rate - math.lgamma(aux[a] + 1)
            a += 1
    return value

"""Interpolation codes for normsys (multiplicative) and histosys (additive) modifiers,
as pyhf's ``interpolators`` define them (CERN-OPEN-2012-016):

========  =========  ====================================================================
code      modifier   between -1 and +1            beyond
========  =========  ====================================================================
code0     histosys   piecewise linear             linear
code1     normsys    piecewise exponential        exponential
code2     histosys   quadratic a x^2 + b x        linear: (b + 2a)(x - 1), (b - 2a) x
code4     normsys    6th-order polynomial         exponential
code4p    histosys   6th-order polynomial         linear
========  =========  ====================================================================

pyhf's defaults are code4 (normsys) and code4p (histosys).

code2 follows what pyhf 0.7 computes (its vectorized ``code2``), so that likelihoods
agree number for number: beyond +1 it extrapolates ``(b + 2a)(x - 1)`` and below -1
``(b - 2a) x``. ROOT's ``PiecewiseInterpolation`` code 2 adds the value at the edge,
``(b + 2a)(x - 1) + hi - nom`` and ``-(b - 2a)(x + 1) + lo - nom``, and is continuous;
pyhf's (and so gpufit's) code2 jumps at |x| = 1. Prefer code0 or code4p.

This module holds what is settled when a model is compiled: the codes, pyhf's defaults
and the code4 coefficients. The kernels themselves are in
:mod:`gpufit.likelihood.interpolation`.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InvalidInterpCode

NORMSYS_CODES = ("code1", "code4")
HISTOSYS_CODES = ("code0", "code2", "code4p")
DEFAULT_MODIFIER_SETTINGS = {
    "normsys": {"interpcode": "code4"},
    "histosys": {"interpcode": "code4p"},
}
# what pyhf uses for a type that modifier_settings leaves out
_PYHF_TYPE_DEFAULTS = {"normsys": "code1", "histosys": "code0"}

# pyhf's A^-1 for the code4 polynomial with alpha0 = 1 (interpolators/code4.py)
_CODE4_A_INVERSE = np.array(
    [
        [15.0 / 16, -15.0 / 16, -7.0 / 16, -7.0 / 16, 1.0 / 16, -1.0 / 16],
        [3.0 / 2, 3.0 / 2, -9.0 / 16, 9.0 / 16, 1.0 / 16, 1.0 / 16],
        [-5.0 / 8, 5.0 / 8, 5.0 / 8, 5.0 / 8, -1.0 / 8, 1.0 / 8],
        [3.0 / -2, 3.0 / -2, -7.0 / -8, 7.0 / -8, -1.0 / 8, -1.0 / 8],
        [3.0 / 16, -3.0 / 16, -3.0 / 16, -3.0 / 16, 1.0 / 16, -1.0 / 16],
        [1.0 / 2, 1.0 / 2, -5.0 / 16, 5.0 / 16, 1.0 / 16, 1.0 / 16],
    ]
)


def normalize_code(mtype: str, code) -> str:
    """``4``, ``"4"``, ``"code4"`` -> ``"code4"``; raises for codes pyhf does not allow."""
    allowed = NORMSYS_CODES if mtype == "normsys" else HISTOSYS_CODES
    text = str(code)
    name = text if text.startswith("code") else f"code{text}"
    if name not in allowed:
        raise InvalidInterpCode(
            f"interpolation code {code!r} is not available for {mtype} modifiers; "
            f"choose one of {', '.join(allowed)} (pyhf's rules)"
        )
    return name


def resolve_modifier_settings(modifier_settings) -> dict:
    """pyhf's semantics: None -> code4/code4p; a given dict replaces the defaults, and a
    type it leaves out falls back to code1 (normsys) / code0 (histosys)."""
    if modifier_settings is None:
        modifier_settings = DEFAULT_MODIFIER_SETTINGS
    unknown = set(modifier_settings) - set(_PYHF_TYPE_DEFAULTS)
    if unknown:
        raise InvalidInterpCode(
            f"modifier_settings has entries for {sorted(unknown)}; only 'normsys' and "
            "'histosys' take an interpolation code"
        )
    resolved = {}
    for mtype, fallback in _PYHF_TYPE_DEFAULTS.items():
        code = dict(modifier_settings.get(mtype, {})).get("interpcode", fallback)
        resolved[mtype] = {"interpcode": normalize_code(mtype, code)}
    return resolved


def code4_coefficients(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Polynomial coefficients a_1..a_6 [T, 6] of code4 for factors ``hi``/``lo`` [T]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_hi, log_lo = np.log(hi), np.log(lo)
    b = np.stack([hi - 1.0, lo - 1.0, log_hi * hi, -log_lo * lo, log_hi**2 * hi, log_lo**2 * lo])
    return np.einsum("rc,ct->tr", _CODE4_A_INVERSE, b)

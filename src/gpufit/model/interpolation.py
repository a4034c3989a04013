"""Interpolation codes for normsys (multiplicative) and histosys (additive) modifiers.

Pure element-wise functions of arrays, with the same formulas and case boundaries as
pyhf's ``interpolators`` (which follow CERN-OPEN-2012-016):

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

Each function takes the nuisance parameters ``alpha`` [..., T] and per-term constants
[T] (or [T, 6] for code4 coefficients) and returns [..., T].
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


def normsys_factor(xp, code: str, alpha, hi, lo, coef):
    """Multiplicative factor of each normsys term: [..., T]."""
    up = xp.power(hi, alpha)
    down = xp.power(lo, -alpha)
    if code == "code1":
        return xp.where(alpha > 0, up, down)
    # code4: 1 + sum_i a_i alpha^i inside, exponential at and beyond |alpha| = 1
    poly = 1.0 + alpha * (
        coef[:, 0]
        + alpha * (coef[:, 1] + alpha * (coef[:, 2] + alpha * (coef[:, 3] + alpha * (coef[:, 4] + alpha * coef[:, 5]))))
    )
    return xp.where(alpha >= 1.0, up, xp.where(alpha > -1.0, poly, down))


def histosys_delta(xp, code: str, alpha, up, down):
    """Additive shift of each histosys term: [..., T]; ``up = hi - nom``, ``down = nom - lo``."""
    if code == "code0":
        return xp.where(alpha > 0, alpha * up, alpha * down)
    if code == "code2":
        a = 0.5 * (up - down)
        b = 0.5 * (up + down)
        inside = a * alpha * alpha + b * alpha
        return xp.where(
            alpha > 1.0, (b + 2 * a) * (alpha - 1.0), xp.where(alpha >= -1.0, inside, (b - 2 * a) * alpha)
        )
    # code4p
    s = 0.5 * (up + down)
    a = 0.0625 * (up - down)
    a2 = alpha * alpha
    inside = alpha * s + a2 * a * (15.0 + a2 * (3.0 * a2 - 10.0))
    return xp.where(alpha > 1.0, alpha * up, xp.where(alpha < -1.0, alpha * down, inside))

"""Interpolation kernels: normsys factors and histosys shifts, with their derivatives.

Pure element-wise functions of arrays (any namespace ``xp``: NumPy or JAX) with the
formulas and case boundaries of pyhf's ``interpolators`` (CERN-OPEN-2012-016); the
codes, their defaults and the code4 coefficients are compile-time matters of
:mod:`gpufit.model.interpolation`.

Each function takes the nuisance parameters ``alpha`` [..., T] and per-term constants
[T] (or [T, 6] for code4 coefficients) and returns a list of ``order + 1`` arrays
[..., T]: the value, then its first and second derivatives in ``alpha``. At a kink
(code1 and code0 at 0) the derivatives are the right derivatives.

normsys factors take ``log(hi)`` and ``log(lo)``: the exponential branch is one
``exp`` per term, shared by the value and both derivatives (``hi ** alpha`` and
``lo ** -alpha`` and their derivatives cost twelve transcendental calls per term, most
of a 1Lbb step).
"""

from __future__ import annotations


def normsys(xp, code: str, alpha, log_hi, log_lo, coef, order: int = 0):
    """Multiplicative factor of each normsys term and its derivatives: [..., T] each."""
    up = alpha >= 0
    slope = xp.where(up, log_hi, -log_lo)  # d log(factor) / d alpha on the exponential branch
    expo = xp.exp(alpha * slope)
    out = [expo, expo * slope, expo * slope * slope][: order + 1]
    if code == "code1":
        return out
    # code4: 1 + sum_i a_i alpha^i strictly inside (-1, 1), exponential at and beyond
    a1, a2, a3, a4, a5, a6 = (coef[:, i] for i in range(6))
    poly = [
        1.0 + alpha * (a1 + alpha * (a2 + alpha * (a3 + alpha * (a4 + alpha * (a5 + alpha * a6))))),
        a1 + alpha * (2 * a2 + alpha * (3 * a3 + alpha * (4 * a4 + alpha * (5 * a5 + alpha * 6 * a6)))),
        2 * a2 + alpha * (6 * a3 + alpha * (12 * a4 + alpha * (20 * a5 + alpha * 30 * a6))),
    ]
    inside = (alpha > -1.0) & (alpha < 1.0)
    return [xp.where(inside, p, e) for p, e in zip(poly, out)]


def histosys(xp, code: str, alpha, up, down, order: int = 0):
    """Additive shift of each histosys term and its derivatives: [..., T] each;
    ``up = hi - nom``, ``down = nom - lo``."""
    if code == "code0":
        side = xp.where(alpha >= 0, up, down)
        return [alpha * side, side, 0.0 * side][: order + 1]
    if code == "code2":
        a = 0.5 * (up - down)
        b = 0.5 * (up + down)
        above, below = alpha > 1.0, alpha < -1.0
        value = xp.where(above, (b + 2 * a) * (alpha - 1.0), xp.where(below, (b - 2 * a) * alpha, (a * alpha + b) * alpha))
        first = xp.where(above, b + 2 * a, xp.where(below, b - 2 * a, 2 * a * alpha + b))
        second = xp.where(above | below, 0.0, 2 * a)
        return [value, first, second][: order + 1]
    # code4p: a 6th-order polynomial inside [-1, 1], linear beyond
    s = 0.5 * (up + down)
    a = 0.0625 * (up - down)
    a2 = alpha * alpha
    outside = (alpha > 1.0) | (alpha < -1.0)
    side = xp.where(alpha > 1.0, up, down)
    value = xp.where(outside, alpha * side, alpha * s + a2 * a * (15.0 + a2 * (3.0 * a2 - 10.0)))
    first = xp.where(outside, side, s + a * alpha * (30.0 + a2 * (18.0 * a2 - 40.0)))
    second = xp.where(outside, 0.0, a * (30.0 + a2 * (90.0 * a2 - 120.0)))
    return [value, first, second][: order + 1]

"""Pseudo-experiments ("toys") drawn on the device with JAX's counter-based RNG.

Every toy has its own key, derived from ``(seed, hypothesis, mu index, toy index)``
only (:func:`toy_keys`), so a toy is the same whatever batch, chunk, executor or worker
draws it. Each toy is sampled as pyhf's ``Model.make_pdf(pars).sample()`` does:

* main data: Poisson(nu_b(pars)) (:func:`poisson`: each bin from its own key, so that a
  GPU and a CPU draw the same counts);
* Gaussian constraints: Normal(theta, sigma) for normsys, histosys, lumi, staterror;
* Poisson constraints: Poisson(gamma * tau) for shapesys,

laid out as main bins then auxiliary data in pyhf's order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..likelihood.kernels import expected_main

SIGNAL_PLUS_BACKGROUND, BACKGROUND_ONLY = 0, 1


def toy_keys(seed: int, hypothesis, mu_index, toy_index):
    """Keys of toys: hypothesis, mu_index, toy_index are int arrays of one shape [T].

    Returns:
        [T] typed PRNG keys (threefry, the same bits on every backend).
    """
    root = jax.random.key(seed)

    def one(h, i, t):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, h), i), t)

    return jax.vmap(one)(
        jnp.asarray(hypothesis, jnp.uint32), jnp.asarray(mu_index, jnp.uint32), jnp.asarray(toy_index, jnp.uint32)
    )


_MAX_ROUNDS = 1000  # loop bound: Knuth needs ~lam + 1 < 11 rounds, PTRS accepts ~90% per round


def _poisson_small(key, lam):
    """One Poisson draw for 0 <= lam < 10 (Knuth: unit-rate arrivals up to time lam)."""

    def body(state):
        i, k, t = state
        u = jax.random.uniform(jax.random.fold_in(key, i), (), jnp.float64)
        return i + 1, k + 1, t - jnp.log1p(-u)  # -log(1 - u): an Exp(1) waiting time, u in [0, 1)

    _, k, _ = jax.lax.while_loop(lambda s: (s[2] <= lam) & (s[0] < _MAX_ROUNDS), body,
                                 (jnp.int64(0), jnp.int64(-1), jnp.float64(0.0)))
    return k


def _poisson_large(key, lam):
    """One Poisson draw for lam >= 10: Hormann's transformed rejection (PTRS), the
    algorithm of numpy and JAX, keeping the first accepted proposal."""
    log_lam = jnp.log(lam)
    b = 0.931 + 2.53 * jnp.sqrt(lam)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)

    def body(state):
        i, _, _ = state
        u, v = jax.random.uniform(jax.random.fold_in(key, i), (2,), jnp.float64)
        u = u - 0.5
        us = 0.5 - jnp.abs(u)
        k = jnp.floor((2.0 * a / us + b) * u + lam + 0.43)
        s = jnp.log(v * inv_alpha / (a / (us * us) + b))
        t = -lam + k * log_lam - jax.scipy.special.gammaln(k + 1.0)
        accept = ((us >= 0.07) & (v <= v_r)) | (~((k < 0) | ((us < 0.013) & (v > us))) & (s <= t))
        return i + 1, k, accept

    _, k, _ = jax.lax.while_loop(lambda s: ~s[2] & (s[0] < _MAX_ROUNDS), body,
                                 (jnp.int64(0), jnp.float64(-1.0), jnp.bool_(False)))
    return k.astype(jnp.int64)


def poisson(key, lam):
    """Poisson counts [...] (float64) for rates ``lam`` [...], element i from
    ``fold_in(key, i)`` alone; NaN where a rate is NaN, infinite or negative.

    ``jax.random.poisson`` draws a whole array in one rejection loop and keeps each
    element's *last* accepted proposal, so a last-digit difference in one element's
    ``lgamma`` (a GPU's against a CPU's) changes the loop's length and every count of the
    array. Here each element runs its own loop and keeps its first accepted proposal: a
    count depends on (key, i, lam) only, and two devices part ways only where a uniform
    lands within rounding of an acceptance boundary (~1e-15 per draw).
    """
    lam = jnp.asarray(lam, jnp.float64)
    flat = lam.reshape(-1)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(flat.size, dtype=jnp.uint32))

    def one(k, rate):
        valid = jnp.isfinite(rate) & (rate >= 0)
        small = rate < 10.0
        draw = jnp.where(small, _poisson_small(k, jnp.where(small, rate, 0.0)),
                         _poisson_large(k, jnp.where(small | ~valid, 1e5, rate)))
        # a NaN, infinite or negative rate (a broken model) gives a NaN count, never a number
        return jnp.where(valid, jnp.where(rate > 0, draw, 0).astype(jnp.float64), jnp.nan)

    return jax.vmap(one)(keys, flat).reshape(lam.shape)


def sample_one(m, pars, key):
    """One toy dataset [N + A] at parameters ``pars`` [P] from ``key``."""
    k_main, k_gauss, k_pois = jax.random.split(key, 3)
    dtype = pars.dtype
    nu = jnp.maximum(expected_main(m, pars), 0.0)
    main = poisson(k_main, nu).astype(dtype)
    mean = pars[m.gauss_par]
    gauss = mean + m.gauss_sigma * jax.random.normal(k_gauss, mean.shape, dtype)
    rate = jnp.maximum(pars[m.pois_par] * m.pois_tau, 0.0)
    pois = poisson(k_pois, rate).astype(dtype)
    aux = jnp.concatenate([gauss, pois])[m.aux_order]
    return jnp.concatenate([main, aux])


def sample_toys(m, pars, keys):
    """Toys for many keys: pars [T, P] (or [P]), keys [T] -> data [T, N + A]."""
    pars = jnp.broadcast_to(pars, keys.shape + pars.shape[-1:])
    return jax.vmap(lambda p, k: sample_one(m, p, k))(pars, keys)

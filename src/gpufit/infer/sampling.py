"""Pseudo-experiments ("toys") drawn on the device with JAX's counter-based RNG.

Every toy has its own key, derived from ``(seed, hypothesis, mu index, toy index)``
only (:func:`toy_keys`), so a toy is the same whatever batch, chunk, executor or worker
draws it. Each toy is sampled as pyhf's ``Model.make_pdf(pars).sample()`` does:

* main data: Poisson(nu_b(pars));
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


def sample_one(m, pars, key):
    """One toy dataset [N + A] at parameters ``pars`` [P] from ``key``."""
    k_main, k_gauss, k_pois = jax.random.split(key, 3)
    dtype = pars.dtype
    nu = jnp.maximum(expected_main(m, pars), 0.0)
    main = jax.random.poisson(k_main, nu, dtype=jnp.int64 if dtype == jnp.float64 else jnp.int32).astype(dtype)
    mean = pars[m.gauss_par]
    gauss = mean + m.gauss_sigma * jax.random.normal(k_gauss, mean.shape, dtype)
    rate = jnp.maximum(pars[m.pois_par] * m.pois_tau, 0.0)
    pois = jax.random.poisson(k_pois, rate, dtype=jnp.int64 if dtype == jnp.float64 else jnp.int32).astype(dtype)
    aux = jnp.concatenate([gauss, pois])[m.aux_order]
    return jnp.concatenate([main, aux])


def sample_toys(m, pars, keys):
    """Toys for many keys: pars [T, P] (or [P]), keys [T] -> data [T, N + A]."""
    pars = jnp.broadcast_to(pars, keys.shape + pars.shape[-1:])
    return jax.vmap(lambda p, k: sample_one(m, p, k))(pars, keys)
